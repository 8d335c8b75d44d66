//! Causal multi-head attention over the KV cache, once the new positions' keys and values are
//! stored: one query at a time for a decoded token; for a batch (a prompt), tiles of
//! [`QUERY_TILE`] consecutive queries, whose kernels read each key and value row of a head once
//! for several queries, the tiles in parallel on the current rayon pool.
//!
//! This module owns the order of that work and the size of its scores scratch
//! ([`scores_len`]); the products against the cache are [`KvCache`]'s, the arithmetic
//! [`crate::kernels`]'.

use rayon::prelude::*;

use crate::kernels::{self, CausalTile};
use crate::kv_cache::KvCache;

/// Consecutive queries attended together. The NEON scores share each widened key row among
/// eight queries, the other kernels among four.
pub const QUERY_TILE: usize = 8;

/// How a layer's queries split into heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Heads per layer.
    pub n_head: usize,
    /// Values per head (`n_embd / n_head`).
    pub head_dim: usize,
}

impl Heads {
    /// `n_embd`: every head's values side by side.
    fn width(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// Floats of scores scratch [`attend`] needs for batches of up to `batch` tokens in a cache of
/// `capacity` positions: one row of `capacity` per query of every tile (one row in all when
/// tokens come one at a time).
pub fn scores_len(batch: usize, capacity: usize) -> usize {
    if batch <= 1 {
        capacity
    } else {
        batch.next_multiple_of(QUERY_TILE).saturating_mul(capacity)
    }
}

/// Attention of the `n` queries at positions `pos..pos + n` of `layer`, whose keys and values
/// are already in `cache`: `qkv` holds their rows of q, k and v (`3 · n_embd` each), `out`
/// receives their heads' outputs (`n_embd` each), `scores` is scratch of at least
/// [`scores_len`]`(n, cache.capacity())` floats.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    cache: &KvCache,
    layer: usize,
    pos: usize,
    heads: Heads,
    n: usize,
    qkv: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (e, cap) = (heads.width(), cache.capacity());
    assert!(
        n > 0 && pos + n <= cap && qkv.len() >= n * 3 * e && out.len() >= n * e,
        "attention: shapes"
    );
    assert!(
        scores.len() >= scores_len(n, cap),
        "attention: scores scratch"
    );
    if n == 1 {
        one_query(
            cache,
            layer,
            pos + 1,
            heads,
            &qkv[..e],
            scores,
            &mut out[..e],
        );
        return;
    }
    let task = |(k, (out, scores)): (usize, (&mut [f32], &mut [f32]))| {
        let t0 = k * QUERY_TILE;
        one_tile(
            cache,
            layer,
            pos + t0 + 1,
            heads,
            &qkv[t0 * 3 * e..],
            scores,
            out,
        );
    };
    let (out, tile_out, tile_scores) = (&mut out[..n * e], QUERY_TILE * e, QUERY_TILE * cap);
    if n <= QUERY_TILE || rayon::current_num_threads() == 1 {
        out.chunks_mut(tile_out)
            .zip(scores.chunks_mut(tile_scores))
            .enumerate()
            .for_each(task);
    } else {
        out.par_chunks_mut(tile_out)
            .zip(scores.par_chunks_mut(tile_scores))
            .enumerate()
            .for_each(task);
    }
}

/// One query (`q`, every head) over the first `len` cached positions.
fn one_query(
    cache: &KvCache,
    layer: usize,
    len: usize,
    heads: Heads,
    q: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = heads.head_dim;
    let scale = 1.0 / (hd as f32).sqrt();
    let scores = &mut scores[..len];
    for h in 0..heads.n_head {
        cache.scores(layer, h, &q[h * hd..(h + 1) * hd], scale, scores);
        kernels::softmax(scores);
        cache.weighted_sum(layer, h, scores, &mut out[h * hd..(h + 1) * hd]);
    }
}

/// A tile of consecutive queries (as many as `out` has rows; the first sees `first_len`
/// positions), every head in turn; `qkv` starts at the tile's first row.
fn one_tile(
    cache: &KvCache,
    layer: usize,
    first_len: usize,
    heads: Heads,
    qkv: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (hd, e, cap) = (heads.head_dim, heads.width(), cache.capacity());
    let tile = CausalTile {
        head_dim: hd,
        queries: out.len() / e,
        first_len,
        q_stride: 3 * e,
        score_stride: cap,
        out_stride: e,
    };
    let scale = 1.0 / (hd as f32).sqrt();
    for h in 0..heads.n_head {
        cache.scores_tile(layer, h, &qkv[h * hd..], scale, &tile, scores);
        for i in 0..tile.queries {
            kernels::softmax(&mut scores[i * cap..i * cap + tile.len(i)]);
        }
        cache.weighted_sum_tile(layer, h, scores, &tile, &mut out[h * hd..]);
    }
}
