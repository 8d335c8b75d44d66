//! NEON attention tiles over the f16 KV cache: the scores of eight queries against four keys at
//! a time (four queries for heads wider than 128 and for a tile's last few queries), and the
//! weighted sums of value rows into four queries' outputs 16 values at a time, so each key row is
//! loaded and widened (`fcvtl`) once per eight queries and each value row once per four, instead
//! of once per query. Twins of [`scalar::scores_f16`](crate::kernels::scalar::scores_f16) and
//! [`scalar::weighted_sum_f16`](crate::kernels::scalar::weighted_sum_f16); the sums run in a
//! different order, the eight-query scores scale the queries first and the weighted sums fuse
//! their multiply-adds, so results differ from the per-query kernels by float rounding only.
//!
//! Causality: the queries of a group see `common`, `common + 1`, … positions. Positions below
//! `common` are done for the whole group together; the rest only for the queries that see them
//! (no product of a query with a position it does not see is ever added, so a NaN there cannot
//! reach it).

use std::arch::aarch64::*;

use half::f16;

use super::{f16_to_f32, f16x4_to_f32, f16x8_high_to_f32};
use crate::kernels::CausalTile;

/// Queries that share each loaded key or value row.
const GROUP: usize = 4;

/// Attention scores of a tile of queries against f16 keys.
pub(super) fn scores_f16(keys: &[f16], q: &[f32], scale: f32, tile: &CausalTile, out: &mut [f32]) {
    tile.check_scores(keys.len(), q.len(), out.len());
    // SAFETY: NEON is baseline on aarch64; `check_scores` verified that `keys` holds every
    // position the tile reads, `q` every query row and `out` every score row it writes.
    unsafe {
        scores_tile(
            keys.as_ptr().cast(),
            q.as_ptr(),
            scale,
            tile,
            out.as_mut_ptr(),
        )
    }
}

/// Weighted sums of f16 values for a tile of queries.
pub(super) fn weighted_sum_f16(
    values: &[f16],
    weights: &[f32],
    tile: &CausalTile,
    out: &mut [f32],
) {
    tile.check_weighted_sum(values.len(), weights.len(), out.len());
    let (v, w, o) = (
        values.as_ptr().cast::<u16>(),
        weights.as_ptr(),
        out.as_mut_ptr(),
    );
    let mut i0 = 0;
    while i0 < tile.queries {
        let group = (tile.queries - i0).min(GROUP);
        // SAFETY: NEON is baseline on aarch64; `check_weighted_sum` verified that `values` holds
        // every position the tile reads and `weights`/`out` every row of queries `i0..i0+group`.
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
/// NEON must be available; the tile's shape must have been checked against the lengths behind
/// `k` (f16 bits), `q` and `out` ([`CausalTile::check_scores`]).
#[target_feature(enable = "neon")]
unsafe fn scores_tile(k: *const u16, q: *const f32, scale: f32, t: &CausalTile, out: *mut f32) {
    let hd = t.head_dim;
    let mut i0 = 0;
    if hd <= WIDE_MAX_HEAD_DIM {
        while i0 + WIDE <= t.queries {
            scores_wide(k, q, scale, t, i0, out);
            i0 += WIDE;
        }
    }
    while i0 + GROUP <= t.queries {
        let mut qs = [q; GROUP];
        let mut os = [out; GROUP];
        for j in 0..GROUP {
            qs[j] = q.add((i0 + j) * t.q_stride);
            os[j] = out.add((i0 + j) * t.score_stride);
        }
        let common = t.len(i0);
        let mut p = 0;
        while p + 4 <= common {
            let s = dot_4x4(k.add(p * hd), qs, hd);
            for j in 0..GROUP {
                vst1q_f32(os[j].add(p), vmulq_n_f32(s[j], scale));
            }
            p += 4;
        }
        // The last positions of the first query, then those only the later ones see: a whole
        // block (writing only the pairs that are seen) where at least three positions are left
        // and the keys exist (it costs about three single positions), then one by one.
        let end = common + GROUP - 1;
        while p + 3 <= end && p + 4 <= t.positions() {
            let s = dot_4x4(k.add(p * hd), qs, hd);
            let mut block = [[0f32; 4]; GROUP];
            for (b, sj) in block.iter_mut().zip(s) {
                vst1q_f32(b.as_mut_ptr(), vmulq_n_f32(sj, scale));
            }
            for (j, b) in block.iter().enumerate() {
                for (m, &v) in b.iter().enumerate() {
                    if p + m < common + j {
                        *os[j].add(p + m) = v;
                    }
                }
            }
            p += 4;
        }
        while p < end {
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

/// Queries that share each widened key row in [`scores_wide`].
const WIDE: usize = 8;
/// The widest head [`scores_wide`] takes (its transposed queries live on the stack: 4 KiB).
const WIDE_MAX_HEAD_DIM: usize = 128;

/// Scores of queries `i0..i0 + 8` of the tile. Their values are first laid out transposed and
/// scaled, `qt[2d]` = element `d` of queries 0–3 and `qt[2d + 1]` of queries 4–7, so that each
/// key element multiplies eight queries by lane (`fmla` by element): a key row is widened once
/// for eight queries, and the sums need no horizontal reduction, only a 4 × 4 transpose per block
/// of four keys.
///
/// # Safety
/// As [`scores_tile`]; `i0 + 8 ≤ queries` and `head_dim ≤ WIDE_MAX_HEAD_DIM`.
#[inline(always)]
unsafe fn scores_wide(
    k: *const u16,
    q: *const f32,
    scale: f32,
    t: &CausalTile,
    i0: usize,
    out: *mut f32,
) {
    let hd = t.head_dim;
    let mut qs = [q; WIDE];
    let mut os = [out; WIDE];
    for j in 0..WIDE {
        qs[j] = q.add((i0 + j) * t.q_stride);
        os[j] = out.add((i0 + j) * t.score_stride);
    }
    let mut qt = std::mem::MaybeUninit::<[float32x4_t; 2 * WIDE_MAX_HEAD_DIM]>::uninit();
    let qt = qt.as_mut_ptr().cast::<float32x4_t>();
    transpose_queries(qs, scale, hd, qt);
    let common = t.len(i0);
    let end = common + WIDE - 1;
    let mut p = 0;
    while p + 4 <= common {
        let [lo, hi] = wide_block(k.add(p * hd), qt, hd);
        for (j, r) in lo.iter().chain(&hi).enumerate() {
            vst1q_f32(os[j].add(p), *r);
        }
        p += 4;
    }
    // The positions only the later queries see: whole blocks while the keys exist, writing only
    // the pairs that are seen, then one at a time.
    while p < end && p + 4 <= t.positions() {
        let [lo, hi] = wide_block(k.add(p * hd), qt, hd);
        let mut block = [[0f32; 4]; WIDE];
        for (b, r) in block.iter_mut().zip(lo.iter().chain(&hi)) {
            vst1q_f32(b.as_mut_ptr(), *r);
        }
        for (j, b) in block.iter().enumerate() {
            for (m, &v) in b.iter().enumerate() {
                if p + m < common + j {
                    *os[j].add(p + m) = v;
                }
            }
        }
        p += 4;
    }
    while p < end {
        let s = dot_qx1::<WIDE>(k.add(p * hd), qs, hd);
        for j in 0..WIDE {
            if p < common + j {
                *os[j].add(p) = s[j] * scale;
            }
        }
        p += 1;
    }
}

/// Writes `scale · q` of eight queries transposed into `qt` (`2 · hd` vectors): `qt[2d]` holds
/// element `d` of queries 0–3, `qt[2d + 1]` of queries 4–7.
///
/// # Safety
/// NEON must be available; each `q[j]` must hold `hd` floats and `qt` room for `2 · hd` vectors.
#[inline(always)]
unsafe fn transpose_queries(q: [*const f32; WIDE], scale: f32, hd: usize, qt: *mut float32x4_t) {
    let mut d = 0;
    while d + 4 <= hd {
        for half in 0..2 {
            let mut rows = [vdupq_n_f32(0.0); 4];
            for (r, qj) in rows.iter_mut().zip(&q[4 * half..4 * half + 4]) {
                *r = vmulq_n_f32(vld1q_f32(qj.add(d)), scale);
            }
            for (m, c) in transpose4(rows).into_iter().enumerate() {
                *qt.add(2 * (d + m) + half) = c;
            }
        }
        d += 4;
    }
    for e in d..hd {
        for half in 0..2 {
            let mut lanes = [0f32; 4];
            for (l, qj) in lanes.iter_mut().zip(&q[4 * half..4 * half + 4]) {
                *l = *qj.add(e) * scale;
            }
            *qt.add(2 * e + half) = vld1q_f32(lanes.as_ptr());
        }
    }
}

/// The 4 × 4 transpose: lane `j` of result `i` is lane `i` of `r[j]`.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn transpose4(r: [float32x4_t; 4]) -> [float32x4_t; 4] {
    let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1]));
    let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1]));
    let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
    let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
    [
        vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)),
        vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)),
        vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
        vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
    ]
}

/// Eight queries (transposed and scaled in `qt`) against four consecutive key rows: result
/// `[lo, hi]`, `lo[i]` the four keys' scores of query `i`, `hi[i]` of query `4 + i`.
///
/// # Safety
/// NEON must be available; `k` must hold four rows of `hd` f16 bits and `qt` `2 · hd` vectors.
#[inline(always)]
unsafe fn wide_block(k: *const u16, qt: *const float32x4_t, hd: usize) -> [[float32x4_t; 4]; 2] {
    // acc[j]: key j, [queries 0–3, queries 4–7].
    let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
    let mut d = 0;
    while d + 8 <= hd {
        let mut lo = [vdupq_n_f32(0.0); 4];
        let mut hi = [vdupq_n_f32(0.0); 4];
        for j in 0..4 {
            let h = vld1q_u16(k.add(j * hd + d));
            lo[j] = f16x4_to_f32(vget_low_u16(h));
            hi[j] = f16x8_high_to_f32(h);
        }
        wide_dims(&mut acc, qt.add(2 * d), &lo);
        wide_dims(&mut acc, qt.add(2 * (d + 4)), &hi);
        d += 8;
    }
    if d + 4 <= hd {
        let mut kf = [vdupq_n_f32(0.0); 4];
        for (j, kj) in kf.iter_mut().enumerate() {
            *kj = f16x4_to_f32(vld1_u16(k.add(j * hd + d)));
        }
        wide_dims(&mut acc, qt.add(2 * d), &kf);
        d += 4;
    }
    for e in d..hd {
        let (qa, qb) = (*qt.add(2 * e), *qt.add(2 * e + 1));
        for (j, a) in acc.iter_mut().enumerate() {
            let kv = f16_to_f32(*k.add(j * hd + e));
            a[0] = vfmaq_n_f32(a[0], qa, kv);
            a[1] = vfmaq_n_f32(a[1], qb, kv);
        }
    }
    [
        transpose4([acc[0][0], acc[1][0], acc[2][0], acc[3][0]]),
        transpose4([acc[0][1], acc[1][1], acc[2][1], acc[3][1]]),
    ]
}

/// Four dimensions (`qt` at the first, `kf[j]` the four key elements of key `j`) into the sums.
///
/// # Safety
/// NEON must be available; `qt` must hold eight vectors.
#[inline(always)]
unsafe fn wide_dims(
    acc: &mut [[float32x4_t; 2]; 4],
    qt: *const float32x4_t,
    kf: &[float32x4_t; 4],
) {
    wide_dim::<0>(acc, qt, kf);
    wide_dim::<1>(acc, qt.add(2), kf);
    wide_dim::<2>(acc, qt.add(4), kf);
    wide_dim::<3>(acc, qt.add(6), kf);
}

/// One dimension: lane `L` of each key's vector times the eight queries' element.
///
/// # Safety
/// NEON must be available; `qt` must hold two vectors.
#[inline(always)]
unsafe fn wide_dim<const L: i32>(
    acc: &mut [[float32x4_t; 2]; 4],
    qt: *const float32x4_t,
    kf: &[float32x4_t; 4],
) {
    let (qa, qb) = (*qt, *qt.add(1));
    for (a, kj) in acc.iter_mut().zip(kf) {
        a[0] = vfmaq_laneq_f32::<L>(a[0], qa, *kj);
        a[1] = vfmaq_laneq_f32::<L>(a[1], qb, *kj);
    }
}

/// Four queries against four consecutive key rows (`k`, rows of `hd`): lane `j` of result `i`
/// is `q_i · key_j`.
///
/// # Safety
/// NEON must be available; `k` must hold four rows of `hd` f16 bits and each `q[i]` `hd` floats.
#[inline(always)]
unsafe fn dot_4x4(k: *const u16, q: [*const f32; 4], hd: usize) -> [float32x4_t; 4] {
    // acc[i][j]: query i, key j, four partial sums each.
    let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
    let mut d = 0;
    // Two steps per iteration: the loop's bookkeeping is then a tenth of the instructions.
    while d + 16 <= hd {
        step_4x4(&mut acc, k, q, hd, d);
        step_4x4(&mut acc, k, q, hd, d + 8);
        d += 16;
    }
    if d + 8 <= hd {
        step_4x4(&mut acc, k, q, hd, d);
        d += 8;
    }
    if d + 4 <= hd {
        let mut kf = [vdupq_n_f32(0.0); 4];
        for (j, kj) in kf.iter_mut().enumerate() {
            *kj = f16x4_to_f32(vld1_u16(k.add(j * hd + d)));
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let q0 = vld1q_f32(q[i].add(d));
            for (a, kj) in acc_i.iter_mut().zip(&kf) {
                *a = vfmaq_f32(*a, *kj, q0);
            }
        }
        d += 4;
    }
    let mut r = [vdupq_n_f32(0.0); 4];
    for (ri, a) in r.iter_mut().zip(&acc) {
        // Pairwise: [k0, k0, k1, k1] halves, then [k0, k1, k2, k3].
        *ri = vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3]));
    }
    if d < hd {
        for (i, ri) in r.iter_mut().enumerate() {
            let mut tail = [0f32; 4];
            for (j, t) in tail.iter_mut().enumerate() {
                for e in d..hd {
                    *t += f16_to_f32(*k.add(j * hd + e)) * *q[i].add(e);
                }
            }
            *ri = vaddq_f32(*ri, vld1q_f32(tail.as_ptr()));
        }
    }
    r
}

/// Values `d..d + 8` of four keys into the sums of four queries.
///
/// # Safety
/// As [`dot_4x4`]; `d + 8 ≤ hd`.
#[inline(always)]
unsafe fn step_4x4(
    acc: &mut [[float32x4_t; 4]; 4],
    k: *const u16,
    q: [*const f32; 4],
    hd: usize,
    d: usize,
) {
    let mut kf = [[vdupq_n_f32(0.0); 2]; 4];
    for (j, kj) in kf.iter_mut().enumerate() {
        let h = vld1q_u16(k.add(j * hd + d));
        *kj = [f16x4_to_f32(vget_low_u16(h)), f16x8_high_to_f32(h)];
    }
    for (i, acc_i) in acc.iter_mut().enumerate() {
        let (q0, q1) = (vld1q_f32(q[i].add(d)), vld1q_f32(q[i].add(d + 4)));
        for (a, kj) in acc_i.iter_mut().zip(&kf) {
            *a = vfmaq_f32(vfmaq_f32(*a, kj[0], q0), kj[1], q1);
        }
    }
}

/// `Q` queries against one key row: `[q_i · key]`.
///
/// # Safety
/// NEON must be available; `k` must hold `hd` f16 bits and each `q[i]` `hd` floats.
#[inline(always)]
unsafe fn dot_qx1<const Q: usize>(k: *const u16, q: [*const f32; Q], hd: usize) -> [f32; Q] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; Q];
    let mut d = 0;
    while d + 8 <= hd {
        let h = vld1q_u16(k.add(d));
        let (k0, k1) = (f16x4_to_f32(vget_low_u16(h)), f16x8_high_to_f32(h));
        for (a, qi) in acc.iter_mut().zip(&q) {
            a[0] = vfmaq_f32(a[0], k0, vld1q_f32(qi.add(d)));
            a[1] = vfmaq_f32(a[1], k1, vld1q_f32(qi.add(d + 4)));
        }
        d += 8;
    }
    if d + 4 <= hd {
        let k0 = f16x4_to_f32(vld1_u16(k.add(d)));
        for (a, qi) in acc.iter_mut().zip(&q) {
            a[0] = vfmaq_f32(a[0], k0, vld1q_f32(qi.add(d)));
        }
        d += 4;
    }
    let mut r = [0f32; Q];
    for ((ri, a), qi) in r.iter_mut().zip(&acc).zip(&q) {
        *ri = vaddvq_f32(vaddq_f32(a[0], a[1]));
        for e in d..hd {
            *ri += f16_to_f32(*k.add(e)) * *qi.add(e);
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Weighted sums.

/// Queries `i0..i0 + Q` of the tile: each output chunk of 16 (then 4, then 1) values is
/// accumulated in registers over every position, the value rows widened once for all `Q`.
///
/// # Safety
/// NEON must be available; the tile's shape must have been checked against the lengths behind
/// `v` (f16 bits), `w` and `out` ([`CausalTile::check_weighted_sum`]), and `i0 + Q ≤ queries`.
#[target_feature(enable = "neon")]
unsafe fn mix_group<const Q: usize>(
    v: *const u16,
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
        mix_chunk::<Q, 4>(v.add(d), hd, ws, common, os, d);
        d += 16;
    }
    while d + 4 <= hd {
        mix_chunk::<Q, 1>(v.add(d), hd, ws, common, os, d);
        d += 4;
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

/// `4 · N` output values at `d` of each of `Q` queries: `Σ_p w_j[p] · v[p]` over the positions
/// query `j` sees (`common + j`), with `v` pointing at column `d` of row 0.
///
/// # Safety
/// As [`mix_group`]; `d + 4·N ≤ hd`.
#[inline(always)]
unsafe fn mix_chunk<const Q: usize, const N: usize>(
    v: *const u16,
    hd: usize,
    ws: [*const f32; Q],
    common: usize,
    os: [*mut f32; Q],
    d: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); N]; Q];
    // Four positions at a time: each query's four weights in one vector, one lane per row.
    let mut p = 0;
    while p + 4 <= common {
        let mut wv = [vdupq_n_f32(0.0); Q];
        for (wvj, wj) in wv.iter_mut().zip(&ws) {
            *wvj = vld1q_f32(wj.add(p));
        }
        let row = v.add(p * hd);
        mix_row::<Q, N, 0>(&mut acc, load_values::<N>(row), &wv);
        mix_row::<Q, N, 1>(&mut acc, load_values::<N>(row.add(hd)), &wv);
        mix_row::<Q, N, 2>(&mut acc, load_values::<N>(row.add(2 * hd)), &wv);
        mix_row::<Q, N, 3>(&mut acc, load_values::<N>(row.add(3 * hd)), &wv);
        p += 4;
    }
    for p in p..common {
        let x = load_values::<N>(v.add(p * hd));
        for (a, wj) in acc.iter_mut().zip(&ws) {
            let s = *wj.add(p);
            for (ak, xk) in a.iter_mut().zip(&x) {
                *ak = vfmaq_n_f32(*ak, *xk, s);
            }
        }
    }
    // Positions only the later queries see.
    for p in common..common + Q - 1 {
        let x = load_values::<N>(v.add(p * hd));
        for (j, (a, wj)) in acc.iter_mut().zip(&ws).enumerate() {
            if p < common + j {
                let s = *wj.add(p);
                for (ak, xk) in a.iter_mut().zip(&x) {
                    *ak = vfmaq_n_f32(*ak, *xk, s);
                }
            }
        }
    }
    for (a, oj) in acc.iter().zip(&os) {
        for (k, ak) in a.iter().enumerate() {
            vst1q_f32(oj.add(d + 4 * k), *ak);
        }
    }
}

/// `acc[j] += w[j][L] · x` for each query `j`: one value row with its weights in lane `L`.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn mix_row<const Q: usize, const N: usize, const L: i32>(
    acc: &mut [[float32x4_t; N]; Q],
    x: [float32x4_t; N],
    w: &[float32x4_t; Q],
) {
    for (a, wj) in acc.iter_mut().zip(w) {
        for (ak, xk) in a.iter_mut().zip(&x) {
            *ak = vfmaq_laneq_f32::<L>(*ak, *xk, *wj);
        }
    }
}

/// `4 · N` f16 values at `row`, widened.
///
/// # Safety
/// NEON must be available; `row` must hold `4 · N` f16 bits.
#[inline(always)]
unsafe fn load_values<const N: usize>(row: *const u16) -> [float32x4_t; N] {
    let mut x = [vdupq_n_f32(0.0); N];
    if N % 2 == 0 {
        for k in 0..N / 2 {
            let h = vld1q_u16(row.add(8 * k));
            x[2 * k] = f16x4_to_f32(vget_low_u16(h));
            x[2 * k + 1] = f16x8_high_to_f32(h);
        }
    } else {
        for (k, xk) in x.iter_mut().enumerate() {
            *xk = f16x4_to_f32(vld1_u16(row.add(4 * k)));
        }
    }
    x
}
