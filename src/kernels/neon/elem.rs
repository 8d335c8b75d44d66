//! NEON element-wise kernels: GELU (tanh form), softmax, layer norm, `add_assign`, `axpy` and
//! `axpy_f16` (the f16 KV cache's weighted sum). Twins of the
//! [`scalar`](crate::kernels::scalar) functions of the same names, with the same formulas as the
//! AVX2 ones (see `avx2/elem.rs`):
//!
//! * GELU as `x / (1 + e^(−2u))`, `u = √(2/π)(x + 0.044715x³)`, i.e. `0.5·x·(1 + tanh u)`
//!   without the cancellation of `1 + tanh u` for negative `x`.
//! * `e^x` is [`exp_q`]: Cephes-style range reduction and polynomial, a few ulp.
//! * `add_assign`, `axpy` and `axpy_f16` multiply and add separately (no FMA), so they are
//!   bit-identical to the scalar twins; f16 is widened with `fcvtl` (exact).
//!
//! Each kernel runs 4 lanes at a time; the last `len % 4` values go through one zero-padded
//! vector on the stack (no allocation).

use std::arch::aarch64::*;

use half::f16;

use super::{f16_to_f32, f16x4_to_f32, f16x8_high_to_f32};
use crate::kernels::exp_consts::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO};

// ---------------------------------------------------------------------------------------------
// Safe wrappers (table entries). NEON is part of the aarch64 baseline.

/// GELU (tanh approximation) in place.
pub(super) fn gelu_tanh(x: &mut [f32]) {
    // SAFETY: NEON is baseline on aarch64.
    unsafe { gelu_tanh_neon(x) }
}

/// Softmax in place.
pub(super) fn softmax(x: &mut [f32]) {
    // SAFETY: NEON is baseline on aarch64.
    unsafe { softmax_neon(x) }
}

/// Layer norm of `x` into `out`.
pub(super) fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == bias.len() && x.len() == out.len(),
        "layer_norm: lengths"
    );
    // SAFETY: NEON is baseline on aarch64; the four lengths are equal.
    unsafe { layer_norm_neon(x, weight, bias, eps, out) }
}

/// `acc += x`.
pub(super) fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths are equal.
    unsafe { axpy_neon(acc, None, x) }
}

/// `acc += s · x`.
pub(super) fn axpy(acc: &mut [f32], s: f32, x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "axpy: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths are equal.
    unsafe { axpy_neon(acc, Some(s), x) }
}

/// `acc += s · x` with f16 `x`.
pub(super) fn axpy_f16(acc: &mut [f32], s: f32, x: &[f16]) {
    assert_eq!(acc.len(), x.len(), "axpy_f16: lengths");
    // SAFETY: NEON is baseline on aarch64; the lengths are equal.
    unsafe { axpy_f16_neon(acc, s, x) }
}

// ---------------------------------------------------------------------------------------------
// Vector exp.

/// Lanes: `e^x`, relative error a few ulp (tested < 4e-7) on `[EXP_LO, EXP_HI]`; `+inf` above
/// `EXP_HI`, `0` below `EXP_LO`, NaN for NaN.
///
/// # Safety
/// NEON must be available (always on aarch64).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp_q(x: float32x4_t) -> float32x4_t {
    // `fmin`/`fmax` return NaN when either operand is NaN.
    let xc = vmaxq_f32(vdupq_n_f32(EXP_LO), vminq_f32(vdupq_n_f32(EXP_HI), x));
    let n = vrndnq_f32(vmulq_n_f32(xc, std::f32::consts::LOG2_E));
    let r = vfmsq_f32(xc, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(EXP_P[0]);
    for c in &EXP_P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, r);
    }
    let p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    // 2^n from the exponent bits; `n` is in −126..=127 here (NaN lanes convert to 0, and `p` is
    // NaN there, so the product stays NaN).
    let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    let e = vmulq_f32(p, vreinterpretq_f32_s32(bits));
    let e = vbslq_f32(
        vcgtq_f32(x, vdupq_n_f32(EXP_HI)),
        vdupq_n_f32(f32::INFINITY),
        e,
    );
    vbslq_f32(vcltq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(0.0), e)
}

// ---------------------------------------------------------------------------------------------
// Kernels.

/// Lanes: GELU (tanh form) of `x`, as `x / (1 + e^(−2u))`. Large positive `x` gives `x`, large
/// negative `−0`; NaN stays NaN (`−inf` gives NaN, like the scalar `0.5 · −inf · 0`).
///
/// # Safety
/// NEON must be available.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn gelu_q(x: float32x4_t) -> float32x4_t {
    const C: f32 = 0.044715;
    // −2 · √(2/π)
    const M2K: f32 = -2.0 * 0.797_884_6;
    let x2 = vmulq_f32(x, x);
    let inner = vfmaq_f32(x, vmulq_n_f32(x2, C), x);
    let e = exp_q(vmulq_n_f32(inner, M2K));
    vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), e))
}

/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
unsafe fn gelu_tanh_neon(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 4 floats, read then written in place.
        unsafe { vst1q_f32(p, gelu_q(vld1q_f32(p))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [0f32; 4];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 4 floats.
        unsafe { vst1q_f32(buf.as_mut_ptr(), gelu_q(vld1q_f32(buf.as_ptr()))) };
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}

/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
unsafe fn softmax_neon(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // Maximum (`fmax` propagates NaN; either way a NaN input makes every output NaN through the
    // sum, as in the scalar twin).
    let mut vmax = vdupq_n_f32(f32::NEG_INFINITY);
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 4 floats.
        vmax = vmaxq_f32(vmax, unsafe { vld1q_f32(c.as_ptr()) });
    }
    let max = chunks
        .remainder()
        .iter()
        .fold(vmaxvq_f32(vmax), |m, &v| m.max(v));
    let vm = vdupq_n_f32(max);
    // e^(x − max), stored, and summed.
    let mut vsum = vdupq_n_f32(0.0);
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 4 floats, read then written in place.
        let e = exp_q(vsubq_f32(unsafe { vld1q_f32(p) }, vm));
        // SAFETY: as above.
        unsafe { vst1q_f32(p, e) };
        vsum = vaddq_f32(vsum, e);
    }
    let tail = chunks.into_remainder();
    let mut sum = vaddvq_f32(vsum);
    if !tail.is_empty() {
        let mut buf = [0f32; 4];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 4 floats.
        unsafe {
            vst1q_f32(
                buf.as_mut_ptr(),
                exp_q(vsubq_f32(vld1q_f32(buf.as_ptr()), vm)),
            )
        };
        // Only the real lanes count.
        for (t, &e) in tail.iter_mut().zip(&buf) {
            *t = e;
            sum += e;
        }
    }
    let inv = 1.0 / sum;
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 4 floats, read then written in place.
        unsafe { vst1q_f32(p, vmulq_n_f32(vld1q_f32(p), inv)) };
    }
    for v in chunks.into_remainder() {
        *v *= inv;
    }
}

/// # Safety
/// NEON must be available; the four slices must be equally long.
#[target_feature(enable = "neon")]
unsafe fn layer_norm_neon(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let full = n / 4 * 4;
    let px = x.as_ptr();
    // Mean: two accumulators, then the tail.
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 4 ≤ full ≤ n`.
        acc[(i / 4) & 1] = vaddq_f32(acc[(i / 4) & 1], unsafe { vld1q_f32(px.add(i)) });
        i += 4;
    }
    let sum = vaddvq_f32(vaddq_f32(acc[0], acc[1])) + x[full..].iter().sum::<f32>();
    let mean = sum / n as f32;
    // Biased variance around the mean (two-pass, like the scalar twin).
    let vmean = vdupq_n_f32(mean);
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 4 ≤ full ≤ n`.
        let d = vsubq_f32(unsafe { vld1q_f32(px.add(i)) }, vmean);
        acc[(i / 4) & 1] = vfmaq_f32(acc[(i / 4) & 1], d, d);
        i += 4;
    }
    let tail_sq: f32 = x[full..].iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail_sq) / n as f32;
    let inv = 1.0 / (var + eps).sqrt();
    // out = (x − mean) · inv · w + b.
    let (pw, pb, po) = (weight.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < full {
        // SAFETY: the four slices are `n` long and `i + 4 ≤ n`.
        unsafe {
            let d = vmulq_n_f32(vsubq_f32(vld1q_f32(px.add(i)), vmean), inv);
            let o = vfmaq_f32(vld1q_f32(pb.add(i)), d, vld1q_f32(pw.add(i)));
            vst1q_f32(po.add(i), o);
        }
        i += 4;
    }
    for j in full..n {
        out[j] = (x[j] - mean) * inv * weight[j] + bias[j];
    }
}

/// `acc += s · x` (or `acc += x` for `None`), multiply and add rounded separately.
///
/// # Safety
/// NEON must be available; `acc.len() == x.len()`.
#[target_feature(enable = "neon")]
unsafe fn axpy_neon(acc: &mut [f32], s: Option<f32>, x: &[f32]) {
    let n = acc.len();
    let full = n / 4 * 4;
    let (pa, px) = (acc.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    match s {
        None => {
            while i < full {
                // SAFETY: both slices are `n` long and `i + 4 ≤ n`.
                unsafe {
                    let v = vaddq_f32(vld1q_f32(pa.add(i)), vld1q_f32(px.add(i)));
                    vst1q_f32(pa.add(i), v);
                }
                i += 4;
            }
            for j in full..n {
                acc[j] += x[j];
            }
        }
        Some(s) => {
            while i < full {
                // SAFETY: both slices are `n` long and `i + 4 ≤ n`.
                unsafe {
                    let p = vmulq_n_f32(vld1q_f32(px.add(i)), s);
                    vst1q_f32(pa.add(i), vaddq_f32(vld1q_f32(pa.add(i)), p));
                }
                i += 4;
            }
            for j in full..n {
                acc[j] += s * x[j];
            }
        }
    }
}

/// `acc += s · x` with f16 `x` widened exactly by `fcvtl`, multiply and add rounded separately.
///
/// # Safety
/// NEON must be available; `acc.len() == x.len()`.
#[target_feature(enable = "neon")]
unsafe fn axpy_f16_neon(acc: &mut [f32], s: f32, x: &[f16]) {
    let n = acc.len();
    let full = n / 4 * 4;
    // `half::f16` is `repr(transparent)` over its u16 bits.
    let (pa, px) = (acc.as_mut_ptr(), x.as_ptr().cast::<u16>());
    let mut i = 0;
    // Sixteen at a time (a head of 64 is four passes): the loop's bookkeeping is a third of
    // the instructions when it runs four at a time.
    while i + 16 <= n {
        // SAFETY: both slices are `n` long and `i + 16 ≤ n`; the loads read `x[i..i + 16]`.
        unsafe {
            let (h0, h1) = (vld1q_u16(px.add(i)), vld1q_u16(px.add(i + 8)));
            let xf = [
                f16x4_to_f32(vget_low_u16(h0)),
                f16x8_high_to_f32(h0),
                f16x4_to_f32(vget_low_u16(h1)),
                f16x8_high_to_f32(h1),
            ];
            for (k, xk) in xf.into_iter().enumerate() {
                let p = pa.add(i + 4 * k);
                vst1q_f32(p, vaddq_f32(vld1q_f32(p), vmulq_n_f32(xk, s)));
            }
        }
        i += 16;
    }
    while i < full {
        // SAFETY: both slices are `n` long and `i + 4 ≤ n`; the load reads `x[i..i + 4]`.
        unsafe {
            let xf = f16x4_to_f32(vld1_u16(px.add(i)));
            let v = vaddq_f32(vld1q_f32(pa.add(i)), vmulq_n_f32(xf, s));
            vst1q_f32(pa.add(i), v);
        }
        i += 4;
    }
    for j in full..n {
        acc[j] += s * f16_to_f32(x[j].to_bits());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_q` against f64 `exp` over its whole finite range and at the edges.
    #[test]
    fn exp_q_relative_error_is_a_few_ulp() {
        let eval = |x: f32| -> f32 {
            // SAFETY: NEON is baseline on aarch64.
            unsafe { vgetq_lane_f32::<0>(exp_q(vdupq_n_f32(x))) }
        };
        let mut worst = 0f64;
        let steps = 200_000;
        for k in 0..=steps {
            let x = EXP_LO + (EXP_HI - EXP_LO) * k as f32 / steps as f32;
            let want = (x as f64).exp();
            let rel = (eval(x) as f64 - want).abs() / want;
            worst = worst.max(rel);
        }
        println!("exp: worst relative error {worst:.3e}");
        assert!(worst < 4e-7, "exp relative error {worst}");
        assert_eq!(eval(0.0), 1.0);
        assert_eq!(eval(-0.0), 1.0);
        assert_eq!(eval(89.0), f32::INFINITY);
        assert_eq!(eval(1e30), f32::INFINITY);
        assert_eq!(eval(f32::INFINITY), f32::INFINITY);
        assert_eq!(eval(-88.0), 0.0);
        assert_eq!(eval(f32::NEG_INFINITY), 0.0);
        assert!(eval(f32::NAN).is_nan());
    }
}
