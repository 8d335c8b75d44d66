//! gpt2q: a small, fast GPT-2 runtime for Raspberry Pi class boards.
//!
//! The data path, one module per step:
//! file ([`format`](mod@format)) → mmap ([`mmap`]) → [`model::Model`] (borrowed tensors, [`tensor`]) →
//! [`session::Session`] (KV cache [`kv_cache`] + scratch; [`attention`] over the cache) → [`kernels`] → logits → [`sampler`] →
//! tokens → text ([`tokenizer`]). On top: the generation loop ([`generate`]), multi-turn chat
//! ([`chat`]), zero-shot task prompts ([`task`]), per-token log-probabilities ([`score`]) and
//! several sessions serving queued requests ([`slots`], behind `gpt2q serve`). Block formats for
//! quantised weights live in [`quant`]; scratch buffers aligned to a cache line in [`aligned`];
//! probes of the machine (memory, CPU, board) in [`machine`]; seeded test data in [`rng`].
#![deny(missing_docs)]

pub mod aligned;
pub mod attention;
pub mod bench;
pub mod chat;
pub mod error;
pub mod format;
pub mod generate;
pub mod kernels;
pub mod kv_cache;
pub mod machine;
pub mod mmap;
pub mod model;
pub mod perplexity;
pub mod quant;
pub mod rng;
pub mod sampler;
pub mod score;
pub mod session;
pub mod slots;
pub mod synthetic;
pub mod task;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
