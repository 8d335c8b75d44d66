//! Batch products (prefill) over weights packed four rows at a time.
//!
//! For a batch every weight block meets many tokens, so the kernel rearranges the weights once per
//! call, on the stack, a chunk of blocks at a time (as a BLAS packs a panel): a packed block holds
//! four rows' 32 weights as signed int8 (q4 codes already minus 8), interleaved so that vector `k`
//! carries elements `4k..4k+4` of each row (byte `4r + i` of vector `k` is element `4k + i` of
//! row `r`). Against group `k` of a token's activation, one `sdot` by element then adds four
//! products to each row's i32 lane: a block costs eight `sdot` for four rows, the rows are
//! reduced vertically, and the block's scales cost one multiply and one FMA for the four rows.
//! Without `dotprod`, each group is broadcast and multiplied with `smull`/`smlal`, two products
//! per i16 lane (exact: activations stay within `−127..=127`), then pairwise-added into i32
//! (`sadalp`).
//!
//! q8 and q4 share the kernel once packed; integer block sums are exact, only the float
//! summation order differs from the scalar twins.

use std::arch::aarch64::*;
use std::arch::asm;

use super::f16x4_to_f32;
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// Rows in a packed group: one i32 lane each.
const GROUP_ROWS: usize = 4;
/// Blocks packed at a time: 32 · 144 bytes stay in L1 while every token passes over them.
const CHUNK_BLOCKS: usize = 32;
/// From this many tokens on, packing pays for itself.
pub(super) const MIN_TOKENS: usize = 4;

/// Four rows' block, interleaved (see the module comment), and the rows' scales.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct PackedBlock {
    q: [[i8; 16]; 8],
    d: [f32; GROUP_ROWS],
}

const EMPTY: PackedBlock = PackedBlock {
    q: [[0; 16]; 8],
    d: [0.0; GROUP_ROWS],
};

/// A weight format the packed kernels take.
pub(super) trait PackFormat {
    /// The weight block.
    type W;
    /// The block's 32 weights as signed int8, (elements 0..16, elements 16..32).
    ///
    /// # Safety
    /// NEON must be available.
    unsafe fn weights(w: &Self::W) -> (int8x16_t, int8x16_t);
    /// The block's f16 scale bits.
    fn scale_bits(w: &Self::W) -> u16;
}

/// How a packed block meets one token's activation block on one CPU.
pub(super) trait GroupDot {
    /// Whether the tokens' blocks are loaded through [`load_act`]'s post-incremented pointers
    /// (fewer instructions with `sdot`; the `smull` kernel, short of registers, measured more).
    const POINTER_LOADS: bool;
    /// Lanes: rows 0..4's exact `Σ_i w[r][i] · x[i]` over the packed block `q`.
    ///
    /// # Safety
    /// The CPU must have the features the implementation uses.
    unsafe fn block(q: &[int8x16_t; 8], x0: int8x16_t, x1: int8x16_t) -> int32x4_t;
}

/// Packed q8.
pub(super) struct Q8;
/// Packed q4.
pub(super) struct Q4;
/// `sdot` by element (ARMv8.2 `dotprod`).
pub(super) struct Sdot;
/// `smull`/`smlal` + `sadalp` against broadcast groups (ARMv8.0).
pub(super) struct Mull;

impl PackFormat for Q8 {
    type W = BlockQ8;
    /// # Safety
    /// As [`PackFormat::weights`].
    #[inline(always)]
    unsafe fn weights(w: &BlockQ8) -> (int8x16_t, int8x16_t) {
        let p = w.qs.as_ptr();
        (vld1q_s8(p), vld1q_s8(p.add(16)))
    }
    #[inline(always)]
    fn scale_bits(w: &BlockQ8) -> u16 {
        w.d.to_bits()
    }
}

impl PackFormat for Q4 {
    type W = BlockQ4;
    /// # Safety
    /// As [`PackFormat::weights`].
    #[inline(always)]
    unsafe fn weights(w: &BlockQ4) -> (int8x16_t, int8x16_t) {
        let v = vld1q_u8(w.qs.as_ptr());
        let eight = vdupq_n_s8(8);
        let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
        (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
    }
    #[inline(always)]
    fn scale_bits(w: &BlockQ4) -> u16 {
        w.d.to_bits()
    }
}

impl GroupDot for Sdot {
    const POINTER_LOADS: bool = true;
    /// # Safety
    /// As [`GroupDot::block`].
    #[inline(always)]
    unsafe fn block(q: &[int8x16_t; 8], x0: int8x16_t, x1: int8x16_t) -> int32x4_t {
        let mut acc = vdupq_n_s32(0);
        // SAFETY: `sdot` by element only reads and writes the named vector registers; the
        // caller guarantees the CPU has `dotprod`.
        asm!(
            "sdot {acc:v}.4s, {q0:v}.16b, {x0:v}.4b[0]",
            "sdot {acc:v}.4s, {q1:v}.16b, {x0:v}.4b[1]",
            "sdot {acc:v}.4s, {q2:v}.16b, {x0:v}.4b[2]",
            "sdot {acc:v}.4s, {q3:v}.16b, {x0:v}.4b[3]",
            "sdot {acc:v}.4s, {q4:v}.16b, {x1:v}.4b[0]",
            "sdot {acc:v}.4s, {q5:v}.16b, {x1:v}.4b[1]",
            "sdot {acc:v}.4s, {q6:v}.16b, {x1:v}.4b[2]",
            "sdot {acc:v}.4s, {q7:v}.16b, {x1:v}.4b[3]",
            acc = inout(vreg) acc,
            q0 = in(vreg) q[0],
            q1 = in(vreg) q[1],
            q2 = in(vreg) q[2],
            q3 = in(vreg) q[3],
            q4 = in(vreg) q[4],
            q5 = in(vreg) q[5],
            q6 = in(vreg) q[6],
            q7 = in(vreg) q[7],
            x0 = in(vreg) x0,
            x1 = in(vreg) x1,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }
}

impl GroupDot for Mull {
    const POINTER_LOADS: bool = false;
    /// # Safety
    /// As [`GroupDot::block`].
    #[inline(always)]
    unsafe fn block(q: &[int8x16_t; 8], x0: int8x16_t, x1: int8x16_t) -> int32x4_t {
        // `lo` lanes hold rows 0, 0, 1, 1 and `hi` rows 2, 2, 3, 3.
        let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
        let x = [vreinterpretq_s32_s8(x0), vreinterpretq_s32_s8(x1)];
        let group = |k: usize| vreinterpretq_s8_s32(broadcast_lane(x[k / 4], k % 4));
        for k in (0..8).step_by(2) {
            let (g0, g1) = (group(k), group(k + 1));
            // Two products per i16 lane, each at most 128 · 127 (activations never hold −128):
            // a lane stays within ±32512.
            let l = vmlal_s8(
                vmull_s8(vget_low_s8(q[k]), vget_low_s8(g0)),
                vget_low_s8(q[k + 1]),
                vget_low_s8(g1),
            );
            let h = vmlal_high_s8(vmull_high_s8(q[k], g0), q[k + 1], g1);
            lo = vpadalq_s16(lo, l);
            hi = vpadalq_s16(hi, h);
        }
        vpaddq_s32(lo, hi)
    }
}

/// Lane `i` (a constant after unrolling) of `v` in every lane.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn broadcast_lane(v: int32x4_t, i: usize) -> int32x4_t {
    match i {
        0 => vdupq_laneq_s32::<0>(v),
        1 => vdupq_laneq_s32::<1>(v),
        2 => vdupq_laneq_s32::<2>(v),
        _ => vdupq_laneq_s32::<3>(v),
    }
}

/// Packs block `b` of the rows `w[r]` (`None`: a missing row, packed as zeros).
///
/// # Safety
/// NEON must be available; every present row holds more than `b` blocks.
#[inline(always)]
unsafe fn pack<F: PackFormat>(
    rows: &[Option<&[F::W]>; GROUP_ROWS],
    b: usize,
    out: &mut PackedBlock,
) {
    let zero = vdupq_n_s8(0);
    let mut halves = [(zero, zero); GROUP_ROWS];
    let mut d = [0u16; GROUP_ROWS];
    for (r, row) in rows.iter().enumerate() {
        if let Some(row) = row {
            halves[r] = F::weights(&row[b]);
            d[r] = F::scale_bits(&row[b]);
        }
    }
    let a = interleave([halves[0].0, halves[1].0, halves[2].0, halves[3].0]);
    let c = interleave([halves[0].1, halves[1].1, halves[2].1, halves[3].1]);
    for (k, v) in a.iter().chain(&c).enumerate() {
        vst1q_s8(out.q[k].as_mut_ptr(), *v);
    }
    vst1q_f32(out.d.as_mut_ptr(), f16x4_to_f32(vld1_u16(d.as_ptr())));
}

/// A 4 × 4 transpose of 32-bit groups: vector `k` of the result holds group `k` of each input
/// (four consecutive elements of each of the four rows).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn interleave(r: [int8x16_t; 4]) -> [int8x16_t; 4] {
    let r = r.map(|v| vreinterpretq_s32_s8(v));
    let t0 = vreinterpretq_s64_s32(vtrn1q_s32(r[0], r[1]));
    let t1 = vreinterpretq_s64_s32(vtrn2q_s32(r[0], r[1]));
    let t2 = vreinterpretq_s64_s32(vtrn1q_s32(r[2], r[3]));
    let t3 = vreinterpretq_s64_s32(vtrn2q_s32(r[2], r[3]));
    [
        vtrn1q_s64(t0, t2),
        vtrn1q_s64(t1, t3),
        vtrn2q_s64(t0, t2),
        vtrn2q_s64(t1, t3),
    ]
    .map(|v| vreinterpretq_s8_s64(v))
}

/// `acc[t]` lane `r` += `Σ_b d_w · d_x · (exact block dot)` of packed row `r` with token
/// `x[t]`, over the packed blocks (`x[t][b]` meets `packed[b]`).
///
/// # Safety
/// The CPU must have the features `K` uses; every `x[t]` holds at least `packed.len()` blocks.
#[inline(always)]
unsafe fn chunk<K: GroupDot, const T: usize>(
    packed: &[PackedBlock],
    x: [&[BlockQ8Act]; T],
    acc: &mut [float32x4_t; T],
) {
    let mut xp = x.map(|xs| xs.as_ptr());
    for pb in packed {
        let q: [int8x16_t; 8] = std::array::from_fn(|k| vld1q_s8(pb.q[k].as_ptr()));
        let dw = vld1q_f32(pb.d.as_ptr());
        for t in 0..T {
            let (dx, x0, x1) = if K::POINTER_LOADS {
                load_act(&mut xp[t])
            } else {
                // SAFETY: every `x[t]` holds at least `packed.len()` blocks, and `xp[t]` has
                // advanced by one block per packed block.
                let xb = &*xp[t];
                xp[t] = xp[t].add(1);
                let p = xb.qs.as_ptr();
                (xb.d, vld1q_s8(p), vld1q_s8(p.add(16)))
            };
            let sums = K::block(&q, x0, x1);
            // Block sums are at most 32 · 128² = 2^19 in magnitude: exact in f32.
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(sums), vmulq_n_f32(dw, dx));
        }
    }
}

/// Block `*p`'s scale and values (elements 0..16, 16..32); advances `p` to the next block. In
/// `asm!` so that each token keeps its own post-incremented pointer (compiled from intrinsics,
/// the tokens' addresses are recomputed from one base every block).
///
/// # Safety
/// NEON must be available; `*p` points at a readable block.
#[inline(always)]
unsafe fn load_act(p: &mut *const BlockQ8Act) -> (f32, int8x16_t, int8x16_t) {
    let (d, x0, x1): (f32, int8x16_t, int8x16_t);
    // SAFETY: `*p` addresses a readable block (the caller's contract); the loads read exactly
    // its 4 + 32 bytes and leave the pointer just past it.
    asm!(
        "ldr {d:s}, [{p}], #4",
        "ldp {x0:q}, {x1:q}, [{p}], #32",
        p = inout(reg) *p,
        d = out(vreg) d,
        x0 = out(vreg) x0,
        x1 = out(vreg) x1,
        options(readonly, nostack, preserves_flags)
    );
    (d, x0, x1)
}

/// The packed chunk against tokens `t0..t0 + T`, added into `out` (`(rows, n)`; rows `r0..`).
///
/// # Safety
/// As [`chunk`]; `x` holds `n · nb` blocks and `out` holds `rows · n` values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tokens<K: GroupDot, const T: usize>(
    packed: &[PackedBlock],
    x: &[BlockQ8Act],
    nb: usize,
    b0: usize,
    t0: usize,
    r0: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    let xs: [&[BlockQ8Act]; T] = std::array::from_fn(|k| &x[(t0 + k) * nb + b0..(t0 + k + 1) * nb]);
    let mut acc = [vdupq_n_f32(0.0); T];
    chunk::<K, T>(packed, xs, &mut acc);
    for (k, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; GROUP_ROWS];
        vst1q_f32(lanes.as_mut_ptr(), *a);
        for (r, &v) in lanes.iter().enumerate().take(rows - r0) {
            out[(r0 + r) * n + t0 + k] += v;
        }
    }
}

/// `out[r · n + t]` = the dot of row `r` with token `t`: each group of four rows packed a chunk
/// at a time, every token against the chunk while it is in L1, four tokens per pass.
///
/// # Safety
/// The CPU must have the features `K` uses; `w.len() == rows · nb`, `x.len() == n · nb`,
/// `out.len() == rows · n`.
#[inline(always)]
pub(super) unsafe fn matmul<F: PackFormat, K: GroupDot>(
    w: &[F::W],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    out.fill(0.0);
    let mut packed = [EMPTY; CHUNK_BLOCKS];
    for r0 in (0..rows).step_by(GROUP_ROWS) {
        let group: [Option<&[F::W]>; GROUP_ROWS] =
            std::array::from_fn(|k| (r0 + k < rows).then(|| &w[(r0 + k) * nb..(r0 + k + 1) * nb]));
        for b0 in (0..nb).step_by(CHUNK_BLOCKS) {
            let blocks = CHUNK_BLOCKS.min(nb - b0);
            for (i, pb) in packed[..blocks].iter_mut().enumerate() {
                pack::<F>(&group, b0 + i, pb);
            }
            let pk = &packed[..blocks];
            let mut t0 = 0;
            while t0 + 4 <= n {
                tokens::<K, 4>(pk, x, nb, b0, t0, r0, rows, n, out);
                t0 += 4;
            }
            match n - t0 {
                1 => tokens::<K, 1>(pk, x, nb, b0, t0, r0, rows, n, out),
                2 => tokens::<K, 2>(pk, x, nb, b0, t0, r0, rows, n, out),
                3 => tokens::<K, 3>(pk, x, nb, b0, t0, r0, rows, n, out),
                _ => {}
            }
        }
    }
}

const _: () = assert!(std::mem::size_of::<PackedBlock>() == 8 * 16 + 4 * GROUP_ROWS);
const _: () = assert!(QK == 32);
