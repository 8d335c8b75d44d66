//! Random GPT-2-shaped checkpoints, for the converter's memory and speed measurements: the real
//! tensor names, shapes and file layout of a Hugging Face checkpoint with random weights, written
//! a piece at a time so that writing even a gpt2-xl-shaped one takes little memory.
//!
//! The tokenizer files (`vocab.json`, `merges.txt`) are copied from a real checkpoint (the
//! repository's tiny fixture has GPT-2's), so the vocabulary is GPT-2's 50,257 tokens.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use gpt2q::rng::Rng;
use gpt2q::{Error, Result};
use serde_json::{json, Map, Value};

use crate::checkpoint::{Checkpoint, HfConfig};

/// GPT-2's vocabulary size.
pub const N_VOCAB: usize = 50257;

/// The sizes of a GPT-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Model width.
    pub n_embd: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Learned positions.
    pub n_positions: usize,
}

impl Shape {
    /// GPT-2 124M ("gpt2").
    pub const SMALL: Shape = Shape::new(12, 768, 12);
    /// GPT-2 355M ("gpt2-medium").
    pub const MEDIUM: Shape = Shape::new(24, 1024, 16);
    /// GPT-2 774M ("gpt2-large").
    pub const LARGE: Shape = Shape::new(36, 1280, 20);
    /// GPT-2 1.5B ("gpt2-xl").
    pub const XL: Shape = Shape::new(48, 1600, 25);

    /// A shape with 1024 positions.
    pub const fn new(n_layer: usize, n_embd: usize, n_head: usize) -> Self {
        Shape {
            n_layer,
            n_embd,
            n_head,
            n_positions: 1024,
        }
    }

    /// `small`, `medium`, `large` or `xl` (also `124m`, `355m`, `774m`, `1.5b`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "small" | "124m" | "gpt2" => Some(Self::SMALL),
            "medium" | "355m" | "gpt2-medium" => Some(Self::MEDIUM),
            "large" | "774m" | "gpt2-large" => Some(Self::LARGE),
            "xl" | "1.5b" | "gpt2-xl" => Some(Self::XL),
            _ => None,
        }
    }

    fn config(&self) -> Value {
        json!({
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "vocab_size": N_VOCAB,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_layer": self.n_layer,
            "layer_norm_epsilon": 1e-5,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "tie_word_embeddings": true,
        })
    }
}

/// Element type of the written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// 4 bytes per weight.
    F32,
    /// 2 bytes per weight.
    F16,
    /// 2 bytes per weight.
    BF16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    fn put(self, v: f32, out: &mut Vec<u8>) {
        match self {
            Dtype::F32 => out.extend_from_slice(&v.to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        }
    }
}

/// Writes a checkpoint of `shape` into `dir` (created if needed): `config.json`,
/// `model.safetensors` with random weights from `seed` (matrices with standard deviation about
/// 0.02 as GPT-2's initialisation, layer-norm gains near 1, biases near 0), and the tokenizer
/// files copied from the checkpoint directory `tokenizer_from`. Returns the weights file's size.
pub fn write_checkpoint(
    dir: &Path,
    shape: Shape,
    dtype: Dtype,
    seed: u64,
    tokenizer_from: &Path,
) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for f in ["vocab.json", "merges.txt"] {
        let from = tokenizer_from.join(f);
        std::fs::copy(&from, dir.join(f)).map_err(|e| Error::io(&from, e))?;
    }
    let config = dir.join("config.json");
    std::fs::write(&config, shape.config().to_string()).map_err(|e| Error::io(&config, e))?;
    let cfg = HfConfig::from_json(&shape.config().to_string(), &config)?;
    let tensors = Checkpoint::expected_tensors(&cfg);
    let path = dir.join("model.safetensors");
    let io = |e| Error::io(&path, e);
    let mut header = Map::new();
    let mut offset = 0usize;
    for (name, dims) in &tensors {
        let len = dims.iter().product::<usize>() * dtype.size();
        header.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": dims, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::invalid(format!("cannot serialise the safetensors header: {e}")))?;
    // Align the data to 8 bytes, as the safetensors writer does.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    let mut rng = Rng::from_state(seed);
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, dims) in &tensors {
        let (centre, spread) = match (name.ends_with(".weight"), dims.len()) {
            (true, 1) => (1.0, 0.1),
            (false, _) => (0.0, 0.02),
            _ => (0.0, 0.035),
        };
        let mut left = dims.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 18);
            buf.clear();
            for _ in 0..n {
                dtype.put(centre + spread * rng.gaussian(), &mut buf);
            }
            w.write_all(&buf).map_err(io)?;
            left -= n;
        }
    }
    w.flush().map_err(io)?;
    Ok(8 + header.len() as u64 + offset as u64)
}
