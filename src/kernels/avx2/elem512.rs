//! The 512-bit table's element-wise kernel: GELU (tanh form) sixteen lanes at a time, the
//! arithmetic of [`super::elem`]'s eight-lane one (`x / (1 + e^(−2u))`, the same Cephes `exp`),
//! with `vscalefps` for `2^n` and masked loads for the tail. Twin of
//! [`scalar::gelu_tanh`](crate::kernels::scalar::gelu_tanh).

use std::arch::x86_64::*;

use crate::kernels::exp_consts::{EXP_HI, EXP_LO, EXP_P, LN2_HI, LN2_LO};

/// GELU (tanh approximation) in place.
pub(super) fn gelu_tanh(x: &mut [f32]) {
    // SAFETY: only reachable through `avx2::vnni_ops()`'s table, whose contract is that the CPU
    // supports AVX2, FMA, F16C and AVX-512 F, BW and VNNI.
    unsafe { gelu_tanh_512(x) }
}

/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn gelu_tanh_512(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        let p = c.as_mut_ptr();
        // SAFETY: `c` holds exactly 16 floats, read then written in place.
        unsafe { _mm512_storeu_ps(p, gelu_ps(_mm512_loadu_ps(p))) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mask: __mmask16 = (1u32 << tail.len()) as u16 - 1;
        let p = tail.as_mut_ptr();
        // SAFETY: the mask covers exactly the `tail.len()` floats of `tail`; masked-off lanes
        // are neither read (no fault) nor written.
        unsafe { _mm512_mask_storeu_ps(p, mask, gelu_ps(_mm512_maskz_loadu_ps(mask, p))) };
    }
}

/// Lanes: `x · σ(2u)`, `u = √(2/π)(x + 0.044715x³)`.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn gelu_ps(x: __m512) -> __m512 {
    const C: f32 = 0.044715;
    // −2 · √(2/π)
    const M2K: f32 = -2.0 * 0.797_884_6;
    let x2 = _mm512_mul_ps(x, x);
    let inner = _mm512_fmadd_ps(_mm512_mul_ps(x2, _mm512_set1_ps(C)), x, x);
    let e = exp_ps(_mm512_mul_ps(inner, _mm512_set1_ps(M2K)));
    _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// Lanes: `e^x` as [`super::elem::exp_ps`] computes it: `+inf` above [`EXP_HI`], `0` below
/// [`EXP_LO`], NaN for NaN.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn exp_ps(x: __m512) -> __m512 {
    // `min`/`max` return their second operand when either is NaN: `x` second keeps NaN.
    let xc = _mm512_max_ps(
        _mm512_set1_ps(EXP_LO),
        _mm512_min_ps(_mm512_set1_ps(EXP_HI), x),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_P[0]);
    for c in &EXP_P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let p = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    // `p · 2^n`, exact: `n` is in −126..=127 here, so the result is a normal float.
    let e = _mm512_scalef_ps(p, n);
    let e = _mm512_mask_mov_ps(
        e,
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(EXP_HI)),
        _mm512_set1_ps(f32::INFINITY),
    );
    _mm512_mask_mov_ps(
        e,
        _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO)),
        _mm512_setzero_ps(),
    )
}
