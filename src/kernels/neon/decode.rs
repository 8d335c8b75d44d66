//! Matrix–vector products (decode): eight weight rows against one token per pass, on the plain
//! row-major blocks of the file.
//!
//! The token's activation is first rearranged, once per matrix product, in the session's scratch
//! ([`prepare`]): its int8 values back to back, its block scales in one array and, for q4,
//! `8 · Σ q_x` per block. Each pass then
//! loads a block of the token once for eight rows, and each four rows' integer sums are reduced
//! to one vector (`addp` tree) so that a block's scales cost one multiply and one FMA for four
//! rows. The rows' accumulators are never reset: they keep running totals, and a block's sums are
//! the difference of two successive totals (exact in wrapping i32 arithmetic, since one block's
//! sum is at most 32 · 128² = 2^19), which saves zeroing four registers per block.
//!
//! * q8: `sdot` (ARMv8.2 `dotprod`), or `smull`/`smlal2` + `sadalp` (ARMv8.0): two products
//!   per i16 lane, exact for any weight byte because activations stay within `−127..=127`.
//! * q4: the codes `0..=15` multiply the activation directly; the `−8` offset is taken off each
//!   block as `8 · Σ q_x` from the prepared activation. Without `dotprod`, four products are
//!   summed in i16 (at most 4 · 15 · 128 = 7680) before `sadalp`.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{f16x4_to_f32, horizontal_sums4, sdot};
use crate::kernels::{lanes_f32, lanes_f32_mut, lanes_i32, lanes_i32_mut, PrepLane};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act};

/// Lanes one token's prepared activation takes for `nb` blocks: one lane (32 int8) per block,
/// then the scales, then the offsets (eight per lane each).
pub(super) fn token_lanes(nb: usize) -> usize {
    nb + 2 * nb.div_ceil(8)
}

/// Lays out `n` tokens of `x` (`nb` blocks each) in `prep`, [`token_lanes`] apart: per block its
/// int8 values, its scale and, if `offset`, `8 · Σ q_x`. Panics if `prep` is too short.
///
/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
pub(super) unsafe fn prepare(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane], offset: bool) {
    for (xt, pt) in x
        .chunks_exact(nb)
        .zip(prep.chunks_exact_mut(token_lanes(nb)))
    {
        let (qs, rest) = pt.split_at_mut(nb);
        let (d, offsets) = rest.split_at_mut(nb.div_ceil(8));
        let (d, offsets) = (lanes_f32_mut(d), lanes_i32_mut(offsets));
        for (b, xb) in xt.iter().enumerate() {
            let (x0, x1) = (vld1q_s8(xb.qs.as_ptr()), vld1q_s8(xb.qs.as_ptr().add(16)));
            // Writes exactly the lane's 32 bytes.
            let dst = std::ptr::from_mut(&mut qs[b]).cast::<i8>();
            vst1q_s8(dst, x0);
            vst1q_s8(dst.add(16), x1);
            d[b] = xb.d;
            if offset {
                // Σ q_x in i16 lanes (at most 32 · 128 in magnitude), then across lanes.
                let s = vaddq_s16(vpaddlq_s8(x0), vpaddlq_s8(x1));
                offsets[b] = 8 * vaddlvq_s16(s);
            }
        }
    }
}

/// One token's activation as [`prepare`] laid it out.
pub(super) struct PreparedAct<'a> {
    qs: &'a [PrepLane],
    d: &'a [f32],
    offset: &'a [i32],
}

impl<'a> PreparedAct<'a> {
    /// Token `t`'s regions for `nb` blocks (panics if `prep` is too short).
    fn view(prep: &'a [PrepLane], nb: usize, t: usize) -> Self {
        let lanes = token_lanes(nb);
        let pt = &prep[t * lanes..(t + 1) * lanes];
        let (qs, rest) = pt.split_at(nb);
        let (d, offset) = rest.split_at(nb.div_ceil(8));
        PreparedAct {
            qs,
            d: &lanes_f32(d)[..nb],
            offset: &lanes_i32(offset)[..nb],
        }
    }

    /// Block `b`'s values as (elements 0..16, elements 16..32).
    ///
    /// # Safety
    /// NEON must be available; `b` is below the view's block count.
    #[inline(always)]
    unsafe fn qs(&self, b: usize) -> (int8x16_t, int8x16_t) {
        // Reads exactly the lane's 32 bytes.
        let p = std::ptr::from_ref(self.qs.get_unchecked(b)).cast::<i8>();
        (vld1q_s8(p), vld1q_s8(p.add(16)))
    }

    /// Block `b`'s scale.
    ///
    /// # Safety
    /// `b` is below the view's block count.
    #[inline(always)]
    unsafe fn d(&self, b: usize) -> f32 {
        *self.d.get_unchecked(b)
    }

    /// Block `b`'s `8 · Σ q_x` (q4 preparations only; otherwise whatever the lanes held).
    ///
    /// # Safety
    /// `b` is below the view's block count.
    #[inline(always)]
    unsafe fn offset(&self, b: usize) -> i32 {
        *self.offset.get_unchecked(b)
    }
}

/// How one weight format's block meets a prepared activation block on one CPU.
pub(super) trait RowDot {
    /// The weight block.
    type W;
    /// A block's weight bytes as loaded.
    type Bytes: Copy;
    /// Whether block sums must have `8 · Σ q_x` taken off (q4's offset codes).
    const OFFSET: bool;
    /// Loads the current block of four rows (their f16 scale bits into the four lanes, and
    /// their bytes) and advances each pointer to its row's next block.
    ///
    /// # Safety
    /// NEON must be available; each pointer points at a readable block.
    unsafe fn load4(p: &mut [*const Self::W; 4]) -> (uint16x4_t, [Self::Bytes; 4]);
    /// `acc` plus four partial sums whose total is the block's `Σ_i code_i · q_x[i]` (q8: the
    /// weights; q4: the unsigned codes), wrapping.
    ///
    /// # Safety
    /// The CPU must have the features the implementation uses.
    unsafe fn accumulate(acc: int32x4_t, w: Self::Bytes, x: (int8x16_t, int8x16_t)) -> int32x4_t;
}

/// q8 with `sdot`.
pub(super) struct Q8Sdot;
/// q8 with `smull` + `smlal2` + `sadalp`.
pub(super) struct Q8Mull;
/// q4 with `sdot`.
pub(super) struct Q4Sdot;
/// q4 with `smull` + `smlal` + `sadalp`.
pub(super) struct Q4Mull;

/// Loads a block of four rows for [`RowDot::load4`] with two post-incrementing loads per row:
/// the scale into lane `r` (`ld1` by lane, 2 bytes), then the bytes that follow it (`$load`
/// names the instruction, one per row). Written in `asm!` so that each row keeps its own pointer
/// register: compiled from intrinsics, the rows' addresses are recomputed from one base with an
/// extra `add` for most loads.
macro_rules! load4 {
    ($p:expr, [$l0:literal, $l1:literal, $l2:literal, $l3:literal], $ty:ty, [$($out:ident),*]) => {{
        let d: uint16x4_t;
        $(let $out: $ty;)*
        let [mut p0, mut p1, mut p2, mut p3] = *$p;
        // SAFETY: each pointer addresses a readable block (the caller's contract); the loads
        // read exactly that block and leave the pointer just past it.
        asm!(
            "ld1 {{{d:v}.h}}[0], [{p0}], #2",
            $l0,
            "ld1 {{{d:v}.h}}[1], [{p1}], #2",
            $l1,
            "ld1 {{{d:v}.h}}[2], [{p2}], #2",
            $l2,
            "ld1 {{{d:v}.h}}[3], [{p3}], #2",
            $l3,
            d = out(vreg) d,
            p0 = inout(reg) p0,
            p1 = inout(reg) p1,
            p2 = inout(reg) p2,
            p3 = inout(reg) p3,
            $($out = out(vreg) $out,)*
            options(readonly, nostack, preserves_flags)
        );
        *$p = [p0, p1, p2, p3];
        (d, [$($out),*])
    }};
}

/// [`RowDot::load4`] for q8 blocks (2 + 32 bytes).
///
/// # Safety
/// NEON must be available; each pointer points at a readable block.
#[inline(always)]
unsafe fn load_q8_rows(p: &mut [*const BlockQ8; 4]) -> (uint16x4_t, [(int8x16_t, int8x16_t); 4]) {
    let (d, [a0, b0, a1, b1, a2, b2, a3, b3]) = load4!(
        p,
        [
            "ldp {a0:q}, {b0:q}, [{p0}], #32",
            "ldp {a1:q}, {b1:q}, [{p1}], #32",
            "ldp {a2:q}, {b2:q}, [{p2}], #32",
            "ldp {a3:q}, {b3:q}, [{p3}], #32"
        ],
        int8x16_t,
        [a0, b0, a1, b1, a2, b2, a3, b3]
    );
    (d, [(a0, b0), (a1, b1), (a2, b2), (a3, b3)])
}

/// [`RowDot::load4`] for q4 blocks (2 + 16 bytes).
///
/// # Safety
/// NEON must be available; each pointer points at a readable block.
#[inline(always)]
unsafe fn load_q4_rows(p: &mut [*const BlockQ4; 4]) -> (uint16x4_t, [uint8x16_t; 4]) {
    load4!(
        p,
        [
            "ldr {a0:q}, [{p0}], #16",
            "ldr {a1:q}, [{p1}], #16",
            "ldr {a2:q}, [{p2}], #16",
            "ldr {a3:q}, [{p3}], #16"
        ],
        uint8x16_t,
        [a0, a1, a2, a3]
    )
}

impl RowDot for Q8Sdot {
    type W = BlockQ8;
    type Bytes = (int8x16_t, int8x16_t);
    const OFFSET: bool = false;
    /// # Safety
    /// As [`RowDot::load4`].
    #[inline(always)]
    unsafe fn load4(p: &mut [*const BlockQ8; 4]) -> (uint16x4_t, [Self::Bytes; 4]) {
        load_q8_rows(p)
    }
    /// # Safety
    /// As [`RowDot::accumulate`].
    #[inline(always)]
    unsafe fn accumulate(acc: int32x4_t, w: Self::Bytes, x: (int8x16_t, int8x16_t)) -> int32x4_t {
        sdot(sdot(acc, w.0, x.0), w.1, x.1)
    }
}

impl RowDot for Q8Mull {
    type W = BlockQ8;
    type Bytes = (int8x16_t, int8x16_t);
    const OFFSET: bool = false;
    /// # Safety
    /// As [`RowDot::load4`].
    #[inline(always)]
    unsafe fn load4(p: &mut [*const BlockQ8; 4]) -> (uint16x4_t, [Self::Bytes; 4]) {
        load_q8_rows(p)
    }
    /// # Safety
    /// As [`RowDot::accumulate`].
    #[inline(always)]
    unsafe fn accumulate(acc: int32x4_t, w: Self::Bytes, x: (int8x16_t, int8x16_t)) -> int32x4_t {
        let (w0, w1) = w;
        // Two products per i16 lane, each at most 128 · 127 (activations never hold −128): a
        // lane stays within ±32512.
        let lo = vmlal_high_s8(vmull_s8(vget_low_s8(w0), vget_low_s8(x.0)), w0, x.0);
        let hi = vmlal_high_s8(vmull_s8(vget_low_s8(w1), vget_low_s8(x.1)), w1, x.1);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// A q4 block's codes as int8 `0..=15`: (elements 0..16 from the low nibbles, 16..32 from the
/// high nibbles).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn q4_codes(v: uint8x16_t) -> (int8x16_t, int8x16_t) {
    let lo = vandq_u8(v, vdupq_n_u8(0x0F));
    let hi = vshrq_n_u8::<4>(v);
    (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
}

impl RowDot for Q4Sdot {
    type W = BlockQ4;
    type Bytes = uint8x16_t;
    const OFFSET: bool = true;
    /// # Safety
    /// As [`RowDot::load4`].
    #[inline(always)]
    unsafe fn load4(p: &mut [*const BlockQ4; 4]) -> (uint16x4_t, [Self::Bytes; 4]) {
        load_q4_rows(p)
    }
    /// # Safety
    /// As [`RowDot::accumulate`].
    #[inline(always)]
    unsafe fn accumulate(acc: int32x4_t, w: Self::Bytes, x: (int8x16_t, int8x16_t)) -> int32x4_t {
        let (lo, hi) = q4_codes(w);
        sdot(sdot(acc, lo, x.0), hi, x.1)
    }
}

impl RowDot for Q4Mull {
    type W = BlockQ4;
    type Bytes = uint8x16_t;
    const OFFSET: bool = true;
    /// # Safety
    /// As [`RowDot::load4`].
    #[inline(always)]
    unsafe fn load4(p: &mut [*const BlockQ4; 4]) -> (uint16x4_t, [Self::Bytes; 4]) {
        load_q4_rows(p)
    }
    /// # Safety
    /// As [`RowDot::accumulate`].
    #[inline(always)]
    unsafe fn accumulate(acc: int32x4_t, w: Self::Bytes, x: (int8x16_t, int8x16_t)) -> int32x4_t {
        let (lo, hi) = q4_codes(w);
        // Four products per i16 lane, each at most 15 · 128: no overflow.
        let p = vmull_s8(vget_low_s8(lo), vget_low_s8(x.0));
        let p = vmlal_high_s8(p, lo, x.0);
        let p = vmlal_s8(p, vget_low_s8(hi), vget_low_s8(x.1));
        let p = vmlal_high_s8(p, hi, x.1);
        vpadalq_s16(acc, p)
    }
}

/// Rows per pass: two groups of four, so that each activation block and the loop's bookkeeping
/// serve eight rows.
const ROWS: usize = 8;

/// The running state of one pass over `ROWS` rows.
struct Pass<const G: usize> {
    /// Per row, four lanes of running (wrapping) integer totals.
    totals: [[int32x4_t; 4]; G],
    /// Per group of four rows, the totals reduced to one lane per row after the previous block.
    before: [int32x4_t; G],
    /// Per group of four rows, the scaled dots so far (one lane per row).
    acc: [float32x4_t; G],
}

/// Adds block `b` of every row (`w[g][r]` points at row `4g + r`'s block `b`) to the pass, and
/// advances the pointers to the rows' next blocks.
///
/// # Safety
/// The CPU must have the features `K` uses; every pointer is to a readable block; `b` is below
/// `x`'s block count.
// Index loops: the groups' pointers, totals and accumulators are indexed together.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn step<K: RowDot, const G: usize>(
    pass: &mut Pass<G>,
    w: &mut [[*const K::W; 4]; G],
    x: &PreparedAct<'_>,
    b: usize,
) {
    let xb = x.qs(b);
    let dx = x.d(b);
    for g in 0..G {
        let (dw, bytes) = K::load4(&mut w[g]);
        for r in 0..4 {
            pass.totals[g][r] = K::accumulate(pass.totals[g][r], bytes[r], xb);
        }
        let now = horizontal_sums4(pass.totals[g]);
        let mut sums = vsubq_s32(now, pass.before[g]);
        pass.before[g] = now;
        if K::OFFSET {
            sums = vsubq_s32(sums, vdupq_n_s32(x.offset(b)));
        }
        // Block sums are at most 2^19 in magnitude: exact in f32.
        let d = vmulq_n_f32(f16x4_to_f32(dw), dx);
        pass.acc[g] = vfmaq_f32(pass.acc[g], vcvtq_f32_s32(sums), d);
    }
}

/// Lanes of group `g`: the dots of rows `4g..4g + 4` (`nb` blocks each, starting at `w[g][r]`)
/// with the prepared token.
///
/// # Safety
/// The CPU must have the features `K` uses; each `w[g][r]` points at `nb` readable blocks; `x`
/// holds `nb` blocks.
#[inline(always)]
unsafe fn rows<K: RowDot, const G: usize>(
    mut w: [[*const K::W; 4]; G],
    x: &PreparedAct<'_>,
    nb: usize,
) -> [float32x4_t; G] {
    let mut pass = Pass::<G> {
        totals: [[vdupq_n_s32(0); 4]; G],
        before: [vdupq_n_s32(0); G],
        acc: [vdupq_n_f32(0.0); G],
    };
    // Two blocks per iteration, so the totals of one block are the `before` of the next
    // without a register copy.
    let mut b = 0;
    while b + 2 <= nb {
        step::<K, G>(&mut pass, &mut w, x, b);
        step::<K, G>(&mut pass, &mut w, x, b + 1);
        b += 2;
    }
    if b < nb {
        step::<K, G>(&mut pass, &mut w, x, b);
    }
    pass.acc
}

/// `out[t · rows + r]` = the dot of row `r` with token `t`, for few tokens (each one a pass over
/// the rows, eight at a time), against the tokens [`prepare`] laid out in `prep`.
///
/// # Safety
/// The CPU must have the features `K` uses; `w.len() == rows · nb`, `out.len() == rows · n`,
/// `nb > 0`.
#[inline(always)]
pub(super) unsafe fn matvec<K: RowDot>(
    w: &[K::W],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    debug_assert!(nb > 0 && w.len() == rows * nb);
    for t in 0..n {
        let prepared = PreparedAct::view(prep, nb, t);
        for r0 in (0..rows).step_by(ROWS) {
            // A last pass over fewer rows repeats its last row; the extra lanes are dropped.
            let row = |k: usize| w.as_ptr().add((r0 + k).min(rows - 1) * nb);
            let ptrs: [[*const K::W; 4]; 2] =
                std::array::from_fn(|g| std::array::from_fn(|r| row(4 * g + r)));
            let dots = self::rows::<K, 2>(ptrs, &prepared, nb);
            let dst = &mut out[t * rows + r0..][..ROWS.min(rows - r0)];
            if let Ok(dst) = <&mut [f32; ROWS]>::try_from(&mut *dst) {
                vst1q_f32(dst.as_mut_ptr(), dots[0]);
                vst1q_f32(dst.as_mut_ptr().add(4), dots[1]);
            } else {
                let mut lanes = [0f32; ROWS];
                vst1q_f32(lanes.as_mut_ptr(), dots[0]);
                vst1q_f32(lanes.as_mut_ptr().add(4), dots[1]);
                dst.copy_from_slice(&lanes[..dst.len()]);
            }
        }
    }
}
