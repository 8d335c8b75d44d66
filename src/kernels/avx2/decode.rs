//! The q4 matrix–vector product of a decode step, with the activation prepared once per product.
//!
//! The one-row q4 kernel spends a third of its integer work on the `−8` offset (`8 · Σ q_x`, by
//! `maddubs`, per block and row) and two permutes per pair of blocks on rearranging the
//! activation to meet the nibbles. Both depend only on the activation, which every row of a
//! matrix shares: here they are done once per matrix product ([`prepare`], into the session's
//! scratch), and every row task reads them. For each pair of blocks the activation is
//! stored as `[x0 0..16 | x1 0..16]` and `[x0 16..32 | x1 16..32]`, so a pair costs two loads,
//! the nibble split, two `maddubs` and a `madd`; the offset becomes one f32 term per block,
//! `8 · d_x · Σ q_x`, summed against the row's scales four blocks at a time.
//!
//! Integer block sums are exact; the offset is subtracted in f32, so results differ from the
//! scalar twin by rounding only.

use std::arch::x86_64::*;

use super::{
    f16_to_f32, fma_scaled, hsum_ps, lanes_01, lanes_23, load_act, prefetch_ahead, q4_block_lanes,
    q4_pair_codes, quad_w_scales,
};
use crate::kernels::{lanes_f32, lanes_f32_mut, PrepLane};
use crate::quant::{BlockQ4, BlockQ8Act};

/// One token's activation arranged for [`dot`], in the lanes [`prepare`] filled: for each pair
/// of blocks two vectors, the low halves of both blocks then the high halves; `d_x` per block;
/// and `8 · d_x · Σ q_x` per block, the offset's share of the block's dot before `d_w`.
struct Prepared<'a> {
    halves: &'a [PrepLane],
    d: &'a [f32],
    offset: &'a [f32],
}

/// Lanes of the three regions for `nb` blocks: halves, then `d`, then the offsets.
fn regions(nb: usize) -> (usize, usize) {
    (nb / 2 * 2, nb.div_ceil(8))
}

impl<'a> Prepared<'a> {
    /// The regions of `prep` for `nb` blocks (panics if `prep` is too short).
    fn view(prep: &'a [PrepLane], nb: usize) -> Self {
        let (halves, scalars) = regions(nb);
        let (h, rest) = prep.split_at(halves);
        let (d, offset) = rest.split_at(scalars);
        Prepared {
            halves: h,
            d: &lanes_f32(d)[..nb],
            offset: &lanes_f32(&offset[..scalars])[..nb],
        }
    }

    /// Vector `i` of the halves.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn half(&self, i: usize) -> __m256i {
        // Reads exactly one lane: 32 bytes, 32-byte aligned.
        _mm256_load_si256(std::ptr::from_ref(&self.halves[i]).cast())
    }
}

/// `out[r]` = row `r` of `w` (rows of `nb` blocks) · the token `x` (`nb` blocks), which
/// [`prepare`] laid out in `prep`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == out.len() · nb`, `x.len() == nb`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_q4(
    w: &[BlockQ4],
    x: &[BlockQ8Act],
    prep: &[PrepLane],
    nb: usize,
    out: &mut [f32],
) {
    let p = Prepared::view(prep, nb);
    for (r, y) in out.iter_mut().enumerate() {
        *y = dot(&w[r * nb..(r + 1) * nb], x, &p);
    }
}

/// Lays out the token `x` in `prep` for [`matmul_q4`] (panics if `prep` is too short).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prepare(x: &[BlockQ8Act], prep: &mut [PrepLane]) {
    let nb = x.len();
    let (halves, scalars) = regions(nb);
    let (h, rest) = prep.split_at_mut(halves);
    let (d, offset) = rest.split_at_mut(scalars);
    for (pair, out) in x.chunks_exact(2).zip(h.chunks_exact_mut(2)) {
        let (x0, x1) = (load_act(&pair[0]), load_act(&pair[1]));
        // Writes exactly one lane each: 32 bytes, 32-byte aligned.
        _mm256_store_si256(
            std::ptr::from_mut(&mut out[0]).cast(),
            _mm256_permute2x128_si256::<0x20>(x0, x1),
        );
        _mm256_store_si256(
            std::ptr::from_mut(&mut out[1]).cast(),
            _mm256_permute2x128_si256::<0x31>(x0, x1),
        );
    }
    for (dst, b) in lanes_f32_mut(d).iter_mut().zip(x) {
        *dst = b.d;
    }
    let (eights, ones) = (_mm256_set1_epi8(8), _mm256_set1_epi16(1));
    for (dst, b) in lanes_f32_mut(&mut offset[..scalars]).iter_mut().zip(x) {
        // 8 · Σ q_x exactly: pairs ≤ 2 · 8 · 128 in i16, then i32 lanes.
        let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(eights, load_act(b)), ones);
        *dst = b.d * hsum_ps(_mm256_cvtepi32_ps(lanes));
    }
}

/// Two blocks' `Σ q · x` (codes `0..=15`, no offset) against their prepared halves: lanes 0..4
/// (i32) sum to block 0's, lanes 4..8 to block 1's.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn pair_lanes(w: &[BlockQ4], lo: __m256i, hi: __m256i) -> __m256i {
    let (codes_lo, codes_hi) = q4_pair_codes(w);
    // i16 pairs: 2 · 2 · 15 · 128 at most, no overflow.
    let pairs = _mm256_add_epi16(
        _mm256_maddubs_epi16(codes_lo, lo),
        _mm256_maddubs_epi16(codes_hi, hi),
    );
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Row `w` · the prepared token: four blocks per iteration, then the remaining 0..=3 with the
/// one-row kernel's block function.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (it is inlined into callers compiled for them).
#[inline(always)]
unsafe fn dot(w: &[BlockQ4], x: &[BlockQ8Act], p: &Prepared<'_>) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut offset = _mm_setzero_ps();
    let quads = w.len() / 4;
    for q in 0..quads {
        let w4 = &w[4 * q..4 * q + 4];
        prefetch_ahead(w4);
        let dw = quad_w_scales(w4);
        // Reads exactly 4 floats of `p.d` and of `p.offset` from block 4q.
        let d = _mm_mul_ps(dw, _mm_loadu_ps(p.d[4 * q..4 * q + 4].as_ptr()));
        offset = _mm_fmadd_ps(
            dw,
            _mm_loadu_ps(p.offset[4 * q..4 * q + 4].as_ptr()),
            offset,
        );
        let (h0, h1) = (p.half(4 * q), p.half(4 * q + 1));
        let (h2, h3) = (p.half(4 * q + 2), p.half(4 * q + 3));
        acc0 = fma_scaled(acc0, lanes_01(d), pair_lanes(&w4[..2], h0, h1));
        acc1 = fma_scaled(acc1, lanes_23(d), pair_lanes(&w4[2..], h2, h3));
    }
    for (bw, bx) in w[4 * quads..].iter().zip(&x[4 * quads..]) {
        // The one-row kernel's block function, offset included.
        let d = _mm256_set1_ps(f16_to_f32(bw.d) * bx.d);
        acc0 = fma_scaled(acc0, d, q4_block_lanes(bw, bx));
    }
    let offset = _mm_add_ps(offset, _mm_movehl_ps(offset, offset));
    let offset = _mm_add_ss(offset, _mm_movehdup_ps(offset));
    hsum_ps(_mm256_add_ps(acc0, acc1)) - _mm_cvtss_f32(offset)
}
