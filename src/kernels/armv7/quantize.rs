//! Activation quantisation (`quantize_act`) in NEON `asm!`, bit-identical to the scalar twin.
//!
//! ARMv7 NEON has no round-to-nearest float-to-int conversion (`vcvtn` is ARMv8), so codes are
//! rounded by adding `1.5 · 2²³`: the float sum rounds to an integer, ties to even (NEON always
//! rounds to nearest), and the integer sits in the low mantissa bits. NEON flushes subnormals to
//! zero, and its `vmax` returns NaN for a NaN operand where the scalar `f32::max` skips it; blocks
//! where either matters (`max|x|` NaN, infinite or below [`MIN_NEON_AMAX`]) take the scalar code.

use crate::kernels::scalar;
use crate::quant::{BlockQ8Act, QK};

/// Below this `max|x|`, a subnormal input (which NEON reads as 0) could still round to a
/// non-zero code, since `|x| · 127 / max|x|` may reach 0.5; from here on it is below 2⁻¹².
const MIN_NEON_AMAX: f32 = 1e-30;

/// `1.5 · 2²³`: adding it rounds any `|y| < 2²²` to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantises `x` into `out` per block of 32, as [`scalar::quantize_act`].
///
/// # Safety
/// The CPU must have NEON; `x.len() == out.len() · 32`.
pub(super) unsafe fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        // SAFETY: `xs` holds 32 floats; the caller guarantees NEON.
        let amax = block_amax(xs.as_ptr());
        // NaN fails both comparisons.
        if !(MIN_NEON_AMAX..=f32::MAX).contains(&amax) {
            scalar::quantize_act(xs, std::slice::from_mut(b));
            continue;
        }
        let d = amax / 127.0;
        b.d = d;
        // SAFETY: `xs` holds 32 floats and `b.qs` 32 bytes; the caller guarantees NEON.
        quantize_block(xs.as_ptr(), 1.0 / d, b.qs.as_mut_ptr());
    }
}

/// `max|x|` of 32 floats (NaN if any is NaN; subnormals read as 0).
///
/// # Safety
/// The CPU must have NEON; `x` points at 32 readable floats.
#[inline]
unsafe fn block_amax(x: *const f32) -> f32 {
    let bits: u32;
    // SAFETY: reads 128 bytes from `x` (the caller guarantees them) and writes only the declared
    // registers.
    neon_asm!(
        ".fpu neon",
        "vld1.32 {{d16-d19}}, [{x}]!",
        "vld1.32 {{d20-d23}}, [{x}]!",
        "vld1.32 {{d24-d27}}, [{x}]!",
        "vld1.32 {{d28-d31}}, [{x}]",
        "vabs.f32 q8, q8",
        "vabs.f32 q9, q9",
        "vabs.f32 q10, q10",
        "vabs.f32 q11, q11",
        "vabs.f32 q12, q12",
        "vabs.f32 q13, q13",
        "vabs.f32 q14, q14",
        "vabs.f32 q15, q15",
        "vmax.f32 q8, q8, q9",
        "vmax.f32 q10, q10, q11",
        "vmax.f32 q12, q12, q13",
        "vmax.f32 q14, q14, q15",
        "vmax.f32 q8, q8, q10",
        "vmax.f32 q12, q12, q14",
        "vmax.f32 q8, q8, q12",
        "vpmax.f32 d16, d16, d17",
        "vpmax.f32 d16, d16, d16",
        "vmov.32 {bits}, d16[0]",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        bits = lateout(reg) bits,
        out("d0") _, out("d1") _,
        options(pure, readonly, nostack),
    );
    f32::from_bits(bits)
}

/// `out[i] = round_ties_even(x[i] · id)` saturated to int8, for 32 values whose products are
/// within ±127.5 and not subnormal unless they round to 0.
///
/// # Safety
/// The CPU must have NEON; `x` points at 32 readable floats and `out` at 32 writable bytes.
#[inline]
unsafe fn quantize_block(x: *const f32, id: f32, out: *mut i8) {
    // SAFETY: reads 128 bytes from `x` and writes 32 bytes to `out` (the caller guarantees
    // both); otherwise touches only the declared registers.
    neon_asm!(
        ".fpu neon",
        "vdup.32 q7, {id}",
        "vdup.32 q6, {magic}",
        "vld1.32 {{d16-d19}}, [{x}]!",
        "vld1.32 {{d20-d23}}, [{x}]!",
        "vld1.32 {{d24-d27}}, [{x}]!",
        "vld1.32 {{d28-d31}}, [{x}]",
        "vmul.f32 q8, q8, q7",
        "vmul.f32 q9, q9, q7",
        "vmul.f32 q10, q10, q7",
        "vmul.f32 q11, q11, q7",
        "vmul.f32 q12, q12, q7",
        "vmul.f32 q13, q13, q7",
        "vmul.f32 q14, q14, q7",
        "vmul.f32 q15, q15, q7",
        "vadd.f32 q8, q8, q6",
        "vadd.f32 q9, q9, q6",
        "vadd.f32 q10, q10, q6",
        "vadd.f32 q11, q11, q6",
        "vadd.f32 q12, q12, q6",
        "vadd.f32 q13, q13, q6",
        "vadd.f32 q14, q14, q6",
        "vadd.f32 q15, q15, q6",
        // The rounded value minus the magic's bits is the integer.
        "vsub.i32 q8, q8, q6",
        "vsub.i32 q9, q9, q6",
        "vsub.i32 q10, q10, q6",
        "vsub.i32 q11, q11, q6",
        "vsub.i32 q12, q12, q6",
        "vsub.i32 q13, q13, q6",
        "vsub.i32 q14, q14, q6",
        "vsub.i32 q15, q15, q6",
        "vqmovn.s32 d0, q8",
        "vqmovn.s32 d1, q9",
        "vqmovn.s32 d2, q10",
        "vqmovn.s32 d3, q11",
        "vqmovn.s32 d4, q12",
        "vqmovn.s32 d5, q13",
        "vqmovn.s32 d6, q14",
        "vqmovn.s32 d7, q15",
        "vqmovn.s16 d8, q0",
        "vqmovn.s16 d9, q1",
        "vqmovn.s16 d10, q2",
        "vqmovn.s16 d11, q3",
        "vst1.8 {{d8-d11}}, [{out}]",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        out = in(reg) out,
        id = in(reg) id.to_bits(),
        magic = in(reg) ROUND_MAGIC.to_bits(),
        out("d0") _, out("d1") _,
        options(nostack),
    );
}
