//! The q4 scale search: for each block of 32 weights, the f16 scale `d` whose codes
//! `q = round(x / d) + 8` (clamped to 0..=15) leave the least squared error `Σ wᵢ (xᵢ − d·(qᵢ − 8))²`,
//! optionally weighted by column importance (`--calib`).
//!
//! It owns only the converter's choice of the scale; what a q4 block is belongs to
//! [`gpt2q::quant`]. The search runs in two stages:
//!
//! 1. **Grid.** [`GRID`] candidate inverse scales map the block's largest-magnitude value to a code
//!    near −8 or near +7 (the grid is asymmetric, so either side can win), in steps of 0.05. Each
//!    candidate gives codes `l` in one rounding pass, and with them the closed-form least-squares
//!    scale `s = Σwxl / Σwl²` and its error `Σwx² − (Σwxl)² / Σwl²`: no second pass per
//!    candidate. This is the hot loop: [`candidate_sums`] computes it for all candidates at once,
//!    lanes across candidates, in AVX (x86-64, detected at run time) or NEON (aarch64), with a
//!    portable scalar twin that gives bit-identical sums (products and sums rounded separately, in
//!    the same order; no FMA), so files do not depend on the machine that converted them.
//! 2. **Refit.** The best candidate's least-squares scale is rounded to f16 (the scale as stored),
//!    the codes are recomputed with it, their exact error is measured, and the least-squares scale
//!    of the new codes is tried in turn, until it stops changing (at most [`REFITS`] rounds). The
//!    plain choice `max / −8` is always measured too, so the result is never worse than it.
//!
//! Against the exhaustive search it replaces (every grid scale and its refit rounded to f16 and
//! measured, 140 error passes and 210 rounding passes per block) it does about a third of the
//! arithmetic, in SIMD lanes, and reaches the same or lower error (tested below).

use gpt2q::quant::{BlockQ4, QK};
use half::f16;

/// Number of grid candidates: 70 divisors (35 steps on each side) padded to a multiple of 24
/// (three AVX or six NEON vectors per group) by repeating the last.
pub const GRID: usize = 72;

/// Rounds of least-squares refitting after the grid stage.
pub const REFITS: usize = 4;

/// `1.5 · 2²³`: adding and subtracting it rounds a float of magnitude below 2²² to the nearest
/// integer (ties to even), with plain float arithmetic that every SIMD set has.
const ROUNDER: f32 = 12_582_912.0;

/// Blocks whose largest magnitude is below this have every candidate scale round to an f16 zero
/// (the smallest f16 subnormal is 2⁻²⁴ and the largest divisor is 8.5): they are stored as zero.
const NEGLIGIBLE: f32 = 1.0e-7;

/// The grid divisors: the largest-magnitude value maps to `divisor` before rounding.
fn divisors() -> [f32; GRID] {
    let mut out = [0f32; GRID];
    let mut n = 0;
    for step in -4..=30 {
        let shift = step as f32 * 0.05;
        for divisor in [-8.0 + shift, 7.0 + shift] {
            out[n] = divisor;
            n += 1;
        }
    }
    let last = out[n - 1];
    out[n..].fill(last);
    out
}

/// The code (−8..=7, as a float) of `y = x / d`: clamped, then rounded to nearest (ties to even).
#[inline(always)]
fn code(y: f32) -> f32 {
    (y.clamp(-8.0, 7.0) + ROUNDER) - ROUNDER
}

/// Quantises one block minimising the squared error weighted by `w` (all ones for the plain
/// error); see the module comment.
pub fn quantize_block(x: &[f32; QK], w: &[f32; QK]) -> BlockQ4 {
    let d = best_scale(x, w);
    let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [8u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = (code(v * inv) + 8.0) as u8;
    }
    let mut qs = [0u8; QK / 2];
    for (j, byte) in qs.iter_mut().enumerate() {
        *byte = q[j] | (q[j + QK / 2] << 4);
    }
    BlockQ4 {
        d: f16::from_f32(d),
        qs,
    }
}

/// The f16-representable scale (as f32) the search picks; 0 for a negligible block.
fn best_scale(x: &[f32; QK], w: &[f32; QK]) -> f32 {
    let max = x
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    if max.abs() < NEGLIGIBLE {
        return 0.0;
    }
    let wx: [f32; QK] = std::array::from_fn(|i| w[i] * x[i]);
    let inv = divisors().map(|d| d / max);
    let (mut lx, mut l2) = ([0f32; GRID], [0f32; GRID]);
    candidate_sums(x, w, &wx, &inv, &mut lx, &mut l2);
    // Maximise (Σwxl)² / Σwl² without dividing; the first of equals wins.
    let mut best: Option<usize> = None;
    for c in 0..GRID {
        if l2[c] > 0.0 && best.is_none_or(|b| lx[c] * lx[c] * l2[b] > lx[b] * lx[b] * l2[c]) {
            best = Some(c);
        }
    }
    let mut chosen = Measured::of(x, w, &wx, stored(max / -8.0));
    if let Some(b) = best {
        let mut s = lx[b] / l2[b];
        for _ in 0..REFITS {
            let d = stored(s);
            if d == 0.0 || d == chosen.d {
                break;
            }
            let m = Measured::of(x, w, &wx, d);
            if m.error < chosen.error {
                chosen = m;
            }
            if m.l2 == 0.0 {
                break;
            }
            s = m.lx / m.l2;
        }
    }
    if chosen.error.is_finite() {
        chosen.d
    } else {
        0.0
    }
}

/// `s` rounded to the nearest f16, as f32; 0 when that is not a usable scale (zero, infinite).
fn stored(s: f32) -> f32 {
    let d = f16::from_f32(s).to_f32();
    if d.is_finite() {
        d
    } else {
        0.0
    }
}

/// One f16 scale measured on a block: its codes' sums and its error up to the constant `Σwx²`.
#[derive(Clone, Copy)]
struct Measured {
    d: f32,
    lx: f32,
    l2: f32,
    /// `d² Σwl² − 2d Σwxl`: the weighted squared error minus `Σwx²` (the same for every `d`).
    error: f32,
}

impl Measured {
    fn of(x: &[f32; QK], w: &[f32; QK], wx: &[f32; QK], d: f32) -> Self {
        if d == 0.0 {
            return Measured {
                d,
                lx: 0.0,
                l2: 0.0,
                error: f32::INFINITY,
            };
        }
        let inv = 1.0 / d;
        let (mut lx, mut l2) = (0f32, 0f32);
        for i in 0..QK {
            let l = code(x[i] * inv);
            lx += wx[i] * l;
            l2 += w[i] * l * l;
        }
        Measured {
            d,
            lx,
            l2,
            error: d * d * l2 - 2.0 * d * lx,
        }
    }
}

/// For every candidate `c`: with codes `l = code(x · inv[c])`, `lx[c] = Σ wx·l` and
/// `l2[c] = Σ (w·l)·l`, summed over the elements in order. Bit-identical in every implementation.
pub fn candidate_sums(
    x: &[f32; QK],
    w: &[f32; QK],
    wx: &[f32; QK],
    inv: &[f32; GRID],
    lx: &mut [f32; GRID],
    l2: &mut [f32; GRID],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX was just detected.
        unsafe { avx::candidate_sums(x, w, wx, inv, lx, l2) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { neon::candidate_sums(x, w, wx, inv, lx, l2) };
        return;
    }
    #[allow(unreachable_code)]
    candidate_sums_scalar(x, w, wx, inv, lx, l2)
}

/// The portable twin of [`candidate_sums`].
pub fn candidate_sums_scalar(
    x: &[f32; QK],
    w: &[f32; QK],
    wx: &[f32; QK],
    inv: &[f32; GRID],
    lx: &mut [f32; GRID],
    l2: &mut [f32; GRID],
) {
    for c in 0..GRID {
        let (mut a, mut b) = (0f32, 0f32);
        for i in 0..QK {
            let l = code(x[i] * inv[c]);
            a += wx[i] * l;
            let t = w[i] * l;
            b += t * l;
        }
        lx[c] = a;
        l2[c] = b;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    //! [`super::candidate_sums`] with 8 candidates per AVX vector, 24 per pass over the block.
    use std::arch::x86_64::*;

    use super::{GRID, QK, ROUNDER};

    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn candidate_sums(
        x: &[f32; QK],
        w: &[f32; QK],
        wx: &[f32; QK],
        inv: &[f32; GRID],
        lx: &mut [f32; GRID],
        l2: &mut [f32; GRID],
    ) {
        let (lo, hi, r) = (
            _mm256_set1_ps(-8.0),
            _mm256_set1_ps(7.0),
            _mm256_set1_ps(ROUNDER),
        );
        for g in (0..GRID).step_by(24) {
            // SAFETY: g + 24 <= GRID, so every load reads inside `inv`.
            let iv = unsafe {
                [
                    _mm256_loadu_ps(inv.as_ptr().add(g)),
                    _mm256_loadu_ps(inv.as_ptr().add(g + 8)),
                    _mm256_loadu_ps(inv.as_ptr().add(g + 16)),
                ]
            };
            let mut a = [_mm256_setzero_ps(); 3];
            let mut b = [_mm256_setzero_ps(); 3];
            for i in 0..QK {
                let (xv, wv, wxv) = (
                    _mm256_set1_ps(x[i]),
                    _mm256_set1_ps(w[i]),
                    _mm256_set1_ps(wx[i]),
                );
                for k in 0..3 {
                    let y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(xv, iv[k]), lo), hi);
                    let l = _mm256_sub_ps(_mm256_add_ps(y, r), r);
                    a[k] = _mm256_add_ps(a[k], _mm256_mul_ps(wxv, l));
                    b[k] = _mm256_add_ps(b[k], _mm256_mul_ps(_mm256_mul_ps(wv, l), l));
                }
            }
            for k in 0..3 {
                // SAFETY: g + 8k + 8 <= GRID, so every store writes inside `lx` and `l2`.
                unsafe {
                    _mm256_storeu_ps(lx.as_mut_ptr().add(g + 8 * k), a[k]);
                    _mm256_storeu_ps(l2.as_mut_ptr().add(g + 8 * k), b[k]);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! [`super::candidate_sums`] with 4 candidates per NEON vector, 24 per pass over the block.
    use std::arch::aarch64::*;

    use super::{GRID, QK, ROUNDER};

    /// # Safety
    /// NEON must be available (always on aarch64).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn candidate_sums(
        x: &[f32; QK],
        w: &[f32; QK],
        wx: &[f32; QK],
        inv: &[f32; GRID],
        lx: &mut [f32; GRID],
        l2: &mut [f32; GRID],
    ) {
        let (lo, hi, r) = (vdupq_n_f32(-8.0), vdupq_n_f32(7.0), vdupq_n_f32(ROUNDER));
        for g in (0..GRID).step_by(24) {
            // SAFETY: g + 24 <= GRID, so every load reads inside `inv`.
            let iv: [float32x4_t; 6] =
                std::array::from_fn(|k| unsafe { vld1q_f32(inv.as_ptr().add(g + 4 * k)) });
            let mut a = [vdupq_n_f32(0.0); 6];
            let mut b = [vdupq_n_f32(0.0); 6];
            for i in 0..QK {
                let (xv, wv, wxv) = (vdupq_n_f32(x[i]), vdupq_n_f32(w[i]), vdupq_n_f32(wx[i]));
                for k in 0..6 {
                    // No NaN reaches here (finite weights, finite scales), so NEON's NaN
                    // propagation in min/max never differs from the scalar twin's.
                    let y = vminq_f32(vmaxq_f32(vmulq_f32(xv, iv[k]), lo), hi);
                    let l = vsubq_f32(vaddq_f32(y, r), r);
                    a[k] = vaddq_f32(a[k], vmulq_f32(wxv, l));
                    b[k] = vaddq_f32(b[k], vmulq_f32(vmulq_f32(wv, l), l));
                }
            }
            for k in 0..6 {
                // SAFETY: g + 4k + 4 <= GRID, so every store writes inside `lx` and `l2`.
                unsafe {
                    vst1q_f32(lx.as_mut_ptr().add(g + 4 * k), a[k]);
                    vst1q_f32(l2.as_mut_ptr().add(g + 4 * k), b[k]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt2q::rng::Rng;

    /// A block like a weight row's: Gaussian, sometimes with one outlier.
    fn block(rng: &mut Rng, scale: f32) -> [f32; QK] {
        let mut x: [f32; QK] = std::array::from_fn(|_| rng.gaussian() * scale);
        if rng.unit() < 0.3 {
            let i = rng.below(QK);
            x[i] *= 4.0 + 4.0 * rng.unit();
        }
        x
    }

    fn error(x: &[f32; QK], w: &[f32; QK], b: &BlockQ4) -> f64 {
        let mut y = [0f32; QK];
        b.dequantize(&mut y);
        (0..QK)
            .map(|i| w[i] as f64 * ((x[i] - y[i]) as f64).powi(2))
            .sum()
    }

    #[test]
    fn simd_sums_equal_the_scalar_twins() {
        let mut rng = Rng::new(7);
        for case in 0..2000 {
            let scale = [1e-3, 0.02, 1.0, 300.0][case % 4];
            let x = match case % 50 {
                0 => [0.0; QK],
                1 => std::array::from_fn(|i| if i == 5 { scale } else { 0.0 }),
                // Values that land on half-way points of some candidates' grids.
                2 => std::array::from_fn(|i| (i as f32 - 16.0) * 0.5 * scale),
                _ => block(&mut rng, scale),
            };
            let w: [f32; QK] = if case % 3 == 0 {
                [1.0; QK]
            } else {
                std::array::from_fn(|_| 0.01 + rng.unit() * 5.0)
            };
            let wx: [f32; QK] = std::array::from_fn(|i| w[i] * x[i]);
            let max = x.iter().fold(scale, |m, v| m.max(v.abs()));
            let inv = divisors().map(|d| d / max);
            let (mut a1, mut b1, mut a2, mut b2) =
                ([0f32; GRID], [0f32; GRID], [1f32; GRID], [1f32; GRID]);
            candidate_sums(&x, &w, &wx, &inv, &mut a1, &mut b1);
            candidate_sums_scalar(&x, &w, &wx, &inv, &mut a2, &mut b2);
            for c in 0..GRID {
                assert_eq!(
                    a1[c].to_bits(),
                    a2[c].to_bits(),
                    "case {case}, candidate {c}"
                );
                assert_eq!(
                    b1[c].to_bits(),
                    b2[c].to_bits(),
                    "case {case}, candidate {c}"
                );
            }
        }
    }

    #[test]
    fn never_worse_than_plain_max_scale() {
        let mut rng = Rng::new(11);
        let ones = [1.0; QK];
        for _ in 0..2000 {
            let x = block(&mut rng, 0.05);
            let max = x
                .iter()
                .copied()
                .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let plain = BlockQ4 {
                d: f16::from_f32(max / -8.0),
                qs: {
                    let d = f16::from_f32(max / -8.0).to_f32();
                    let q: [u8; QK] =
                        std::array::from_fn(|i| ((x[i] / d).round() + 8.0).clamp(0.0, 15.0) as u8);
                    std::array::from_fn(|j| q[j] | (q[j + 16] << 4))
                },
            };
            let ours = quantize_block(&x, &ones);
            assert!(error(&x, &ones, &ours) <= error(&x, &ones, &plain) * (1.0 + 1e-5) + 1e-12);
        }
    }

    /// The search this replaces (every grid scale and its refit rounded to f16 and measured) is
    /// the library's `BlockQ4::quantize_weighted`; over many blocks ours is as good or better.
    #[test]
    fn as_good_as_the_exhaustive_search() {
        let mut rng = Rng::new(3);
        for weighted in [false, true] {
            let (mut ours, mut theirs) = (0f64, 0f64);
            for _ in 0..2000 {
                let x = block(&mut rng, 0.05);
                let w: [f32; QK] = if weighted {
                    std::array::from_fn(|_| 0.05 + rng.unit() * rng.unit() * 10.0)
                } else {
                    [1.0; QK]
                };
                ours += error(&x, &w, &quantize_block(&x, &w));
                theirs += error(&x, &w, &BlockQ4::quantize_weighted(&x, &w));
            }
            println!(
                "weighted {weighted}: ours / exhaustive = {:.4}",
                ours / theirs
            );
            assert!(
                ours <= theirs * 1.002,
                "weighted {weighted}: ours {ours} vs exhaustive {theirs}"
            );
        }
    }

    #[test]
    fn zero_tiny_and_huge_blocks_are_safe() {
        let ones = [1.0; QK];
        let mut y = [1f32; QK];
        quantize_block(&[0.0; QK], &ones).dequantize(&mut y);
        assert_eq!(y, [0.0; QK]);
        quantize_block(&[1e-30; QK], &ones).dequantize(&mut y);
        assert_eq!(y, [0.0; QK]);
        // Beyond f16's range the scale cannot be stored: the block is zero, never inf or NaN.
        let b = quantize_block(&[1e30; QK], &ones);
        b.dequantize(&mut y);
        assert!(y.iter().all(|v| v.is_finite()));
        // Weights at f16's edge still quantise to finite values.
        let x: [f32; QK] = std::array::from_fn(|i| (i as f32 - 16.0) * 30000.0);
        quantize_block(&x, &ones).dequantize(&mut y);
        assert!(y.iter().all(|v| v.is_finite()));
    }
}
