//! The attention key/value cache: a fixed-size store of every past position's keys and values.
//!
//! Allocated once per session for `capacity` positions and never grown. Layout is
//! `[layer][head][position][head_dim]`, so the attention of one head reads one contiguous block.
//! It owns storage and indexing only; which positions are kept when it fills is the session's
//! business.

use crate::error::{Error, Result};

/// Keys and values for every layer, head and cached position.
pub struct KvCache {
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
    capacity: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    /// Allocates a zeroed cache for `capacity` positions.
    pub fn new(n_layer: usize, n_head: usize, head_dim: usize, capacity: usize) -> Result<Self> {
        let len = [n_layer, n_head, head_dim, capacity]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        Ok(KvCache {
            n_layer,
            n_head,
            head_dim,
            capacity,
            keys: vec![0.0; len],
            values: vec![0.0; len],
        })
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of memory the cache holds.
    pub fn byte_len(&self) -> usize {
        (self.keys.len() + self.values.len()) * std::mem::size_of::<f32>()
    }

    fn offset(&self, layer: usize, head: usize, pos: usize) -> usize {
        ((layer * self.n_head + head) * self.capacity + pos) * self.head_dim
    }

    /// Stores position `pos`'s keys and values for `layer` (`k` and `v` are `n_head × head_dim`,
    /// heads concatenated, as the attention projection produces them).
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(
            layer < self.n_layer && pos < self.capacity,
            "KV cache index out of range"
        );
        let hd = self.head_dim;
        for h in 0..self.n_head {
            let o = self.offset(layer, h, pos);
            self.keys[o..o + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.values[o..o + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    /// Keys of positions `0..len` for one layer and head, `len × head_dim` values.
    pub fn keys(&self, layer: usize, head: usize, len: usize) -> &[f32] {
        let o = self.offset(layer, head, 0);
        &self.keys[o..o + len * self.head_dim]
    }

    /// Values of positions `0..len` for one layer and head, `len × head_dim` values.
    pub fn values(&self, layer: usize, head: usize, len: usize) -> &[f32] {
        let o = self.offset(layer, head, 0);
        &self.values[o..o + len * self.head_dim]
    }
}
