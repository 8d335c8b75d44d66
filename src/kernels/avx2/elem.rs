//! AVX2 + FMA + F16C element-wise kernels: GELU (tanh form), softmax, layer norm, `add_assign`,
//! `axpy` and `axpy_f16` (the f16 KV cache's weighted sum). Twins of the
//! [`scalar`](crate::kernels::scalar) functions of the same names.
//!
//! * GELU is computed as `x · σ(2u) = x / (1 + e^(−2u))`, `u = √(2/π)(x + 0.044715x³)`, which
//!   equals `0.5·x·(1 + tanh u)` without the cancellation of `1 + tanh u` for negative `x`.
//! * `e^x` is [`exp_ps`]: Cephes-style range reduction and a degree-7 polynomial, a few ulp.
//! * `add_assign`, `axpy` and `axpy_f16` multiply and add separately (no FMA), so they are
//!   bit-identical to the scalar twins.
//!
//! Each kernel runs 8 lanes at a time; the last `len % 8` values go through one zero-padded
//! vector on the stack (no allocation).

use std::arch::x86_64::*;

use half::f16;

use super::{hmax_ps, hsum_ps};
use crate::kernels::exp_consts::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO};

// ---------------------------------------------------------------------------------------------
// Safe wrappers (table entries). Only reachable through `avx2::ops()`, whose contract is that the
// CPU supports AVX2, FMA and F16C.

/// GELU (tanh approximation) in place.
pub(super) fn gelu_tanh(x: &mut [f32]) {
    // SAFETY: only reachable through `avx2::ops()`'s table (CPU has AVX2, FMA, F16C).
    unsafe { gelu_tanh_avx2(x) }
}

/// Softmax in place.
pub(super) fn softmax(x: &mut [f32]) {
    // SAFETY: only reachable through `avx2::ops()`'s table (CPU has AVX2, FMA, F16C).
    unsafe { softmax_avx2(x) }
}

/// Layer norm of `x` into `out`.
pub(super) fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == bias.len() && x.len() == out.len(),
        "layer_norm: lengths"
    );
    // SAFETY: only reachable through `avx2::ops()`'s table (CPU has AVX2, FMA, F16C); the four
    // lengths are equal.
    unsafe { layer_norm_avx2(x, weight, bias, eps, out) }
}

/// `acc += x`.
pub(super) fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: lengths");
    // SAFETY: only reachable through `avx2::ops()`'s table; the lengths are equal.
    unsafe { axpy_avx2(acc, None, x) }
}

/// `acc += s · x`.
pub(super) fn axpy(acc: &mut [f32], s: f32, x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "axpy: lengths");
    // SAFETY: only reachable through `avx2::ops()`'s table; the lengths are equal.
    unsafe { axpy_avx2(acc, Some(s), x) }
}

/// `acc += s · x` with f16 `x`.
pub(super) fn axpy_f16(acc: &mut [f32], s: f32, x: &[f16]) {
    assert_eq!(acc.len(), x.len(), "axpy_f16: lengths");
    // SAFETY: only reachable through `avx2::ops()`'s table; the lengths are equal.
    unsafe { axpy_f16_avx2(acc, s, x) }
}

// ---------------------------------------------------------------------------------------------
// Vector exp.

/// Lanes: `e^x`, relative error a few ulp (tested < 4e-7) on `[EXP_LO, EXP_HI]`; `+inf` above
/// [`EXP_HI`], `0` below [`EXP_LO`], NaN for NaN.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn exp_ps(x: __m256) -> __m256 {
    // `min`/`max` return their second operand when either is NaN: `x` second keeps NaN.
    let xc = _mm256_max_ps(
        _mm256_set1_ps(EXP_LO),
        _mm256_min_ps(_mm256_set1_ps(EXP_HI), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_P[0]);
    for c in &EXP_P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let p = _mm256_fmadd_ps(
        p,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // 2^n from the exponent bits; `n` is in −126..=127 here (NaN lanes give garbage bits, but
    // `p` is NaN there, so the product stays NaN).
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    let e = _mm256_blendv_ps(
        e,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXP_HI)),
    );
    _mm256_blendv_ps(
        e,
        _mm256_setzero_ps(),
        _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO)),
    )
}

// ---------------------------------------------------------------------------------------------
// Kernels.

/// Lanes: GELU (tanh form) of `x`, as `x / (1 + e^(−2u))`. Saturates cleanly: large positive
/// `x` gives `x`, large negative gives `−0`; NaN stays NaN (`−inf` gives NaN, like the scalar
/// `0.5 · −inf · 0`).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gelu_ps(x: __m256) -> __m256 {
    const C: f32 = 0.044715;
    // −2 · √(2/π)
    const M2K: f32 = -2.0 * 0.797_884_6;
    let x2 = _mm256_mul_ps(x, x);
    let inner = _mm256_fmadd_ps(_mm256_mul_ps(x2, _mm256_set1_ps(C)), x, x);
    let e = exp_ps(_mm256_mul_ps(inner, _mm256_set1_ps(M2K)));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gelu_tanh_avx2(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 8 floats, read then written in place.
        unsafe { _mm256_storeu_ps(p, gelu_ps(_mm256_loadu_ps(p))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [0f32; 8];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 8 floats.
        unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), gelu_ps(_mm256_loadu_ps(buf.as_ptr()))) };
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_avx2(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // Maximum. A NaN input need not survive here: its `e^(x − max)` is NaN, so the sum and
    // every output become NaN, as in the scalar twin.
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 floats.
        vmax = _mm256_max_ps(vmax, unsafe { _mm256_loadu_ps(c.as_ptr()) });
    }
    let max = chunks
        .remainder()
        .iter()
        .fold(hmax_ps(vmax), |m, &v| m.max(v));
    let vm = _mm256_set1_ps(max);
    // e^(x − max), stored, and summed.
    let mut vsum = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 8 floats, read then written in place.
        let e = exp_ps(_mm256_sub_ps(unsafe { _mm256_loadu_ps(p) }, vm));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(p, e) };
        vsum = _mm256_add_ps(vsum, e);
    }
    let tail = chunks.into_remainder();
    let mut sum = hsum_ps(vsum);
    if !tail.is_empty() {
        let mut buf = [0f32; 8];
        buf[..tail.len()].copy_from_slice(tail);
        // SAFETY: `buf` holds 8 floats.
        unsafe {
            _mm256_storeu_ps(
                buf.as_mut_ptr(),
                exp_ps(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), vm)),
            )
        };
        // Only the real lanes count (the padding's e^(0 − max) is not part of the row).
        for (t, &e) in tail.iter_mut().zip(&buf) {
            *t = e;
            sum += e;
        }
    }
    let inv = 1.0 / sum;
    scale_in_place(x, inv);
}

/// `x *= s`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_in_place(x: &mut [f32], s: f32) {
    let vs = _mm256_set1_ps(s);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 8 floats, read then written in place.
        unsafe { _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), vs)) };
    }
    for v in chunks.into_remainder() {
        *v *= s;
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; the four slices must be equally long.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn layer_norm_avx2(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let full = n / 8 * 8;
    let px = x.as_ptr();
    // Mean: two accumulators, then the tail.
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 8 ≤ full ≤ n`.
        acc[(i / 8) & 1] = _mm256_add_ps(acc[(i / 8) & 1], unsafe { _mm256_loadu_ps(px.add(i)) });
        i += 8;
    }
    let sum = hsum_ps(_mm256_add_ps(acc[0], acc[1])) + x[full..].iter().sum::<f32>();
    let mean = sum / n as f32;
    // Biased variance around the mean (two-pass, like the scalar twin).
    let vmean = _mm256_set1_ps(mean);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 8 ≤ full ≤ n`.
        let d = _mm256_sub_ps(unsafe { _mm256_loadu_ps(px.add(i)) }, vmean);
        acc[(i / 8) & 1] = _mm256_fmadd_ps(d, d, acc[(i / 8) & 1]);
        i += 8;
    }
    let tail_sq: f32 = x[full..].iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (hsum_ps(_mm256_add_ps(acc[0], acc[1])) + tail_sq) / n as f32;
    let inv = 1.0 / (var + eps).sqrt();
    // out = (x − mean) · inv · w + b.
    let vinv = _mm256_set1_ps(inv);
    let (pw, pb, po) = (weight.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < full {
        // SAFETY: the four slices are `n` long and `i + 8 ≤ n`.
        unsafe {
            let d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(px.add(i)), vmean), vinv);
            let o = _mm256_fmadd_ps(d, _mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(pb.add(i)));
            _mm256_storeu_ps(po.add(i), o);
        }
        i += 8;
    }
    for j in full..n {
        out[j] = (x[j] - mean) * inv * weight[j] + bias[j];
    }
}

/// `acc += s · x` (or `acc += x` for `None`), multiply and add rounded separately.
///
/// # Safety
/// The CPU must support AVX2; `acc.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_avx2(acc: &mut [f32], s: Option<f32>, x: &[f32]) {
    let n = acc.len();
    let full = n / 8 * 8;
    let (pa, px) = (acc.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    match s {
        None => {
            while i < full {
                // SAFETY: both slices are `n` long and `i + 8 ≤ n`.
                unsafe {
                    let v = _mm256_add_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(px.add(i)));
                    _mm256_storeu_ps(pa.add(i), v);
                }
                i += 8;
            }
            for j in full..n {
                acc[j] += x[j];
            }
        }
        Some(s) => {
            let vs = _mm256_set1_ps(s);
            while i < full {
                // SAFETY: both slices are `n` long and `i + 8 ≤ n`.
                unsafe {
                    let p = _mm256_mul_ps(vs, _mm256_loadu_ps(px.add(i)));
                    _mm256_storeu_ps(pa.add(i), _mm256_add_ps(_mm256_loadu_ps(pa.add(i)), p));
                }
                i += 8;
            }
            for j in full..n {
                acc[j] += s * x[j];
            }
        }
    }
}

/// `acc += s · x` with f16 `x` widened exactly by F16C, multiply and add rounded separately.
///
/// # Safety
/// The CPU must support AVX2 and F16C; `acc.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(acc: &mut [f32], s: f32, x: &[f16]) {
    let n = acc.len();
    let full = n / 8 * 8;
    // `half::f16` is `repr(transparent)` over its u16 bits: 8 of them are 16 bytes.
    let (pa, px) = (acc.as_mut_ptr(), x.as_ptr());
    let vs = _mm256_set1_ps(s);
    let mut i = 0;
    while i < full {
        // SAFETY: both slices are `n` long and `i + 8 ≤ n`; the 16-byte load reads `x[i..i + 8]`.
        unsafe {
            let xf = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i).cast()));
            let v = _mm256_add_ps(_mm256_loadu_ps(pa.add(i)), _mm256_mul_ps(vs, xf));
            _mm256_storeu_ps(pa.add(i), v);
        }
        i += 8;
    }
    for j in full..n {
        acc[j] += s * super::f16_to_f32(x[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp_ps` against f64 `exp` over its whole finite range and at the edges.
    #[test]
    fn exp_ps_relative_error_is_a_few_ulp() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("skipped: CPU lacks AVX2/FMA");
            return;
        }
        let eval = |x: f32| -> f32 {
            let mut o = [0f32; 8];
            // SAFETY: AVX2 and FMA were detected; `o` holds 8 floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), exp_ps(_mm256_set1_ps(x))) };
            o[0]
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
