//! aarch64 NEON kernels: activation quantisation and the q8/q4/f16/f32 dot products.
//! The element-wise ops (GELU, softmax, layer norm, axpy) live in the [`elem`] submodule.
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

mod decode;
mod elem;
mod packed;

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::{KernelPath, Ops};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// The NEON table, with `sdot` integer dot products when the CPU has `dotprod`.
pub(super) fn ops() -> Ops {
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        Ops {
            path: KernelPath::NeonDotprod,
            quantize_act,
            dot_q8: dot_q8_dotprod,
            dot_q4: dot_q4_dotprod,
            dot_f16,
            dot_f32,
            matmul_q8: matmul_q8_dotprod,
            matmul_q4: matmul_q4_dotprod,
            ..float_ops()
        }
    } else {
        Ops {
            path: KernelPath::Neon,
            quantize_act,
            dot_q8,
            dot_q4,
            dot_f16,
            dot_f32,
            matmul_q8,
            matmul_q4,
            ..float_ops()
        }
    }
}

/// The element-wise entries both NEON tables share; the integer entries are overwritten by the
/// caller.
fn float_ops() -> Ops {
    Ops {
        layer_norm: elem::layer_norm,
        gelu_tanh: elem::gelu_tanh,
        softmax: elem::softmax,
        add_assign: elem::add_assign,
        axpy: elem::axpy,
        axpy_f16: elem::axpy_f16,
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
}

/// q8 · activations with `smull`/`sadalp` (ARMv8.0).
fn dot_q8(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q8: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
    unsafe { dot_q8_neon(w, x) }
}

/// q4 · activations with `smull`/`smlal` (ARMv8.0).
fn dot_q4(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q4: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths were checked above.
    unsafe { dot_q4_neon(w, x) }
}

/// q8 · activations with `sdot`. Only reachable through the table [`ops`] builds after detecting
/// `dotprod` (and from tests that detect it first).
fn dot_q8_dotprod(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q8: lengths");
    debug_assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    // SAFETY: callers only get this function after `dotprod` was detected (see above); the
    // lengths were checked.
    unsafe { dot_q8_sdot(w, x) }
}

/// q4 · activations with `sdot`. Only reachable through the table [`ops`] builds after detecting
/// `dotprod` (and from tests that detect it first).
fn dot_q4_dotprod(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_q4: lengths");
    debug_assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    // SAFETY: callers only get this function after `dotprod` was detected (see above); the
    // lengths were checked.
    unsafe { dot_q4_sdot(w, x) }
}

/// Rows × tokens of q8 with `smull`/`sadalp`.
fn matmul_q8(w: &[BlockQ8], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    // SAFETY: NEON is baseline on aarch64; `tile_shape` checked that `w` holds `rows · nb`
    // blocks, `x` holds `n · nb` and `out` holds `rows · n`.
    unsafe { matmul_q8_neon(w, x, nb, rows, n, out) }
}

/// Rows × tokens of q4 with `smull`/`smlal`.
fn matmul_q4(w: &[BlockQ4], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    // SAFETY: as in `matmul_q8`.
    unsafe { matmul_q4_neon(w, x, nb, rows, n, out) }
}

/// Rows × tokens of q8 with `sdot`. Only reachable through the table [`ops`] builds after
/// detecting `dotprod` (and from tests that detect it first).
fn matmul_q8_dotprod(w: &[BlockQ8], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    debug_assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    // SAFETY: `dotprod` was detected before this function was handed out; shapes checked.
    unsafe { matmul_q8_sdot(w, x, nb, rows, n, out) }
}

/// Rows × tokens of q4 with `sdot`. Only reachable through the table [`ops`] builds after
/// detecting `dotprod` (and from tests that detect it first).
fn matmul_q4_dotprod(w: &[BlockQ4], x: &[BlockQ8Act], nb: usize, out: &mut [f32]) {
    let (rows, n) = super::tile_shape(w.len(), x.len(), nb, out.len());
    debug_assert!(std::arch::is_aarch64_feature_detected!("dotprod"));
    // SAFETY: `dotprod` was detected before this function was handed out; shapes checked.
    unsafe { matmul_q4_sdot(w, x, nb, rows, n, out) }
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

// ---------------------------------------------------------------------------------------------
// Integer dot products: one generic loop over blocks, one small kernel per format and CPU.
// ---------------------------------------------------------------------------------------------

/// A weight block with an f16 scale.
trait Scaled {
    /// The scale's raw f16 bits.
    fn d_bits(&self) -> u16;
}

impl Scaled for BlockQ8 {
    #[inline(always)]
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
}

impl Scaled for BlockQ4 {
    #[inline(always)]
    fn d_bits(&self) -> u16 {
        self.d.to_bits()
    }
}

/// How one weight format's integer block dot is computed on one CPU.
trait BlockDot {
    /// The weight block.
    type W: Scaled;

    /// Lanes: four int32 partial sums whose total is the block's exact `Σ_i q_w[i] · q_x[i]`.
    ///
    /// # Safety
    /// The CPU must have the features the implementation uses.
    unsafe fn lanes(w: &Self::W, x: &BlockQ8Act) -> int32x4_t;
}

/// q8 with `smull` + `sadalp` (ARMv8.0).
struct Q8Mull;
/// q8 with `sdot`.
struct Q8Sdot;
/// q4 with `smull` + `smlal` (ARMv8.0).
struct Q4Mull;
/// q4 with `sdot`.
struct Q4Sdot;

impl BlockDot for Q8Mull {
    type W = BlockQ8;
    #[inline(always)]
    unsafe fn lanes(w: &BlockQ8, x: &BlockQ8Act) -> int32x4_t {
        let (w0, w1) = load_i8x32(&w.qs);
        let (x0, x1) = load_i8x32(&x.qs);
        dot16_mull(dot16_mull(vdupq_n_s32(0), w0, x0), w1, x1)
    }
}

impl BlockDot for Q8Sdot {
    type W = BlockQ8;
    #[inline(always)]
    unsafe fn lanes(w: &BlockQ8, x: &BlockQ8Act) -> int32x4_t {
        let (w0, w1) = load_i8x32(&w.qs);
        let (x0, x1) = load_i8x32(&x.qs);
        sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1)
    }
}

impl BlockDot for Q4Mull {
    type W = BlockQ4;
    #[inline(always)]
    unsafe fn lanes(w: &BlockQ4, x: &BlockQ8Act) -> int32x4_t {
        let (w0, w1) = unpack_q4(&w.qs);
        let (x0, x1) = load_i8x32(&x.qs);
        // |q − 8| ≤ 8 and |q_x| ≤ 128: four products per int16 lane stay within ±4096.
        let p = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
        let p = vmlal_high_s8(p, w0, x0);
        let p = vmlal_s8(p, vget_low_s8(w1), vget_low_s8(x1));
        let p = vmlal_high_s8(p, w1, x1);
        vpaddlq_s16(p)
    }
}

impl BlockDot for Q4Sdot {
    type W = BlockQ4;
    #[inline(always)]
    unsafe fn lanes(w: &BlockQ4, x: &BlockQ8Act) -> int32x4_t {
        let (w0, w1) = unpack_q4(&w.qs);
        let (x0, x1) = load_i8x32(&x.qs);
        sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1)
    }
}

/// The 32 int8 of a block as (elements 0..16, elements 16..32).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn load_i8x32(qs: &[i8; QK]) -> (int8x16_t, int8x16_t) {
    (vld1q_s8(qs.as_ptr()), vld1q_s8(qs.as_ptr().add(16)))
}

/// The 32 weights of a q4 block as int8 `q − 8`: (elements 0..16 from the low nibbles, elements
/// 16..32 from the high nibbles).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn unpack_q4(qs: &[u8; QK / 2]) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(qs.as_ptr());
    let eight = vdupq_n_s8(8);
    let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
    (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
}

/// Lanes: `acc` plus four partial sums of `Σ a[i] · b[i]` over 16 int8 pairs. Exact for any
/// int8: each int16 product is pairwise-added straight into int32 (`sadalp`).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn dot16_mull(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Lanes: lane `i` is the total of `s[i]`'s four lanes.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn horizontal_sums4(s: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]))
}

/// Lanes: `d_w · d_x` of four consecutive block pairs.
///
/// # Safety
/// NEON must be available; both slices hold at least four blocks.
#[inline(always)]
unsafe fn scales4<W: Scaled>(w: &[W], x: &[BlockQ8Act]) -> float32x4_t {
    let dw = [w[0].d_bits(), w[1].d_bits(), w[2].d_bits(), w[3].d_bits()];
    let dx = [x[0].d, x[1].d, x[2].d, x[3].d];
    vmulq_f32(f16x4_to_f32(vld1_u16(dw.as_ptr())), vld1q_f32(dx.as_ptr()))
}

/// `Σ_blocks d_w · d_x · (exact integer block dot)`, four blocks per float vector.
///
/// # Safety
/// The CPU must have the features `K` uses; `w.len() == x.len()`.
#[inline(always)]
unsafe fn dot_blocks<K: BlockDot>(w: &[K::W], x: &[BlockQ8Act]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let mut wc = w.chunks_exact(4);
    let mut xc = x.chunks_exact(4);
    for (w4, x4) in (&mut wc).zip(&mut xc) {
        let sums = horizontal_sums4([
            K::lanes(&w4[0], &x4[0]),
            K::lanes(&w4[1], &x4[1]),
            K::lanes(&w4[2], &x4[2]),
            K::lanes(&w4[3], &x4[3]),
        ]);
        // Block sums are at most 32 · 128² = 2^19 in magnitude: exact in f32.
        acc = vfmaq_f32(acc, scales4(w4, x4), vcvtq_f32_s32(sums));
    }
    let mut tail = 0f32;
    for (bw, bx) in wc.remainder().iter().zip(xc.remainder()) {
        let d = f16_to_f32(bw.d_bits()) * bx.d;
        tail += d * vaddvq_s32(K::lanes(bw, bx)) as f32;
    }
    vaddvq_f32(acc) + tail
}

/// # Safety
/// NEON must be available; `w.len() == x.len()`.
#[target_feature(enable = "neon")]
unsafe fn dot_q8_neon(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    dot_blocks::<Q8Mull>(w, x)
}

/// # Safety
/// NEON must be available; `w.len() == x.len()`.
#[target_feature(enable = "neon")]
unsafe fn dot_q4_neon(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    dot_blocks::<Q4Mull>(w, x)
}

/// # Safety
/// The CPU must support `dotprod`; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_q8_sdot(w: &[BlockQ8], x: &[BlockQ8Act]) -> f32 {
    dot_blocks::<Q8Sdot>(w, x)
}

/// # Safety
/// The CPU must support `dotprod`; `w.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_q4_sdot(w: &[BlockQ4], x: &[BlockQ8Act]) -> f32 {
    dot_blocks::<Q4Sdot>(w, x)
}

// ---------------------------------------------------------------------------------------------
// Matrix products: batches of four or more tokens over packed rows (`packed`), fewer tokens four
// rows at a time against a prepared activation (`decode`).
// ---------------------------------------------------------------------------------------------

/// Every row × token of `w` and `x` into `out` (`(rows, n)`), with the packed batch kernel for
/// four tokens or more, else the decode kernel (the one-row loop for rows wider than it takes).
///
/// # Safety
/// The CPU must have the features `F`, `K` and `D` use; `w.len() == rows · nb`,
/// `x.len() == n · nb`, `out.len() == rows · n`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_blocks<F, K, D, B>(
    w: &[D::W],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) where
    F: packed::PackFormat<W = D::W>,
    K: packed::GroupDot,
    D: decode::RowDot,
    B: BlockDot<W = D::W>,
{
    if nb == 0 {
        out.fill(0.0);
    } else if n >= packed::MIN_TOKENS {
        packed::matmul::<F, K>(w, x, nb, rows, n, out);
    } else if nb <= decode::MAX_BLOCKS {
        decode::matvec::<D>(w, x, nb, rows, n, out);
    } else {
        for r in 0..rows {
            for t in 0..n {
                out[r * n + t] =
                    dot_blocks::<B>(&w[r * nb..(r + 1) * nb], &x[t * nb..(t + 1) * nb]);
            }
        }
    }
}

/// # Safety
/// NEON must be available; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon")]
unsafe fn matmul_q8_neon(
    w: &[BlockQ8],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<packed::Q8, packed::Mull, decode::Q8Mull, Q8Mull>(w, x, nb, rows, n, out)
}

/// # Safety
/// NEON must be available; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon")]
unsafe fn matmul_q4_neon(
    w: &[BlockQ4],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<packed::Q4, packed::Mull, decode::Q4Mull, Q4Mull>(w, x, nb, rows, n, out)
}

/// # Safety
/// The CPU must support `dotprod`; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon,dotprod")]
unsafe fn matmul_q8_sdot(
    w: &[BlockQ8],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<packed::Q8, packed::Sdot, decode::Q8Sdot, Q8Sdot>(w, x, nb, rows, n, out)
}

/// # Safety
/// The CPU must support `dotprod`; shapes as [`matmul_blocks`] requires.
#[target_feature(enable = "neon,dotprod")]
unsafe fn matmul_q4_sdot(
    w: &[BlockQ4],
    x: &[BlockQ8Act],
    nb: usize,
    rows: usize,
    n: usize,
    out: &mut [f32],
) {
    matmul_blocks::<packed::Q4, packed::Sdot, decode::Q4Sdot, Q4Sdot>(w, x, nb, rows, n, out)
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
    use super::super::scalar;
    use super::*;

    /// Deterministic xorshift32.
    struct Rng(u32);

    impl Rng {
        fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            self.0
        }
        /// Uniform in [-1, 1).
        fn f32(&mut self) -> f32 {
            (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        }
        fn i8(&mut self) -> i8 {
            self.next_u32() as i8
        }
        fn u8(&mut self) -> u8 {
            self.next_u32() as u8
        }
    }

    const BLOCK_COUNTS: [usize; 8] = [1, 2, 3, 7, 8, 24, 50, 200];
    const FLOAT_LENS: [usize; 8] = [1, 7, 31, 33, 100, 768, 1600, 6400];

    type Q8Dot = fn(&[BlockQ8], &[BlockQ8Act]) -> f32;
    type Q4Dot = fn(&[BlockQ4], &[BlockQ8Act]) -> f32;

    fn has_dotprod() -> bool {
        std::arch::is_aarch64_feature_detected!("dotprod")
    }

    /// `|got − want| ≤ 1e-5 · Σ|terms| + 1e-6`: float sums in a different order.
    fn assert_close(got: f32, want: f32, abs_terms: f64, what: &str) {
        let tol = 1e-5 * abs_terms + 1e-6;
        let err = (got as f64 - want as f64).abs();
        assert!(
            err <= tol,
            "{what}: got {got}, want {want}, |err| {err} > {tol}"
        );
    }

    fn q8_blocks(rng: &mut Rng, n: usize, d: f32, q: impl Fn(&mut Rng) -> i8) -> Vec<BlockQ8> {
        (0..n)
            .map(|_| BlockQ8 {
                d: f16::from_f32(d),
                qs: std::array::from_fn(|_| q(rng)),
            })
            .collect()
    }

    fn q4_blocks(rng: &mut Rng, n: usize, d: f32, q: impl Fn(&mut Rng) -> u8) -> Vec<BlockQ4> {
        (0..n)
            .map(|_| BlockQ4 {
                d: f16::from_f32(d),
                qs: std::array::from_fn(|_| q(rng)),
            })
            .collect()
    }

    fn act_blocks(rng: &mut Rng, n: usize, d: f32, q: impl Fn(&mut Rng) -> i8) -> Vec<BlockQ8Act> {
        (0..n)
            .map(|_| BlockQ8Act {
                d,
                qs: std::array::from_fn(|_| q(rng)),
            })
            .collect()
    }

    /// The integer-dot kernels of one format to test on this CPU, by name.
    fn q8_kernels() -> Vec<(&'static str, Q8Dot)> {
        let mut k: Vec<(&str, Q8Dot)> = vec![("mull", dot_q8)];
        if has_dotprod() {
            k.push(("sdot", dot_q8_dotprod));
        }
        k
    }

    fn q4_kernels() -> Vec<(&'static str, Q4Dot)> {
        let mut k: Vec<(&str, Q4Dot)> = vec![("mull", dot_q4)];
        if has_dotprod() {
            k.push(("sdot", dot_q4_dotprod));
        }
        k
    }

    /// Per-block integer sums of each kernel, exactly the scalar ones.
    fn block_sums_q8(w: &[BlockQ8], x: &[BlockQ8Act]) -> Vec<(&'static str, Vec<i32>)> {
        let sum = |f: unsafe fn(&BlockQ8, &BlockQ8Act) -> int32x4_t| -> Vec<i32> {
            w.iter()
                .zip(x)
                // SAFETY: NEON is baseline; the sdot kernel is passed only when `dotprod` was
                // detected.
                .map(|(a, b)| unsafe { vaddvq_s32(f(a, b)) })
                .collect()
        };
        let mut out = vec![("mull", sum(Q8Mull::lanes))];
        if has_dotprod() {
            out.push(("sdot", sum(sdot_lanes_q8)));
        }
        out
    }

    fn block_sums_q4(w: &[BlockQ4], x: &[BlockQ8Act]) -> Vec<(&'static str, Vec<i32>)> {
        let sum = |f: unsafe fn(&BlockQ4, &BlockQ8Act) -> int32x4_t| -> Vec<i32> {
            w.iter()
                .zip(x)
                // SAFETY: NEON is baseline; the sdot kernel is passed only when `dotprod` was
                // detected.
                .map(|(a, b)| unsafe { vaddvq_s32(f(a, b)) })
                .collect()
        };
        let mut out = vec![("mull", sum(Q4Mull::lanes))];
        if has_dotprod() {
            out.push(("sdot", sum(sdot_lanes_q4)));
        }
        out
    }

    /// The sdot block kernels compiled with `dotprod` enabled (their `lanes` are only inlined
    /// into such functions in the library).
    ///
    /// # Safety
    /// The CPU must support `dotprod`.
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn sdot_lanes_q8(w: &BlockQ8, x: &BlockQ8Act) -> int32x4_t {
        Q8Sdot::lanes(w, x)
    }

    /// [`sdot_lanes_q8`] for q4.
    ///
    /// # Safety
    /// The CPU must support `dotprod`.
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn sdot_lanes_q4(w: &BlockQ4, x: &BlockQ8Act) -> int32x4_t {
        Q4Sdot::lanes(w, x)
    }

    fn scalar_sums_q8(w: &[BlockQ8], x: &[BlockQ8Act]) -> Vec<i32> {
        w.iter()
            .zip(x)
            .map(|(a, b)| {
                a.qs.iter()
                    .zip(&b.qs)
                    .map(|(&p, &q)| p as i32 * q as i32)
                    .sum()
            })
            .collect()
    }

    fn scalar_sums_q4(w: &[BlockQ4], x: &[BlockQ8Act]) -> Vec<i32> {
        w.iter()
            .zip(x)
            .map(|(a, b)| scalar::block_dot_q4(a, b))
            .collect()
    }

    /// `Σ|d_w · d_x · s_b|` over blocks.
    fn abs_terms(dw: impl Iterator<Item = f16>, x: &[BlockQ8Act], sums: &[i32]) -> f64 {
        dw.zip(x)
            .zip(sums)
            .map(|((d, b), &s)| (d.to_f64() * b.d as f64 * s as f64).abs())
            .sum()
    }

    /// Checks every q8 kernel: block sums exact, whole dot exact when the sum of integer terms
    /// is exactly representable (unit scales), else within float tolerance of the scalar twin.
    fn check_q8(w: &[BlockQ8], x: &[BlockQ8Act], what: &str) {
        let want_sums = scalar_sums_q8(w, x);
        for (name, sums) in block_sums_q8(w, x) {
            assert_eq!(sums, want_sums, "{what} {name}: block sums");
        }
        let want = scalar::dot_q8(w, x);
        let terms = abs_terms(w.iter().map(|b| b.d), x, &want_sums);
        let unit = w.iter().all(|b| b.d == f16::ONE) && x.iter().all(|b| b.d == 1.0);
        for (name, f) in q8_kernels() {
            let got = f(w, x);
            if unit && terms < (1u64 << 24) as f64 {
                assert_eq!(got, want, "{what} {name}: exact integer dot");
            } else {
                assert_close(got, want, terms, &format!("{what} {name}"));
            }
        }
    }

    fn check_q4(w: &[BlockQ4], x: &[BlockQ8Act], what: &str) {
        let want_sums = scalar_sums_q4(w, x);
        for (name, sums) in block_sums_q4(w, x) {
            assert_eq!(sums, want_sums, "{what} {name}: block sums");
        }
        let want = scalar::dot_q4(w, x);
        let terms = abs_terms(w.iter().map(|b| b.d), x, &want_sums);
        let unit = w.iter().all(|b| b.d == f16::ONE) && x.iter().all(|b| b.d == 1.0);
        for (name, f) in q4_kernels() {
            let got = f(w, x);
            if unit && terms < (1u64 << 24) as f64 {
                assert_eq!(got, want, "{what} {name}: exact integer dot");
            } else {
                assert_close(got, want, terms, &format!("{what} {name}"));
            }
        }
    }

    #[test]
    fn dot_q8_matches_scalar_on_random_blocks() {
        let mut rng = Rng(0x1234_5678);
        for n in BLOCK_COUNTS {
            // Unit scales: the float result is an exact integer.
            let w = q8_blocks(&mut rng, n, 1.0, Rng::i8);
            let x = act_blocks(&mut rng, n, 1.0, Rng::i8);
            check_q8(&w, &x, &format!("unit n={n}"));
            // Random scales, one scale per block.
            let mut w = q8_blocks(&mut rng, n, 0.0, Rng::i8);
            let mut x = act_blocks(&mut rng, n, 0.0, Rng::i8);
            for (a, b) in w.iter_mut().zip(&mut x) {
                a.d = f16::from_f32(rng.f32() * 0.01);
                b.d = rng.f32().abs() * 0.05;
            }
            check_q8(&w, &x, &format!("scaled n={n}"));
        }
    }

    #[test]
    fn dot_q4_matches_scalar_on_random_blocks() {
        let mut rng = Rng(0x9e37_79b9);
        for n in BLOCK_COUNTS {
            let w = q4_blocks(&mut rng, n, 1.0, Rng::u8);
            let x = act_blocks(&mut rng, n, 1.0, Rng::i8);
            check_q4(&w, &x, &format!("unit n={n}"));
            let mut w = q4_blocks(&mut rng, n, 0.0, Rng::u8);
            let mut x = act_blocks(&mut rng, n, 0.0, Rng::i8);
            for (a, b) in w.iter_mut().zip(&mut x) {
                a.d = f16::from_f32(rng.f32() * 0.01);
                b.d = rng.f32().abs() * 0.05;
            }
            check_q4(&w, &x, &format!("scaled n={n}"));
        }
    }

    #[test]
    fn integer_dots_exact_at_extremes() {
        let mut rng = Rng(7);
        for n in BLOCK_COUNTS {
            for (wq, xq) in [
                (127, 127),
                (127, -127),
                (-127, -127),
                (-128, -128),
                (-128, 127),
            ] {
                let w = q8_blocks(&mut rng, n, 1.0, |_| wq);
                let x = act_blocks(&mut rng, n, 1.0, |_| xq);
                check_q8(&w, &x, &format!("q8 {wq}·{xq} n={n}"));
            }
            for nib in [0x00, 0xFF, 0x0F, 0xF0] {
                for xq in [127, -127, -128] {
                    let w = q4_blocks(&mut rng, n, 1.0, |_| nib);
                    let x = act_blocks(&mut rng, n, 1.0, |_| xq);
                    check_q4(&w, &x, &format!("q4 {nib:#x}·{xq} n={n}"));
                }
            }
            // Alternating signs, so extremes cancel across lanes.
            let x = act_blocks(&mut rng, n, 1.0, |r| {
                if r.next_u32() & 1 == 0 {
                    127
                } else {
                    -127
                }
            });
            check_q8(&q8_blocks(&mut rng, n, 1.0, |_| -127), &x, "q8 alternating");
            check_q4(&q4_blocks(&mut rng, n, 1.0, |_| 0xF0), &x, "q4 alternating");
        }
    }

    #[test]
    fn integer_dots_zero_scales_and_activations() {
        let mut rng = Rng(99);
        for n in BLOCK_COUNTS {
            // Zero weight scales.
            let x = act_blocks(&mut rng, n, 0.5, Rng::i8);
            let w8 = q8_blocks(&mut rng, n, 0.0, Rng::i8);
            let w4 = q4_blocks(&mut rng, n, 0.0, Rng::u8);
            check_q8(&w8, &x, "zero weight scale");
            check_q4(&w4, &x, "zero weight scale");
            for (_, f) in q8_kernels() {
                assert_eq!(f(&w8, &x), 0.0);
            }
            // Zero activations (as quantize_act makes them: d = 0, q = 0).
            let x = act_blocks(&mut rng, n, 0.0, |_| 0);
            let w8 = q8_blocks(&mut rng, n, 0.25, Rng::i8);
            let w4 = q4_blocks(&mut rng, n, 0.25, Rng::u8);
            check_q8(&w8, &x, "zero activations");
            check_q4(&w4, &x, "zero activations");
            for (_, f) in q4_kernels() {
                assert_eq!(f(&w4, &x), 0.0);
            }
        }
    }

    /// Compares with the scalar twin bit for bit (scales and values).
    fn check_quantize(x: &[f32], what: &str) {
        let n = x.len() / QK;
        let mut want = vec![BlockQ8Act::default(); n];
        let mut got = vec![BlockQ8Act::default(); n];
        scalar::quantize_act(x, &mut want);
        quantize_act(x, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.d.to_bits(), w.d.to_bits(), "{what}: block {i} scale");
            assert_eq!(g.qs, w.qs, "{what}: block {i} values");
        }
    }

    #[test]
    fn quantize_act_bit_identical_to_scalar() {
        let mut rng = Rng(0xdead_beef);
        for n in BLOCK_COUNTS {
            let x: Vec<f32> = (0..n * QK).map(|_| rng.f32() * 3.0).collect();
            check_quantize(&x, &format!("random n={n}"));
            // Wide dynamic range across blocks.
            let x: Vec<f32> = (0..n * QK)
                .map(|i| rng.f32() * 10f32.powi((i / QK) as i32 % 12 - 6))
                .collect();
            check_quantize(&x, &format!("scaled n={n}"));
        }
    }

    #[test]
    fn quantize_act_ties_round_to_even() {
        // amax = 127 gives d = 1 and id = 1 exactly, so x·id = x: every half-integer is a tie.
        let mut x = [0f32; 2 * QK];
        x[0] = 127.0;
        for (i, v) in x[1..].iter_mut().enumerate() {
            *v = (i as f32 - 31.0) + 0.5;
        }
        check_quantize(&x, "ties");
        let mut got = [BlockQ8Act::default(); 2];
        quantize_act(&x, &mut got);
        assert_eq!(got[0].d, 1.0);
        // x[1] = −30.5 → −30, x[2] = −29.5 → −30, x[3] = −28.5 → −28.
        assert_eq!(&got[0].qs[1..4], &[-30, -30, -28]);
        // A second block of ties around zero: ±0.5 → 0, ±1.5 → ±2, ±2.5 → ±2.
        let mut y = [0f32; QK];
        y[0] = -127.0;
        y[1..7].copy_from_slice(&[0.5, -0.5, 1.5, -1.5, 2.5, -2.5]);
        let mut b = [BlockQ8Act::default()];
        quantize_act(&y, &mut b);
        assert_eq!(&b[0].qs[..7], &[-127, 0, 0, 2, -2, 2, -2]);
        check_quantize(&y, "ties near zero");
    }

    #[test]
    fn quantize_act_edge_cases_match_scalar() {
        let mut cases: Vec<(&str, [f32; QK])> = vec![
            ("zeros", [0.0; QK]),
            ("negative zeros", [-0.0; QK]),
            ("constant", [0.3; QK]),
            (
                "one nonzero",
                std::array::from_fn(|i| if i == 5 { -2.0 } else { 0.0 }),
            ),
            ("tiny", std::array::from_fn(|i| i as f32 * 1e-41)),
            (
                "subnormal amax",
                std::array::from_fn(|i| if i == 0 { 1e-40 } else { 0.0 }),
            ),
            ("huge", std::array::from_fn(|i| (i as f32 - 16.0) * 1e37)),
        ];
        let mut with_nan = [0.5f32; QK];
        with_nan[3] = f32::NAN;
        with_nan[4] = -3.0;
        cases.push(("nan", with_nan));
        cases.push(("all nan", [f32::NAN; QK]));
        let mut with_inf = [0.5f32; QK];
        with_inf[7] = f32::NEG_INFINITY;
        cases.push(("inf", with_inf));
        for (what, x) in &cases {
            check_quantize(x, what);
        }
    }

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

    /// Σ|w_i · x_i| in f64.
    fn abs_products(w: impl Iterator<Item = f32>, x: &[f32]) -> f64 {
        w.zip(x).map(|(a, &b)| (a as f64 * b as f64).abs()).sum()
    }

    #[test]
    fn dot_f32_matches_scalar() {
        let mut rng = Rng(31337);
        for n in FLOAT_LENS {
            let a: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.f32() * 4.0).collect();
            let terms = abs_products(a.iter().copied(), &b);
            assert_close(
                dot_f32(&a, &b),
                scalar::dot_f32(&a, &b),
                terms,
                &format!("n={n}"),
            );
            // Small integers: exact in any order.
            let a: Vec<f32> = (0..n).map(|_| (rng.next_u32() % 17) as f32 - 8.0).collect();
            assert_eq!(dot_f32(&a, &a), scalar::dot_f32(&a, &a), "integers n={n}");
            assert_eq!(dot_f32(&a, &vec![0.0; n]), 0.0);
        }
    }

    #[test]
    fn dot_f16_matches_scalar() {
        let mut rng = Rng(4242);
        for n in FLOAT_LENS {
            let w: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.f32() * 0.5)).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.f32() * 4.0).collect();
            let terms = abs_products(w.iter().map(|v| v.to_f32()), &x);
            assert_close(
                dot_f16(&w, &x),
                scalar::dot_f16(&w, &x),
                terms,
                &format!("n={n}"),
            );
            // Extremes: f16::MAX and the smallest subnormal, against small integers (exact).
            let w: Vec<f16> = (0..n)
                .map(|i| match i % 3 {
                    0 => f16::MAX,
                    1 => -f16::MAX,
                    _ => f16::from_bits(1),
                })
                .collect();
            let x: Vec<f32> = (0..n).map(|i| (i % 5) as f32).collect();
            let terms = abs_products(w.iter().map(|v| v.to_f32()), &x);
            assert_close(dot_f16(&w, &x), scalar::dot_f16(&w, &x), terms, "extremes");
            assert_eq!(dot_f16(&vec![f16::ZERO; n], &x), 0.0);
        }
    }

    #[test]
    fn float_dots_propagate_nan() {
        for n in FLOAT_LENS {
            let mut a = vec![1.0f32; n];
            a[n - 1] = f32::NAN;
            assert!(dot_f32(&a, &a).is_nan(), "f32 n={n}");
            let mut w = vec![f16::ONE; n];
            w[n / 2] = f16::NAN;
            assert!(dot_f16(&w, &a).is_nan(), "f16 n={n}");
        }
    }

    #[test]
    #[should_panic(expected = "dot_q8: lengths")]
    fn dot_q8_rejects_mismatched_lengths() {
        dot_q8(&[], &[BlockQ8Act::default()]);
    }

    #[test]
    #[should_panic(expected = "quantize_act: lengths")]
    fn quantize_act_rejects_mismatched_lengths() {
        quantize_act(&[0.0; 33], &mut [BlockQ8Act::default()]);
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
