//! Float kernels in NEON `asm!`: GELU, and the f16 KV cache's dot product of f16 keys with an
//! f32 query (`dot_f16`) and weighted sum of f16 values (`axpy_f16`), whose cost grows with the
//! context (at a few hundred tokens they outweigh the matrix products on the scalar path).
//!
//! GELU is `x / (1 + e^(−2u))`, `u = √(2/π)(x + 0.044715x³)`, as in the aarch64 and AVX2 tables,
//! with Cephes' `exp` ([`crate::kernels::exp_consts`]): ARMv7 NEON has no round-to-nearest
//! conversion and no division, so `n = round(y · log2 e)` comes from adding `1.5 · 2²³`, and
//! `1 / (1 + e)` from `vrecpe` and two Newton steps (`vrecps`). Outside `exp`'s range the
//! argument is clamped, which leaves GELU's limits intact (`x` for large `x`, `−0` for very
//! negative `x`, NaN for NaN and `−inf`). NEON reads subnormal inputs as 0, so GELU of a
//! subnormal `x` is 0 where the scalar twin gives about `x / 2`.
//!
//! f16 is widened with `vcvt.f32.f16` (VFPv4; exact, and NEON's flush-to-zero does not apply to
//! half-precision inputs). `dot_f16` multiplies and adds in NEON, eight lanes per step (within
//! float tolerance of the scalar twin; products below 2⁻¹²⁶ count as 0). `axpy_f16` must be
//! bit-identical to its twin, subnormals included, so after the NEON widening it multiplies and
//! adds in VFP scalar instructions, which follow IEEE 754 like the compiled scalar code.

use half::f16;

use crate::kernels::exp_consts::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO};

/// GELU's `0.044715`.
const GELU_C: f32 = 0.044715;
/// `−2 · √(2/π)`: `e^(−2u)` from `x + 0.044715x³`.
const GELU_M2K: f32 = -2.0 * 0.797_884_6;

/// The GELU kernel's constants as it loads them: scalars used by lane in d0–d5 (then padding),
/// then q4 = `1.5 · 2²³`, q5 = `EXP_HI`, q6 = `EXP_LO`, q7 = `1.0`.
#[repr(C, align(8))]
struct GeluConsts([f32; 32]);

static GELU_CONSTS: GeluConsts = {
    let mut c = [0f32; 32];
    let scalars = [
        GELU_C,
        GELU_M2K,
        std::f32::consts::LOG2_E,
        LN2_HI,
        LN2_LO,
        EXP_P[0],
        EXP_P[1],
        EXP_P[2],
        EXP_P[3],
        EXP_P[4],
        EXP_P[5],
    ];
    let mut i = 0;
    while i < scalars.len() {
        c[i] = scalars[i];
        i += 1;
    }
    let vectors = [12_582_912.0, EXP_HI, EXP_LO, 1.0];
    let mut v = 0;
    while v < 4 {
        let mut lane = 0;
        while lane < 4 {
            c[16 + 4 * v + lane] = vectors[v];
            lane += 1;
        }
        v += 1;
    }
    GeluConsts(c)
};

/// GELU (tanh form) of `4 · n4` values in place.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `n4 ≥ 1`; `x` points at `4 · n4` writable floats.
#[inline]
unsafe fn gelu_x4(x: *mut f32, n4: usize) {
    // SAFETY: reads the 128-byte constant table and reads and writes `4 · n4` floats at `x`
    // (guaranteed by the caller); writes only the declared registers otherwise.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vld1.32 {{d0-d3}}, [{c}]!",
        "vld1.32 {{d4-d7}}, [{c}]!",
        "vld1.32 {{d8-d11}}, [{c}]!",
        "vld1.32 {{d12-d15}}, [{c}]",
        "2:",
        "vld1.32 {{d16-d17}}, [{x}]",
        // y = −2√(2/π) · (x + 0.044715 · x² · x)
        "vmul.f32 q9, q8, q8",
        "vmul.f32 q9, q9, d0[0]",
        "vmov q10, q8",
        "vfma.f32 q10, q9, q8",
        "vmul.f32 q10, q10, d0[1]",
        // e^y: clamp (NaN stays NaN), n = round(y · log2 e) as float (q12) and integer (q11),
        // r = y − n · ln 2 in two parts.
        "vmin.f32 q10, q10, q5",
        "vmax.f32 q10, q10, q6",
        "vmov q11, q4",
        "vmla.f32 q11, q10, d1[0]",
        "vsub.f32 q12, q11, q4",
        "vsub.i32 q11, q11, q4",
        "vmls.f32 q10, q12, d1[1]",
        "vmls.f32 q10, q12, d2[0]",
        // p = P(r) by Horner, then e^r = 1 + r + r² · p.
        "vdup.32 q13, d3[0]",
        "vmla.f32 q13, q10, d2[1]",
        "vdup.32 q14, d3[1]",
        "vmla.f32 q14, q13, q10",
        "vdup.32 q13, d4[0]",
        "vmla.f32 q13, q14, q10",
        "vdup.32 q14, d4[1]",
        "vmla.f32 q14, q13, q10",
        "vdup.32 q13, d5[0]",
        "vmla.f32 q13, q14, q10",
        "vmul.f32 q14, q10, q10",
        "vadd.f32 q15, q10, q7",
        "vmla.f32 q15, q13, q14",
        // · 2^n: (n << 23) + the bits of 1.0 are the bits of 2^n (n is in −126..=127).
        "vshl.i32 q11, q11, #23",
        "vadd.i32 q11, q11, q7",
        "vmul.f32 q15, q15, q11",
        // x · 1 / (1 + e^y)
        "vadd.f32 q15, q15, q7",
        "vrecpe.f32 q12, q15",
        "vrecps.f32 q13, q15, q12",
        "vmul.f32 q12, q12, q13",
        "vrecps.f32 q13, q15, q12",
        "vmul.f32 q12, q12, q13",
        "vmul.f32 q8, q8, q12",
        "vst1.32 {{d16-d17}}, [{x}]!",
        "subs {n}, {n}, #1",
        "bne 2b",
        ".fpu vfpv3",
        x = inout(reg) x => _,
        n = inout(reg) n4 => _,
        c = inout(reg) GELU_CONSTS.0.as_ptr() => _,
        out("d0") _, out("d1") _,
        options(nostack),
    );
}

/// GELU (tanh form) in place.
///
/// # Safety
/// The CPU must have NEON and VFPv4.
pub(super) unsafe fn gelu_tanh(x: &mut [f32]) {
    let head = x.len() / 4 * 4;
    if head > 0 {
        // SAFETY: `x` holds `head` floats; NEON/VFPv4 per the caller.
        gelu_x4(x.as_mut_ptr(), head / 4);
    }
    let tail = &mut x[head..];
    if !tail.is_empty() {
        // The last 1..3 values through one zero-padded vector.
        let mut buf = [0f32; 4];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 4 floats.
        gelu_x4(buf.as_mut_ptr(), 1);
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}

/// `Σ w[i] · x[i]` over `8 · n8` values, eight lanes at a time.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `n8 ≥ 1`; `w` and `x` point at `8 · n8` readable values.
#[inline]
unsafe fn dot_f16_x8(w: *const f16, x: *const f32, n8: usize) -> f32 {
    let r: f32;
    // SAFETY: reads `8 · n8` halves from `w` and floats from `x` (guaranteed by the caller);
    // writes only the declared registers.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov.i32 q0, #0",
        "vmov.i32 q1, #0",
        "2:",
        "vld1.16 {{d4-d5}}, [{w}]!",
        "vld1.32 {{d16-d19}}, [{x}]!",
        "vcvt.f32.f16 q3, d4",
        "vcvt.f32.f16 q10, d5",
        "vmla.f32 q0, q3, q8",
        "vmla.f32 q1, q10, q9",
        "subs {n}, {n}, #1",
        "bne 2b",
        "vadd.f32 q0, q0, q1",
        "vadd.f32 d0, d0, d1",
        "vpadd.f32 d0, d0, d0",
        ".fpu vfpv3",
        w = inout(reg) w => _,
        x = inout(reg) x => _,
        n = inout(reg) n8 => _,
        out("s0") r, out("s1") _, out("d1") _,
        options(pure, readonly, nostack),
    );
    r
}

/// `Σ w[i] · x[i]`.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `w.len() == x.len()`.
pub(super) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let head = w.len() / 8 * 8;
    let tail: f32 = w[head..]
        .iter()
        .zip(&x[head..])
        .map(|(a, b)| a.to_f32() * b)
        .sum();
    if head == 0 {
        return tail;
    }
    // SAFETY: both slices hold `head` values (equal lengths); NEON/VFPv4 per the caller.
    dot_f16_x8(w.as_ptr(), x.as_ptr(), head / 8) + tail
}

/// `acc[i] += s · x[i]` for `4 · n4` values, product and sum rounded separately in VFP.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `n4 ≥ 1`; `acc` points at `4 · n4` writable floats and `x`
/// at `4 · n4` readable halves.
#[inline]
unsafe fn axpy_f16_x4(acc: *mut f32, s: f32, x: *const f16, n4: usize) {
    // SAFETY: reads `4 · n4` halves from `x` and reads and writes `4 · n4` floats at `acc`
    // (guaranteed by the caller, and not overlapping: `&mut` and `&` slices); writes only the
    // declared registers otherwise.
    neon_asm!(
        ".fpu neon-vfpv4",
        "vmov s16, {s}",
        "2:",
        "vld1.16 {{d4}}, [{x}]!",
        "vld1.32 {{d0-d1}}, [{acc}]",
        "vcvt.f32.f16 q3, d4",
        "vmul.f32 s12, s12, s16",
        "vmul.f32 s13, s13, s16",
        "vmul.f32 s14, s14, s16",
        "vmul.f32 s15, s15, s16",
        "vadd.f32 s0, s0, s12",
        "vadd.f32 s1, s1, s13",
        "vadd.f32 s2, s2, s14",
        "vadd.f32 s3, s3, s15",
        "vst1.32 {{d0-d1}}, [{acc}]!",
        "subs {n}, {n}, #1",
        "bne 2b",
        ".fpu vfpv3",
        acc = inout(reg) acc => _,
        x = inout(reg) x => _,
        n = inout(reg) n4 => _,
        s = in(reg) s.to_bits(),
        out("d0") _, out("d1") _,
        options(nostack),
    );
}

/// `acc += s · x`, bit-identical to the scalar twin.
///
/// # Safety
/// The CPU must have NEON and VFPv4; `acc.len() == x.len()`.
pub(super) unsafe fn axpy_f16(acc: &mut [f32], s: f32, x: &[f16]) {
    let head = acc.len() / 4 * 4;
    if head > 0 {
        // SAFETY: both slices hold `head` values; NEON/VFPv4 per the caller.
        axpy_f16_x4(acc.as_mut_ptr(), s, x.as_ptr(), head / 4);
    }
    for (a, v) in acc[head..].iter_mut().zip(&x[head..]) {
        *a += s * v.to_f32();
    }
}
