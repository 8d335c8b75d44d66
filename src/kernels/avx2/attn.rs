//! AVX2 + FMA + F16C attention tiles over the f16 KV cache: the scores of four queries against
//! two keys at a time (eight accumulators, reduced together into one vector), and the weighted
//! sums of value rows into four queries' outputs 16 values at a time, so each key and value row
//! is loaded and widened (`vcvtph2ps`) once per four queries instead of once per query. Twins of
//! [`scalar::scores_f16`](crate::kernels::scalar::scores_f16) and
//! [`scalar::weighted_sum_f16`](crate::kernels::scalar::weighted_sum_f16); the sums run in a
//! different order and the weighted sums fuse their multiply-adds, so results differ from the
//! per-query kernels by float rounding only.
//!
//! Causality as in the NEON twin (`neon/attn.rs`): positions every query of a group of four sees
//! are done together, the next three only for the queries that see them.

use std::arch::x86_64::*;

use half::f16;

use super::{f16_to_f32, hsum_ps};
use crate::kernels::CausalTile;

/// Queries that share each loaded key or value row.
const GROUP: usize = 4;

/// Attention scores of a tile of queries against f16 keys.
pub(super) fn scores_f16(keys: &[f16], q: &[f32], scale: f32, tile: &CausalTile, out: &mut [f32]) {
    tile.check_scores(keys.len(), q.len(), out.len());
    // SAFETY: only reachable through `avx2::ops()`'s table (CPU has AVX2, FMA, F16C);
    // `check_scores` verified that `keys` holds every position the tile reads, `q` every query
    // row and `out` every score row it writes.
    unsafe { scores_tile(keys.as_ptr(), q.as_ptr(), scale, tile, out.as_mut_ptr()) }
}

/// Weighted sums of f16 values for a tile of queries.
pub(super) fn weighted_sum_f16(
    values: &[f16],
    weights: &[f32],
    tile: &CausalTile,
    out: &mut [f32],
) {
    tile.check_weighted_sum(values.len(), weights.len(), out.len());
    let (v, w, o) = (values.as_ptr(), weights.as_ptr(), out.as_mut_ptr());
    let mut i0 = 0;
    while i0 < tile.queries {
        let group = (tile.queries - i0).min(GROUP);
        // SAFETY: only reachable through `avx2::ops()`'s table (CPU has AVX2, FMA, F16C);
        // `check_weighted_sum` verified that `values` holds every position the tile reads and
        // `weights`/`out` every row of queries `i0..i0+group`.
        unsafe {
            match group {
                4 => mix_group::<4>(v, w, tile, i0, o),
                3 => mix_group::<3>(v, w, tile, i0, o),
                2 => mix_group::<2>(v, w, tile, i0, o),
                _ => mix_group::<1>(v, w, tile, i0, o),
            }
        }
        i0 += group;
    }
}

// ---------------------------------------------------------------------------------------------
// Scores.

/// # Safety
/// The CPU must support AVX2, FMA and F16C; the tile's shape must have been checked against the
/// lengths behind `k`, `q` and `out` ([`CausalTile::check_scores`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_tile(k: *const f16, q: *const f32, scale: f32, t: &CausalTile, out: *mut f32) {
    let hd = t.head_dim;
    let vscale = _mm256_set1_ps(scale);
    let mut i0 = 0;
    while i0 + GROUP <= t.queries {
        let mut qs = [q; GROUP];
        let mut os = [out; GROUP];
        for j in 0..GROUP {
            qs[j] = q.add((i0 + j) * t.q_stride);
            os[j] = out.add((i0 + j) * t.score_stride);
        }
        let common = t.len(i0);
        let mut p = 0;
        while p + 2 <= common {
            // Lanes 2j, 2j + 1: query j against keys p, p + 1.
            let s = _mm256_mul_ps(dot_4x2(k.add(p * hd), qs, hd), vscale);
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
            for (j, o) in os.iter().enumerate() {
                *o.add(p) = lanes[2 * j];
                *o.add(p + 1) = lanes[2 * j + 1];
            }
            p += 2;
        }
        // The last position of the first query, then those only the later ones see.
        while p < common + GROUP - 1 {
            let s = dot_qx1::<GROUP>(k.add(p * hd), qs, hd);
            for j in 0..GROUP {
                if p < common + j {
                    *os[j].add(p) = s[j] * scale;
                }
            }
            p += 1;
        }
        i0 += GROUP;
    }
    for i in i0..t.queries {
        let (qi, o) = (q.add(i * t.q_stride), out.add(i * t.score_stride));
        for p in 0..t.len(i) {
            *o.add(p) = dot_qx1::<1>(k.add(p * hd), [qi], hd)[0] * scale;
        }
    }
}

/// Four queries against two consecutive key rows (`k`, rows of `hd`): lane `2i + j` is
/// `q_i · key_j`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `k` must hold two rows of `hd` f16 and each `q[i]`
/// `hd` floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_4x2(k: *const f16, q: [*const f32; 4], hd: usize) -> __m256 {
    // acc[2i + j]: query i, key j, eight partial sums each.
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut d = 0;
    while d + 8 <= hd {
        let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.add(d).cast()));
        let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.add(hd + d).cast()));
        for i in 0..4 {
            let qi = _mm256_loadu_ps(q[i].add(d));
            acc[2 * i] = _mm256_fmadd_ps(k0, qi, acc[2 * i]);
            acc[2 * i + 1] = _mm256_fmadd_ps(k1, qi, acc[2 * i + 1]);
        }
        d += 8;
    }
    // Eight horizontal sums at once: lane m of the result is the sum of acc[m].
    let h01 = _mm256_hadd_ps(acc[0], acc[1]);
    let h23 = _mm256_hadd_ps(acc[2], acc[3]);
    let h45 = _mm256_hadd_ps(acc[4], acc[5]);
    let h67 = _mm256_hadd_ps(acc[6], acc[7]);
    let (h0123, h4567) = (_mm256_hadd_ps(h01, h23), _mm256_hadd_ps(h45, h67));
    let sums = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(h0123, h4567),
        _mm256_permute2f128_ps::<0x31>(h0123, h4567),
    );
    if d == hd {
        return sums;
    }
    let mut tail = [0f32; 8];
    for (m, t) in tail.iter_mut().enumerate() {
        let (qi, kj) = (q[m / 2], k.add((m % 2) * hd));
        for e in d..hd {
            *t += f16_to_f32(*kj.add(e)) * *qi.add(e);
        }
    }
    _mm256_add_ps(sums, _mm256_loadu_ps(tail.as_ptr()))
}

/// `Q` queries against one key row: `[q_i · key]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `k` must hold `hd` f16 and each `q[i]` `hd` floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_qx1<const Q: usize>(k: *const f16, q: [*const f32; Q], hd: usize) -> [f32; Q] {
    let mut acc = [_mm256_setzero_ps(); Q];
    let mut d = 0;
    while d + 8 <= hd {
        let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.add(d).cast()));
        for (a, qi) in acc.iter_mut().zip(&q) {
            *a = _mm256_fmadd_ps(k0, _mm256_loadu_ps(qi.add(d)), *a);
        }
        d += 8;
    }
    let mut r = [0f32; Q];
    for ((ri, a), qi) in r.iter_mut().zip(&acc).zip(&q) {
        *ri = hsum_ps(*a);
        for e in d..hd {
            *ri += f16_to_f32(*k.add(e)) * *qi.add(e);
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Weighted sums.

/// Queries `i0..i0 + Q` of the tile: each output chunk of 16 (then 8, then 1) values is
/// accumulated in registers over every position, the value rows widened once for all `Q`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; the tile's shape must have been checked against the
/// lengths behind `v`, `w` and `out` ([`CausalTile::check_weighted_sum`]), and `i0 + Q ≤
/// queries`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mix_group<const Q: usize>(
    v: *const f16,
    w: *const f32,
    t: &CausalTile,
    i0: usize,
    out: *mut f32,
) {
    let hd = t.head_dim;
    let mut ws = [w; Q];
    let mut os = [out; Q];
    for j in 0..Q {
        ws[j] = w.add((i0 + j) * t.score_stride);
        os[j] = out.add((i0 + j) * t.out_stride);
    }
    let common = t.len(i0);
    let mut d = 0;
    while d + 16 <= hd {
        mix_chunk::<Q, 2>(v.add(d), hd, ws, common, os, d);
        d += 16;
    }
    while d + 8 <= hd {
        mix_chunk::<Q, 1>(v.add(d), hd, ws, common, os, d);
        d += 8;
    }
    for e in d..hd {
        for (j, (wj, oj)) in ws.iter().zip(&os).enumerate() {
            let mut s = 0f32;
            for p in 0..common + j {
                s += *wj.add(p) * f16_to_f32(*v.add(p * hd + e));
            }
            *oj.add(e) = s;
        }
    }
}

/// `8 · N` output values at `d` of each of `Q` queries: `Σ_p w_j[p] · v[p]` over the positions
/// query `j` sees (`common + j`), with `v` pointing at column `d` of row 0.
///
/// # Safety
/// As [`mix_group`]; `d + 8·N ≤ hd`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mix_chunk<const Q: usize, const N: usize>(
    v: *const f16,
    hd: usize,
    ws: [*const f32; Q],
    common: usize,
    os: [*mut f32; Q],
    d: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); N]; Q];
    for p in 0..common {
        let x = load_values::<N>(v.add(p * hd));
        for (a, wj) in acc.iter_mut().zip(&ws) {
            let s = _mm256_broadcast_ss(&*wj.add(p));
            for (ak, xk) in a.iter_mut().zip(&x) {
                *ak = _mm256_fmadd_ps(*xk, s, *ak);
            }
        }
    }
    // Positions only the later queries see.
    for p in common..common + Q - 1 {
        let x = load_values::<N>(v.add(p * hd));
        for (j, (a, wj)) in acc.iter_mut().zip(&ws).enumerate() {
            if p < common + j {
                let s = _mm256_broadcast_ss(&*wj.add(p));
                for (ak, xk) in a.iter_mut().zip(&x) {
                    *ak = _mm256_fmadd_ps(*xk, s, *ak);
                }
            }
        }
    }
    for (a, oj) in acc.iter().zip(&os) {
        for (k, ak) in a.iter().enumerate() {
            _mm256_storeu_ps(oj.add(d + 8 * k), *ak);
        }
    }
}

/// `8 · N` f16 values at `row`, widened.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `row` must hold `8 · N` f16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_values<const N: usize>(row: *const f16) -> [__m256; N] {
    let mut x = [_mm256_setzero_ps(); N];
    for (k, xk) in x.iter_mut().enumerate() {
        *xk = _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * k).cast()));
    }
    x
}
