//! The attention key/value cache: a fixed-size store of every past position's keys and values.
//!
//! Allocated once per session for `capacity` positions and never grown. Layout is
//! `[layer][head][position][head_dim]`, so the attention of one head reads one contiguous block.
//! Elements are stored as f32, f16 or q8 ([`KvType`]); the cache also does the two products
//! attention needs against its rows ([`KvCache::scores`], [`KvCache::weighted_sum`], and their
//! tile forms for several consecutive queries), so no caller ever needs a dequantised copy. It
//! owns storage and indexing only; which positions are kept when it fills is the generation
//! loop's business (see [`crate::generate`]).

use std::fmt;
use std::str::FromStr;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::{self, CausalTile};

/// How the cache stores each key and value element.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per element, exact.
    F32,
    /// 2 bytes per element (IEEE half precision). The default: on the tiny model its held-out
    /// perplexity is within 0.0001% of f32 (see the README's "Memory" section).
    #[default]
    F16,
    /// 1 byte per element plus one f32 scale per row (one head at one position):
    /// `x ≈ scale · q`, `scale = max|x| / 127`, `q` in `-127..=127`.
    Q8,
}

impl KvType {
    /// Every type, smallest storage last.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8];

    /// The name used on the command line: `f32`, `f16` or `q8`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }

    /// Bytes one row of `head_dim` elements takes (the q8 scale included).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvType::F32 => 4 * head_dim,
            KvType::F16 => 2 * head_dim,
            KvType::Q8 => head_dim + 4,
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            "q8" => Ok(KvType::Q8),
            _ => Err(Error::invalid(format!(
                "KV cache type {s:?}: expected f32, f16 or q8"
            ))),
        }
    }
}

/// One of the two tensors (keys or values), in its element type.
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Quantised elements and one scale per row.
    Q8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
}

impl Store {
    fn new(kind: KvType, len: usize, rows: usize) -> Self {
        match kind {
            KvType::F32 => Store::F32(vec![0.0; len]),
            KvType::F16 => Store::F16(vec![f16::ZERO; len]),
            KvType::Q8 => Store::Q8 {
                q: vec![0; len],
                scale: vec![0.0; rows],
            },
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Store::F32(v) => std::mem::size_of_val(v.as_slice()),
            Store::F16(v) => std::mem::size_of_val(v.as_slice()),
            Store::Q8 { q, scale } => q.len() + std::mem::size_of_val(scale.as_slice()),
        }
    }

    /// Writes `x` as row `row` (elements `row*hd..`).
    fn put(&mut self, row: usize, hd: usize, x: &[f32]) {
        let o = row * hd;
        match self {
            Store::F32(v) => v[o..o + hd].copy_from_slice(x),
            // `half`'s slice conversion takes four or eight values per instruction where the
            // CPU has one for it (F16C, aarch64 FP16), rounding as `f16::from_f32` does.
            Store::F16(v) => v[o..o + hd].convert_from_f32_slice(x),
            Store::Q8 { q, scale } => put_q8(&mut q[o..o + hd], &mut scale[row], x),
        }
    }

    /// Writes positions `pos..pos + n` of `heads` consecutive heads whose rows start at row
    /// `first` (`capacity` rows a head), the heads in parallel; `x(h, t)` is head `h`'s row for
    /// position `pos + t`.
    fn put_heads<'x>(
        &mut self,
        (first, heads, capacity): (usize, usize, usize),
        (pos, n, hd): (usize, usize, usize),
        x: impl Fn(usize, usize) -> &'x [f32] + Sync,
    ) {
        let (rows, elems) = (first..first + heads * capacity, capacity * hd);
        let span = rows.start * hd..rows.end * hd;
        let row = |t: usize| (pos + t) * hd..(pos + t + 1) * hd;
        match self {
            Store::F32(v) => v[span]
                .par_chunks_mut(elems)
                .enumerate()
                .for_each(|(h, v)| {
                    (0..n).for_each(|t| v[row(t)].copy_from_slice(x(h, t)));
                }),
            Store::F16(v) => v[span]
                .par_chunks_mut(elems)
                .enumerate()
                .for_each(|(h, v)| {
                    (0..n).for_each(|t| v[row(t)].convert_from_f32_slice(x(h, t)));
                }),
            Store::Q8 { q, scale } => q[span]
                .par_chunks_mut(elems)
                .zip(scale[rows].par_chunks_mut(capacity))
                .enumerate()
                .for_each(|(h, (q, scale))| {
                    (0..n).for_each(|t| put_q8(&mut q[row(t)], &mut scale[pos + t], x(h, t)));
                }),
        }
    }
}

/// `x` quantised into `q` with its scale (see [`KvType::Q8`]).
fn put_q8(q: &mut [i8], scale: &mut f32, x: &[f32]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (dst, &s) in q.iter_mut().zip(x) {
        *dst = (s * inv).round().clamp(-127.0, 127.0) as i8;
    }
    *scale = d;
}

/// Positions from which [`KvCache::store_batch`] stores the heads in parallel: fewer (a decode
/// step's one) are not worth the tasks.
pub const PARALLEL_MIN_POSITIONS: usize = 8;

/// Keys and values for every layer, head and cached position.
pub struct KvCache {
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
    capacity: usize,
    kind: KvType,
    keys: Store,
    values: Store,
}

impl KvCache {
    /// Allocates a zeroed f32 cache for `capacity` positions.
    pub fn new(n_layer: usize, n_head: usize, head_dim: usize, capacity: usize) -> Result<Self> {
        Self::with_type(n_layer, n_head, head_dim, capacity, KvType::F32)
    }

    /// Allocates a zeroed cache for `capacity` positions storing elements as `kind`.
    pub fn with_type(
        n_layer: usize,
        n_head: usize,
        head_dim: usize,
        capacity: usize,
        kind: KvType,
    ) -> Result<Self> {
        let rows = Self::rows(n_layer, n_head, capacity)?;
        let len = rows
            .checked_mul(head_dim)
            .ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        Ok(KvCache {
            n_layer,
            n_head,
            head_dim,
            capacity,
            kind,
            keys: Store::new(kind, len, rows),
            values: Store::new(kind, len, rows),
        })
    }

    fn rows(n_layer: usize, n_head: usize, capacity: usize) -> Result<usize> {
        [n_layer, n_head, capacity]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::invalid("KV cache size overflows"))
    }

    /// Bytes a cache of these dimensions would hold (keys and values), without allocating it.
    pub fn planned_bytes(
        n_layer: usize,
        n_head: usize,
        head_dim: usize,
        capacity: usize,
        kind: KvType,
    ) -> Result<usize> {
        Self::rows(n_layer, n_head, capacity)?
            .checked_mul(2 * kind.row_bytes(head_dim))
            .ok_or_else(|| Error::invalid("KV cache size overflows"))
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How elements are stored.
    pub fn kv_type(&self) -> KvType {
        self.kind
    }

    /// Bytes of memory the cache holds.
    pub fn byte_len(&self) -> usize {
        self.keys.byte_len() + self.values.byte_len()
    }

    /// Row index of (`layer`, `head`, `pos`).
    fn row(&self, layer: usize, head: usize, pos: usize) -> usize {
        (layer * self.n_head + head) * self.capacity + pos
    }

    /// Stores position `pos`'s keys and values for `layer` (`k` and `v` are `n_head × head_dim`,
    /// heads concatenated, as the attention projection produces them), converting to the
    /// cache's element type.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(
            layer < self.n_layer && pos < self.capacity,
            "KV cache index out of range"
        );
        let hd = self.head_dim;
        assert!(
            k.len() == self.n_head * hd && v.len() == k.len(),
            "KV cache row length"
        );
        for h in 0..self.n_head {
            let row = self.row(layer, h, pos);
            self.keys.put(row, hd, &k[h * hd..(h + 1) * hd]);
            self.values.put(row, hd, &v[h * hd..(h + 1) * hd]);
        }
    }

    /// Stores the keys and values of positions `pos..pos + n` for `layer` from `qkv`: `n` rows
    /// of queries, keys and values (`3 · n_head · head_dim` each, as the attention projection
    /// produces them). A batch of [`PARALLEL_MIN_POSITIONS`] or more is stored a head at a time
    /// in parallel, keys and values at once; the result is that of [`KvCache::store`] row by row.
    pub fn store_batch(&mut self, layer: usize, pos: usize, qkv: &[f32]) {
        let (hd, heads) = (self.head_dim, self.n_head);
        let e = heads * hd;
        assert!(
            e > 0 && qkv.len().is_multiple_of(3 * e),
            "KV cache: rows of queries, keys and values"
        );
        let n = qkv.len() / (3 * e);
        assert!(
            layer < self.n_layer && pos + n <= self.capacity,
            "KV cache index out of range"
        );
        if n < PARALLEL_MIN_POSITIONS {
            for (t, row) in qkv.chunks_exact(3 * e).enumerate() {
                self.store(layer, pos + t, &row[e..2 * e], &row[2 * e..]);
            }
            return;
        }
        let heads_at = (self.row(layer, 0, 0), heads, self.capacity);
        let src =
            |part: usize| move |h: usize, t: usize| &qkv[t * 3 * e + part * e + h * hd..][..hd];
        let (keys, values) = (&mut self.keys, &mut self.values);
        rayon::join(
            || keys.put_heads(heads_at, (pos, n, hd), src(1)),
            || values.put_heads(heads_at, (pos, n, hd), src(2)),
        );
    }

    /// `out[p] = scale · (q · key[p])` for positions `p` in `0..out.len()` of one layer and head.
    pub fn scores(&self, layer: usize, head: usize, q: &[f32], scale: f32, out: &mut [f32]) {
        let (hd, len) = (self.head_dim, out.len());
        assert!(
            layer < self.n_layer && head < self.n_head && len <= self.capacity && q.len() == hd,
            "KV cache scores: index out of range"
        );
        let r0 = self.row(layer, head, 0);
        let (a, b) = (r0 * hd, (r0 + len) * hd);
        match &self.keys {
            Store::F32(k) => {
                for (s, key) in out.iter_mut().zip(k[a..b].chunks_exact(hd)) {
                    *s = kernels::dot_f32(q, key) * scale;
                }
            }
            Store::F16(k) => {
                let dot = kernels::ops().dot_f16;
                for (s, key) in out.iter_mut().zip(k[a..b].chunks_exact(hd)) {
                    *s = dot(key, q) * scale;
                }
            }
            Store::Q8 { q: kq, scale: ks } => {
                for ((s, key), &d) in out
                    .iter_mut()
                    .zip(kq[a..b].chunks_exact(hd))
                    .zip(&ks[r0..r0 + len])
                {
                    *s = dot_i8(key, q) * d * scale;
                }
            }
        }
    }

    /// `out = Σ_p weights[p] · value[p]` over positions `p` in `0..weights.len()` of one layer
    /// and head (`out` is `head_dim` long and is overwritten).
    pub fn weighted_sum(&self, layer: usize, head: usize, weights: &[f32], out: &mut [f32]) {
        let (hd, len) = (self.head_dim, weights.len());
        assert!(
            layer < self.n_layer && head < self.n_head && len <= self.capacity && out.len() == hd,
            "KV cache weighted_sum: index out of range"
        );
        let r0 = self.row(layer, head, 0);
        let (a, b) = (r0 * hd, (r0 + len) * hd);
        out.fill(0.0);
        match &self.values {
            Store::F32(v) => {
                let axpy = kernels::ops().axpy;
                for (&p, value) in weights.iter().zip(v[a..b].chunks_exact(hd)) {
                    axpy(out, p, value);
                }
            }
            Store::F16(v) => {
                let axpy = kernels::ops().axpy_f16;
                for (&p, value) in weights.iter().zip(v[a..b].chunks_exact(hd)) {
                    axpy(out, p, value);
                }
            }
            Store::Q8 { q, scale } => {
                for ((&p, value), &d) in weights
                    .iter()
                    .zip(q[a..b].chunks_exact(hd))
                    .zip(&scale[r0..r0 + len])
                {
                    let pd = p * d;
                    for (o, &x) in out.iter_mut().zip(value) {
                        *o += pd * f32::from(x);
                    }
                }
            }
        }
    }

    /// Element range of `len` rows of (`layer`, `head`) from position 0.
    fn span(&self, layer: usize, head: usize, len: usize) -> (usize, usize) {
        assert!(
            layer < self.n_layer && head < self.n_head && len <= self.capacity,
            "KV cache index out of range"
        );
        let r0 = self.row(layer, head, 0);
        (r0 * self.head_dim, (r0 + len) * self.head_dim)
    }

    /// [`KvCache::scores`] for a tile of consecutive queries of one layer and head (their rows
    /// of `q`, scores and strides as [`CausalTile`] describes them; `tile.head_dim` is the
    /// cache's). The f16 cache reads each key once for several queries
    /// ([`kernels::Ops::scores_f16`]); the others take one query at a time.
    pub fn scores_tile(
        &self,
        layer: usize,
        head: usize,
        q: &[f32],
        scale: f32,
        tile: &CausalTile,
        out: &mut [f32],
    ) {
        assert_eq!(tile.head_dim, self.head_dim, "KV cache tile: head_dim");
        tile.check_scores(self.head_dim * tile.positions(), q.len(), out.len());
        if let Store::F16(k) = &self.keys {
            let (a, b) = self.span(layer, head, tile.positions());
            (kernels::ops().scores_f16)(&k[a..b], q, scale, tile, out);
            return;
        }
        for i in 0..tile.queries {
            let qi = &q[i * tile.q_stride..i * tile.q_stride + self.head_dim];
            let row = i * tile.score_stride;
            self.scores(layer, head, qi, scale, &mut out[row..row + tile.len(i)]);
        }
    }

    /// [`KvCache::weighted_sum`] for a tile of consecutive queries of one layer and head, as
    /// [`KvCache::scores_tile`] (the f16 cache: [`kernels::Ops::weighted_sum_f16`]).
    pub fn weighted_sum_tile(
        &self,
        layer: usize,
        head: usize,
        weights: &[f32],
        tile: &CausalTile,
        out: &mut [f32],
    ) {
        assert_eq!(tile.head_dim, self.head_dim, "KV cache tile: head_dim");
        tile.check_weighted_sum(self.head_dim * tile.positions(), weights.len(), out.len());
        if let Store::F16(v) = &self.values {
            let (a, b) = self.span(layer, head, tile.positions());
            (kernels::ops().weighted_sum_f16)(&v[a..b], weights, tile, out);
            return;
        }
        for i in 0..tile.queries {
            let w = &weights[i * tile.score_stride..i * tile.score_stride + tile.len(i)];
            let o = i * tile.out_stride;
            self.weighted_sum(layer, head, w, &mut out[o..o + self.head_dim]);
        }
    }
}

/// `Σ q[i] · x[i]` with int8 `q` (the row's scale is applied by the caller).
#[inline]
fn dot_i8(q: &[i8], x: &[f32]) -> f32 {
    q.iter().zip(x).map(|(&a, &b)| f32::from(a) * b).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(kind: KvType) -> (KvCache, Vec<f32>, Vec<f32>) {
        let (layers, heads, hd, cap) = (2, 3, 8, 5);
        let mut c = KvCache::with_type(layers, heads, hd, cap, kind).unwrap();
        let mut all_k = Vec::new();
        let mut all_v = Vec::new();
        for l in 0..layers {
            for p in 0..cap {
                let k: Vec<f32> = (0..heads * hd)
                    .map(|i| ((i * 7 + p * 3 + l) % 11) as f32 / 5.0 - 1.0)
                    .collect();
                let v: Vec<f32> = k.iter().map(|x| 0.5 - x).collect();
                c.store(l, p, &k, &v);
                all_k.extend_from_slice(&k);
                all_v.extend_from_slice(&v);
            }
        }
        (c, all_k, all_v)
    }

    fn same_contents(a: &Store, b: &Store) -> bool {
        match (a, b) {
            (Store::F32(a), Store::F32(b)) => a == b,
            (Store::F16(a), Store::F16(b)) => a == b,
            (Store::Q8 { q, scale }, Store::Q8 { q: q2, scale: s2 }) => q == q2 && scale == s2,
            _ => false,
        }
    }

    /// A batch stored at once (in parallel from `PARALLEL_MIN_POSITIONS` on, on two threads)
    /// leaves the cache exactly as storing its rows one by one does, for every type, a batch
    /// below the threshold, one at an offset and one ending at the capacity.
    #[test]
    fn a_batch_is_stored_as_its_rows_one_by_one() {
        let (layers, heads, hd, cap) = (2, 3, 8, 40);
        let e = heads * hd;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for kind in KvType::ALL {
            for (pos, n) in [(0, 3), (5, 20), (cap - 9, 9)] {
                let qkv: Vec<f32> = (0..n * 3 * e)
                    .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                    .collect();
                let mut one = KvCache::with_type(layers, heads, hd, cap, kind).unwrap();
                let mut batch = KvCache::with_type(layers, heads, hd, cap, kind).unwrap();
                for (t, row) in qkv.chunks_exact(3 * e).enumerate() {
                    one.store(1, pos + t, &row[e..2 * e], &row[2 * e..]);
                }
                pool.install(|| batch.store_batch(1, pos, &qkv));
                assert!(
                    same_contents(&one.keys, &batch.keys),
                    "{kind} {pos}+{n}: keys"
                );
                assert!(
                    same_contents(&one.values, &batch.values),
                    "{kind} {pos}+{n}: values"
                );
            }
        }
    }

    #[test]
    fn every_type_matches_f32_within_its_precision() {
        let (exact, _, _) = filled(KvType::F32);
        for (kind, tol) in [(KvType::F32, 0.0), (KvType::F16, 2e-3), (KvType::Q8, 3e-2)] {
            let (c, _, _) = filled(kind);
            assert_eq!(
                c.byte_len(),
                KvCache::planned_bytes(2, 3, 8, 5, kind).unwrap()
            );
            let q: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
            for (l, h) in [(0, 0), (1, 2)] {
                let (mut a, mut b) = ([0.0; 4], [0.0; 4]);
                exact.scores(l, h, &q, 0.5, &mut a);
                c.scores(l, h, &q, 0.5, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= tol * 4.0, "{kind}: {a:?} vs {b:?}");
                }
                let w = [0.1, 0.2, 0.3, 0.4];
                let (mut a, mut b) = ([0.0; 8], [0.0; 8]);
                exact.weighted_sum(l, h, &w, &mut a);
                c.weighted_sum(l, h, &w, &mut b);
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= tol, "{kind}: {a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn types_parse_and_size() {
        assert_eq!("F16".parse::<KvType>().unwrap(), KvType::F16);
        assert!("q4".parse::<KvType>().is_err());
        assert_eq!(KvType::Q8.row_bytes(64), 68);
        assert_eq!(KvType::default(), KvType::F16);
    }
}
