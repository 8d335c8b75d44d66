//! The f16 KV cache's kernels in NEON `asm!`: the dot product of f16 keys with an f32 query
//! (`dot_f16`) and the weighted sum of f16 values (`axpy_f16`). Their cost grows with the context,
//! so at a few hundred tokens they outweigh the matrix products on the scalar path.
//!
//! f16 is widened with `vcvt.f32.f16` (VFPv4; exact, and NEON's flush-to-zero does not apply to
//! half-precision inputs). `dot_f16` multiplies and adds in NEON, eight lanes per step (within
//! float tolerance of the scalar twin; products below 2⁻¹²⁶ count as 0). `axpy_f16` must be
//! bit-identical to its twin, subnormals included, so after the NEON widening it multiplies and
//! adds in VFP scalar instructions, which follow IEEE 754 like the compiled scalar code.

use half::f16;

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
