//! aarch64 NEON kernels: activation quantisation and the q8/q4/f16/f32 dot products.
//! The element-wise ops (GELU, softmax, layer norm, axpy) live in the [`elem`] submodule, the
//! attention tiles over the f16 KV cache in [`attn`].
//!
//! NEON is part of the aarch64 baseline, so [`ops`] always returns a NEON table; it picks the
//! integer dot products by CPU:
//!
//! * [`KernelPath::Neon`] (ARMv8.0, Cortex-A72 in the Raspberry Pi 4): int8 products widened to
//!   int16 with `smull`, pairwise-added into int32 with `sadalp`.
//! * [`KernelPath::NeonDotprod`] (ARMv8.2 `dotprod`, Cortex-A76 in the Raspberry Pi 5): `sdot`,
//!   four int8 products summed into each int32 lane per instruction.
//!
//! Both compute every block's integer sum exactly, then do one float multiply-add of
//! `d_w · d_x · sum` per block, four blocks per vector. `vdotq_s32` (unstable as of Rust 1.96)
//! and the f16 vector type (stable only since 1.94, later than the crate's MSRV) are replaced by
//! one-instruction `asm!` helpers ([`sdot`], [`f16x4_to_f32`]).
//!
//! This module owns only the SIMD code; lengths are checked by the safe wrappers with the same
//! asserts as the [`scalar`](super::scalar) twins, which are the reference in the tests below.

mod attn;
mod decode;
mod elem;
mod packed;

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::{KernelPath, Ops, OutLayout, PrepLane};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// The NEON table, with `sdot` integer dot products when the CPU has `dotprod`.
pub(super) fn ops() -> Ops {
    dotprod_table().unwrap_or_else(plain_table)
}

/// Both NEON tables this CPU runs: the ARMv8.0 one, and the `dotprod` one if the CPU has it.
pub(super) fn tables() -> impl Iterator<Item = Ops> {
    std::iter::once(plain_table()).chain(dotprod_table())
}

/// The ARMv8.0 table (`smull`/`sadalp` integer products).
fn plain_table() -> Ops {
    Ops {
        path: KernelPath::Neon,
        prepare_q8,
        prepare_q4,
        matmul_q8,
        matmul_q4,
        ..float_ops()
    }
}

/// The ARMv8.2 `dotprod` table, if the CPU has `sdot`.
fn dotprod_table() -> Option<Ops> {
    std::arch::is_aarch64_feature_detected!("dotprod").then(|| Ops {
        path: KernelPath::NeonDotprod,
        prepare_q8: prepare_q8_dotprod,
        prepare_q4: prepare_q4_dotprod,
        matmul_q8: matmul_q8_dotprod,
        matmul_q4: matmul_q4_dotprod,
        ..float_ops()
    })
}

/// The entries both NEON tables share; the matrix kernels and their preparations are
/// overwritten by the caller.
fn float_ops() -> Ops {
    Ops {
        out_layout: OutLayout::TokenMajor,
        quantize_act,
        dot_f16,
        dot_f32,
        layer_norm: elem::layer_norm,
        gelu_tanh: elem::gelu_tanh,
        softmax: elem::softmax,
        add_assign: elem::add_assign,
        axpy: elem::axpy,
        axpy_f16: elem::axpy_f16,
        scores_f16: attn::scores_f16,
        weighted_sum_f16: attn::weighted_sum_f16,
        ..super::scalar::ops()
    }
}

// ---------------------------------------------------------------------------------------------
// Safe wrappers: the length checks of the scalar twins, then the `target_feature` kernels.
// ---------------------------------------------------------------------------------------------

/// Quantises activations per block of 32, bit-identical to [`super::scalar::quantize_act`].
fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_act: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
    unsafe { quantize_act_neon(x, out) }
    super::mark_nan_blocks(x, out);
}

/// Prepares up to three tokens for the decode kernels (a batch of four or more goes through the
/// `smull` packed kernels, which read the activations as they are).
fn prepare_q8(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    prepare_decode(x, nb, prep, false);
}

/// [`prepare_q8`] with q4's per-block offsets.
fn prepare_q4(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    prepare_decode(x, nb, prep, true);
}

/// [`prepare_q8`] for the `dotprod` table: a batch of four tokens or more is laid out in
/// panels for the `sdot` packed kernel.
fn prepare_q8_dotprod(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    if !prepare_batch(x, nb, prep) {
        prepare_decode(x, nb, prep, false);
    }
}

/// [`prepare_q8_dotprod`] with q4's per-block offsets for the decode kernels (the packed
/// kernel's q4 weights are offset while packing).
fn prepare_q4_dotprod(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) {
    if !prepare_batch(x, nb, prep) {
        prepare_decode(x, nb, prep, true);
    }
}

/// Lays out a batch of [`packed::MIN_TOKENS`] or more for [`packed::matmul_sdot`]; false (and
/// nothing done) for fewer tokens.
fn prepare_batch(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane]) -> bool {
    if nb == 0 || x.len() / nb < packed::MIN_TOKENS {
        return false;
    }
    // SAFETY: NEON is baseline on aarch64; `prepare` checks the room itself.
    unsafe { packed::prepare(&x[..x.len() / nb * nb], nb, prep) };
    true
}

fn prepare_decode(x: &[BlockQ8Act], nb: usize, prep: &mut [PrepLane], offset: bool) {
    if nb == 0 || x.len() / nb >= packed::MIN_TOKENS {
        return;
    }
    let n = x.len() / nb;
    assert!(prep.len() >= n * decode::token_lanes(nb), "prepare: room");
    // SAFETY: NEON is baseline on aarch64; the room was checked.
    unsafe { decode::prepare(&x[..n * nb], nb, prep, offset) }
}

/// Rows × tokens of q8 with `smull`/`sadalp`.
fn matmul_q8(w: &[BlockQ8], x: &[BlockQ8Act], prep: &[PrepLane], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    // SAFETY: NEON is baseline on aarch64; `tile_shape` checked that `w` holds `rows · nb`
    // blocks, `x` holds `n · nb` and `out` holds `rows · n`.
    unsafe { matmul_q8_neon(w, x, prep, nb, rows, n, out) }
}

/// Rows × tokens of q4 with `smull`/`smlal`.
fn matmul_q4(w: &[BlockQ4], x: &[BlockQ8Act], prep: &[PrepLane], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    // SAFETY: as in `matmul_q8`.
    unsafe { matmul_q4_neon(w, x, prep, nb, rows, n, out) }
}

/// Rows × tokens of q8 with `sdot`. Only reachable through the table [`ops`] builds after
/// detecting `dotprod` (and from tests that detect it first).
fn matmul_q8_dotprod(
    w: &[BlockQ8],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    out: &mut [f32],
) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    debug_assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    // SAFETY: `dotprod` was detected before this function was handed out; shapes checked.
    unsafe { matmul_q8_sdot(w, x, prep, nb, rows, n, out) }
}

/// Rows × tokens of q4 with `sdot`. Only reachable through the table [`ops`] builds after
/// detecting `dotprod` (and from tests that detect it first).
fn matmul_q4_dotprod(
    w: &[BlockQ4],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    out: &mut [f32],
) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    debug_assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    // SAFETY: `dotprod` was detected before this function was handed out; shapes checked.
    unsafe { matmul_q4_sdot(w, x, prep, nb, rows, n, out) }
}

/// f16 weights · f32 inputs.
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
    unsafe { dot_f16_neon(w, x) }
}

/// f32 · f32.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
    unsafe { dot_f32_neon(a, b) }
}

// ---------------------------------------------------------------------------------------------
// One-instruction helpers.
// ---------------------------------------------------------------------------------------------

/// Lanes: the four f16 values (raw bits) widened exactly to f32 (`fcvtl`, ARMv8.0 NEON).
///
/// # Safety
/// NEON must be available (always on aarch64).
#[inline(always)]
unsafe fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: `fcvtl` only reads and writes the named vector registers.
    asm!(
        "fcvtl {r:v}.4s, {h:v}.4h",
        h = in(vreg) h,
        r = lateout(vreg) r,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// Lanes: f16 values 4..8 (raw bits) of `h` widened exactly to f32 (`fcvtl2`).
///
/// # Safety
/// NEON must be available (always on aarch64).
#[inline(always)]
unsafe fn f16x8_high_to_f32(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: `fcvtl2` only reads and writes the named vector registers.
    asm!(
        "fcvtl2 {r:v}.4s, {h:v}.8h",
        h = in(vreg) h,
        r = lateout(vreg) r,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// One f16 (raw bits) widened exactly to f32 with `fcvtl` (no runtime feature check, unlike
/// `half`'s conversion on aarch64).
///
/// # Safety
/// NEON must be available (always on aarch64).
#[inline(always)]
unsafe fn f16_to_f32(bits: u16) -> f32 {
    vgetq_lane_f32::<0>(f16x4_to_f32(vdup_n_u16(bits)))
}

/// Lanes: `acc[i] + Σ_{k<4} a[4i+k] · b[4i+k]` (`sdot`; `vdotq_s32` is not stable yet).
///
/// # Safety
/// The CPU must support `dotprod`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` only reads and writes the named vector registers; the caller guarantees the
    // CPU has it.
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

// ---------------------------------------------------------------------------------------------
// Activation quantisation.
// ---------------------------------------------------------------------------------------------

/// # Safety
/// NEON must be available; `x.len() == out.len() * QK`.
#[target_feature(enable = "neon")]
unsafe fn quantize_act_neon(x: &[f32], out: &mut [BlockQ8Act]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let v = load_block_f32(xs);
        let d = block_amax(&v) / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        b.d = d;
        let id = vdupq_n_f32(id);
        let lo = narrow_16(&v[..4], id);
        let hi = narrow_16(&v[4..], id);
        vst1q_s8(b.qs.as_mut_ptr(), lo);
        vst1q_s8(b.qs.as_mut_ptr().add(16), hi);
    }
}

/// The 32 values of one block as eight vectors.
///
/// # Safety
/// NEON must be available; `xs.len() >= QK`.
#[inline(always)]
unsafe fn load_block_f32(xs: &[f32]) -> [float32x4_t; 8] {
    let p = xs.as_ptr();
    [0, 4, 8, 12, 16, 20, 24, 28].map(|i| vld1q_f32(p.add(i)))
}

/// `max|x|` over a block, ignoring NaN like the scalar `fold(0, f32::max)`: `fmaxnm` returns the
/// number when one operand is NaN, and the final max with 0 makes an all-NaN block 0.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn block_amax(v: &[float32x4_t; 8]) -> f32 {
    let m = v.map(|x| vabsq_f32(x));
    // A tree: four dependent `fmaxnm` instead of a chain of nine.
    let m = [0, 2, 4, 6].map(|i| vmaxnmq_f32(m[i], m[i + 1]));
    let m = vmaxnmq_f32(vmaxnmq_f32(m[0], m[1]), vmaxnmq_f32(m[2], m[3]));
    vmaxnmvq_f32(vmaxnmq_f32(m, vdupq_n_f32(0.0)))
}

/// Lanes: `round_ties_even(x · id)` of 16 floats (four vectors) saturated to int8, as the scalar
/// `as i8` cast does (NaN becomes 0 in `fcvtns`).
///
/// # Safety
/// NEON must be available; `v.len() == 4`.
#[inline(always)]
unsafe fn narrow_16(v: &[float32x4_t], id: float32x4_t) -> int8x16_t {
    let q = |x: float32x4_t| vqmovn_s32(vcvtnq_s32_f32(vmulq_f32(x, id)));
    let a = vcombine_s16(q(v[0]), q(v[1]));
    let b = vcombine_s16(q(v[2]), q(v[3]));
    vcombine_s8(vqmovn_s16(a), vqmovn_s16(b))
}

/// Lanes: lane `i` is the total of `s[i]`'s four lanes.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn horizontal_sums4(s: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]))
}

// ---------------------------------------------------------------------------------------------
// Matrix products: batches of four or more tokens over packed rows (`packed`), fewer tokens four
// rows at a time against a prepared activation (`decode`).
// ---------------------------------------------------------------------------------------------

/// Every row × token of `w` and `x` into `out` (`(n, rows)`), with the packed batch kernel
/// `batch` for four tokens or more, else the decode kernel against the tokens prepared in `prep`.
///
/// # Safety
/// The CPU must have the features `batch` and `D` use; `w.len() == rows · nb`,
/// `x.len() == n · nb`, `out.len() == rows · n`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_blocks<D: decode::RowDot>(
    w: &[D::W],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
    batch: impl FnOnce(&[D::W], &[BlockQ8Act], &[PrepLane], &mut [f32]),
) {
    if nb == 0 {
        out.fill(0.0);
    } else if n >= packed::MIN_TOKENS {
        batch(w, x, prep, out);
    } else {
        decode::matvec::<D>(w, prep, nb, rows, n, out);
    }
}

/// # Safety
/// NEON must be available; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon")]
unsafe fn matmul_q8_neon(
    w: &[BlockQ8],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<decode::Q8Mull>(w, x, prep, nb, rows, n, out, |w, x, _, out| {
        packed::matmul_mull::<packed::Q8>(w, x, nb, rows, n, out)
    })
}

/// # Safety
/// NEON must be available; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon")]
unsafe fn matmul_q4_neon(
    w: &[BlockQ4],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<decode::Q4Mull>(w, x, prep, nb, rows, n, out, |w, x, _, out| {
        packed::matmul_mull::<packed::Q4>(w, x, nb, rows, n, out)
    })
}

/// # Safety
/// The CPU must support `dotprod`; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon,dotprod")]
unsafe fn matmul_q8_sdot(
    w: &[BlockQ8],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<decode::Q8Sdot>(w, x, prep, nb, rows, n, out, |w, _, prep, out| {
        packed::matmul_sdot::<packed::Q8>(w, prep, nb, rows, n, out)
    })
}

/// # Safety
/// The CPU must support `dotprod`; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon,dotprod")]
unsafe fn matmul_q4_sdot(
    w: &[BlockQ4],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<decode::Q4Sdot>(w, x, prep, nb, rows, n, out, |w, _, prep, out| {
        packed::matmul_sdot::<packed::Q4>(w, prep, nb, rows, n, out)
    })
}

// ---------------------------------------------------------------------------------------------
// Float dot products.
// ---------------------------------------------------------------------------------------------

/// Lane-wise sum of four accumulators, then across lanes.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn sum_acc4(acc: [float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ))
}

/// # Safety
/// NEON must be available; `w.len() == x.len()`.
#[target_feature(enable = "neon")]
unsafe fn dot_f16_neon(w: &[f16], x: &[f32]) -> f32 {
    // `half::f16` is `repr(transparent)` over its u16 bits, so its slices load as u16.
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut wc = w.chunks_exact(16);
    let mut xc = x.chunks_exact(16);
    for (w16, x16) in (&mut wc).zip(&mut xc) {
        let (pw, px) = (w16.as_ptr().cast::<u16>(), x16.as_ptr());
        let h0 = vld1q_u16(pw);
        let h1 = vld1q_u16(pw.add(8));
        let wf = [
            f16x4_to_f32(vget_low_u16(h0)),
            f16x8_high_to_f32(h0),
            f16x4_to_f32(vget_low_u16(h1)),
            f16x8_high_to_f32(h1),
        ];
        for (k, a) in acc.iter_mut().enumerate() {
            *a = vfmaq_f32(*a, wf[k], vld1q_f32(px.add(4 * k)));
        }
    }
    let (w, x) = (wc.remainder(), xc.remainder());
    let mut wc = w.chunks_exact(4);
    let mut xc = x.chunks_exact(4);
    for (w4, x4) in (&mut wc).zip(&mut xc) {
        let wf = f16x4_to_f32(vld1_u16(w4.as_ptr().cast::<u16>()));
        acc[0] = vfmaq_f32(acc[0], wf, vld1q_f32(x4.as_ptr()));
    }
    // The last 0..3 values, zero-padded to one vector.
    let (mut wt, mut xt) = ([0u16; 4], [0f32; 4]);
    for (i, (a, &b)) in wc.remainder().iter().zip(xc.remainder()).enumerate() {
        (wt[i], xt[i]) = (a.to_bits(), b);
    }
    let wf = f16x4_to_f32(vld1_u16(wt.as_ptr()));
    acc[1] = vfmaq_f32(acc[1], wf, vld1q_f32(xt.as_ptr()));
    sum_acc4(acc)
}

/// # Safety
/// NEON must be available; `a.len() == b.len()`.
#[target_feature(enable = "neon")]
unsafe fn dot_f32_neon(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut ac = a.chunks_exact(16);
    let mut bc = b.chunks_exact(16);
    for (a16, b16) in (&mut ac).zip(&mut bc) {
        let (pa, pb) = (a16.as_ptr(), b16.as_ptr());
        for (k, s) in acc.iter_mut().enumerate() {
            *s = vfmaq_f32(*s, vld1q_f32(pa.add(4 * k)), vld1q_f32(pb.add(4 * k)));
        }
    }
    let (a, b) = (ac.remainder(), bc.remainder());
    let mut ac = a.chunks_exact(4);
    let mut bc = b.chunks_exact(4);
    for (a4, b4) in (&mut ac).zip(&mut bc) {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(a4.as_ptr()), vld1q_f32(b4.as_ptr()));
    }
    // The last 0..3 values, zero-padded to one vector.
    let (ra, rb) = (ac.remainder(), bc.remainder());
    let (mut at, mut bt) = ([0f32; 4], [0f32; 4]);
    at[..ra.len()].copy_from_slice(ra);
    bt[..rb.len()].copy_from_slice(rb);
    acc[1] = vfmaq_f32(acc[1], vld1q_f32(at.as_ptr()), vld1q_f32(bt.as_ptr()));
    sum_acc4(acc)
}

#[cfg(test)]
mod tests {
    //! What only this module can check; the kernels themselves are tested against their
    //! scalar twins, with every other table, in `kernels::twins`.
    use super::*;

    #[test]
    fn f16_widening_is_exact_for_every_value() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        for c in bits.chunks_exact(8) {
            // SAFETY: NEON is baseline on aarch64; `c` holds 8 values.
            let (lo, hi) = unsafe {
                let h = vld1q_u16(c.as_ptr());
                (f16x4_to_f32(vget_low_u16(h)), f16x8_high_to_f32(h))
            };
            let mut got = [0f32; 8];
            // SAFETY: `got` has room for 8 floats.
            unsafe {
                vst1q_f32(got.as_mut_ptr(), lo);
                vst1q_f32(got.as_mut_ptr().add(4), hi);
            }
            for (&b, g) in c.iter().zip(got) {
                // SAFETY: NEON is baseline on aarch64.
                let one = unsafe { f16_to_f32(b) };
                let want = f16::from_bits(b).to_f32();
                if want.is_nan() {
                    assert!(g.is_nan() && one.is_nan(), "{b:#06x}");
                } else {
                    assert_eq!(g.to_bits(), want.to_bits(), "{b:#06x}");
                    assert_eq!(one.to_bits(), want.to_bits(), "{b:#06x}");
                }
            }
        }
    }

    #[test]
    fn batch_preparation_fits_the_scratch_every_table_is_given() {
        for n in packed::MIN_TOKENS..200 {
            for nb in 1..300 {
                assert!(
                    packed::prepared_lanes(n, nb) <= crate::kernels::prepared_len(n, nb),
                    "{n} tokens of {nb} blocks"
                );
            }
        }
    }

    #[test]
    fn detected_path_matches_qemu_cpu() {
        let path = ops().path;
        match std::env::var("GPT2Q_EXPECT_CPU").as_deref() {
            Ok("cortex-a72") => assert_eq!(path, KernelPath::Neon),
            Ok("cortex-a76") => assert_eq!(path, KernelPath::NeonDotprod),
            _ => eprintln!("GPT2Q_EXPECT_CPU not set: path {path:?} not checked"),
        }
    }
}
