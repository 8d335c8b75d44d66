//! Synthetic models: random weights in the real shapes of every GPT-2 size, so anyone can
//! benchmark any size without downloading it (`gpt2q bench --synthetic 124M`).
//!
//! The weights are random bytes (quantised blocks with a small fixed scale), the tokenizer is a
//! placeholder with the right vocabulary size. The text such a model produces is noise; its speed
//! and memory use are those of the real model.

use std::path::{Path, PathBuf};

use half::f16;

use crate::error::{Error, Result};
use crate::format::{Activation, HParams, ModelWriter, TensorSpec};
use crate::quant::{DType, QK};
use crate::rng::Rng;
use crate::tokenizer::{Tokenizer, ENDOFTEXT, ENDOFTEXT_ID};

/// A GPT-2 size by its common name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// gpt2 (small): 12 layers × 768.
    S124M,
    /// gpt2-medium: 24 × 1024.
    S355M,
    /// gpt2-large: 36 × 1280.
    S774M,
    /// gpt2-xl: 48 × 1600.
    S1_5B,
}

impl Size {
    /// Parses `124M`, `355M`, `774M` or `1.5B`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "124M" => Ok(Size::S124M),
            "355M" => Ok(Size::S355M),
            "774M" => Ok(Size::S774M),
            "1.5B" | "1558M" => Ok(Size::S1_5B),
            _ => Err(Error::invalid(format!(
                "unknown model size {s:?}: expected 124M, 355M, 774M or 1.5B"
            ))),
        }
    }

    /// The common name.
    pub fn name(self) -> &'static str {
        match self {
            Size::S124M => "124M",
            Size::S355M => "355M",
            Size::S774M => "774M",
            Size::S1_5B => "1.5B",
        }
    }

    /// The real hyper-parameters of this size.
    pub fn hparams(self) -> HParams {
        let (n_layer, n_embd, n_head) = match self {
            Size::S124M => (12, 768, 12),
            Size::S355M => (24, 1024, 16),
            Size::S774M => (36, 1280, 20),
            Size::S1_5B => (48, 1600, 25),
        };
        HParams {
            n_vocab: 50257,
            n_ctx: 1024,
            n_embd,
            n_head,
            n_layer,
            n_inner: 4 * n_embd,
            layer_norm_eps: 1e-5,
            activation: Activation::GeluTanh,
            bos_id: ENDOFTEXT_ID,
            eos_id: ENDOFTEXT_ID,
        }
    }
}

/// A tokenizer with `n` tokens: the 256 bytes, unique filler tokens, `<|endoftext|>` last.
fn placeholder_tokenizer(n: u32) -> Result<Tokenizer> {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for i in 256..n - 1 {
        tokens.push(vec![0xFF, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    }
    tokens.push(ENDOFTEXT.as_bytes().to_vec());
    Tokenizer::new(tokens, Vec::new(), vec![(ENDOFTEXT.to_string(), n - 1)])
}

/// Tensor specs of a GPT-2 with matrices in `dtype`.
pub fn specs(hp: &HParams, dtype: DType) -> Vec<TensorSpec> {
    let (e, i, v, c) = (
        hp.n_embd as u64,
        hp.n_inner as u64,
        hp.n_vocab as u64,
        hp.n_ctx as u64,
    );
    let t = |name: String, dtype: DType, shape: Vec<u64>| TensorSpec { name, dtype, shape };
    let mut out = vec![
        t("wte.weight".into(), dtype, vec![v, e]),
        t("wpe.weight".into(), DType::F16, vec![c, e]),
    ];
    for l in 0..hp.n_layer {
        let p = format!("h.{l}");
        for (name, shape) in [
            ("ln_1.weight", vec![e]),
            ("ln_1.bias", vec![e]),
            ("attn.c_attn.weight", vec![3 * e, e]),
            ("attn.c_attn.bias", vec![3 * e]),
            ("attn.c_proj.weight", vec![e, e]),
            ("attn.c_proj.bias", vec![e]),
            ("ln_2.weight", vec![e]),
            ("ln_2.bias", vec![e]),
            ("mlp.c_fc.weight", vec![i, e]),
            ("mlp.c_fc.bias", vec![i]),
            ("mlp.c_proj.weight", vec![e, i]),
            ("mlp.c_proj.bias", vec![e]),
        ] {
            let dt = if shape.len() == 2 { dtype } else { DType::F32 };
            out.push(t(format!("{p}.{name}"), dt, shape));
        }
    }
    out.push(t("ln_f.weight".into(), DType::F32, vec![e]));
    out.push(t("ln_f.bias".into(), DType::F32, vec![e]));
    out
}

/// Random data for one tensor: weights of magnitude ~0.02, layer-norm scales 1, biases 0.
fn tensor_data(spec: &TensorSpec, len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = vec![0u8; len];
    match spec.dtype {
        DType::F32 if spec.shape.len() > 1 => {
            for c in out.chunks_exact_mut(4) {
                let v = rng.unit() - 0.5;
                c.copy_from_slice(&(v * 0.04).to_le_bytes());
            }
        }
        DType::F32 if spec.name.ends_with(".weight") => {
            for c in out.chunks_exact_mut(4) {
                c.copy_from_slice(&1f32.to_le_bytes());
            }
        }
        DType::F32 => {}
        DType::F16 => {
            for c in out.chunks_exact_mut(2) {
                let v = rng.unit() - 0.5;
                c.copy_from_slice(&f16::from_f32(v * 0.04).to_le_bytes());
            }
        }
        DType::Q8 | DType::Q4 => {
            rng.fill_bytes(&mut out);
            let block = if spec.dtype == DType::Q8 {
                2 + QK
            } else {
                2 + QK / 2
            };
            let scale = if spec.dtype == DType::Q8 {
                0.02 / 64.0
            } else {
                0.02 / 4.0
            };
            for b in out.chunks_exact_mut(block) {
                b[..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
                if spec.dtype == DType::Q8 {
                    // q8 codes are −127..=127: −128 becomes −127.
                    b[2..]
                        .iter_mut()
                        .filter(|q| **q == 0x80)
                        .for_each(|q| *q = 0x81);
                }
            }
        }
    }
    out
}

/// Writes a synthetic model of `size` with matrices in `dtype` (`Q8`, `Q4`, `F16` or `F32`) to
/// `path` and returns it.
pub fn write(size: Size, dtype: DType, path: &Path) -> Result<PathBuf> {
    let hp = size.hparams();
    let mut section = Vec::new();
    placeholder_tokenizer(hp.n_vocab)?.write_section(&mut section);
    let meta = vec![
        (
            "source".to_string(),
            format!("synthetic GPT-2 {} (random weights)", size.name()),
        ),
        ("quant".to_string(), dtype.name().to_string()),
    ];
    let writer = ModelWriter::new(hp, meta, section, specs(&hp, dtype))?;
    writer.write_atomic(path, |i, entry| {
        Ok(tensor_data(
            &TensorSpec {
                name: entry.name.clone(),
                dtype: entry.dtype,
                shape: entry.shape.clone(),
            },
            entry.len as usize,
            i as u64 + 1,
        ))
    })?;
    Ok(path.to_path_buf())
}

/// Hyper-parameters of [`tiny_bytes`]: 257 tokens (the bytes and `<|endoftext|>`), 8 positions,
/// width 32 in 2 heads, one layer.
pub fn tiny_hparams() -> HParams {
    HParams {
        n_vocab: 257,
        n_ctx: 8,
        n_embd: 32,
        n_head: 2,
        n_layer: 1,
        n_inner: 64,
        layer_norm_eps: 1e-5,
        activation: Activation::GeluTanh,
        bos_id: 256,
        eos_id: 256,
    }
}

/// A complete, valid `.g2q` file of about 20 KB with a matrix of every dtype (q8 embeddings, q4
/// attention, f16 projection, f32 and q8 MLP) and random weights: the subject of the corruption
/// tests and the fuzzers' seed.
pub fn tiny_bytes() -> Result<Vec<u8>> {
    let hp = tiny_hparams();
    let matrix_dtype = |name: &str| match name {
        n if n.ends_with("c_attn.weight") => DType::Q4,
        n if n.ends_with("attn.c_proj.weight") => DType::F16,
        n if n.ends_with("c_fc.weight") => DType::F32,
        _ => DType::Q8,
    };
    let specs: Vec<TensorSpec> = specs(&hp, DType::Q8)
        .into_iter()
        .map(|s| match s.shape.len() {
            2 if s.name != "wpe.weight" => TensorSpec {
                dtype: matrix_dtype(&s.name),
                ..s
            },
            _ => s,
        })
        .collect();
    model_bytes(&hp, specs, "tiny synthetic model")
}

/// A complete `.g2q` file in memory with hyper-parameters `hp`, the tensors `specs` (as
/// [`specs`] lists them, dtypes and any split embedding as the caller wants), a placeholder
/// tokenizer (one token per byte) and random weights, with `source` as its metadata.
pub fn model_bytes(hp: &HParams, specs: Vec<TensorSpec>, source: &str) -> Result<Vec<u8>> {
    let mut section = Vec::new();
    placeholder_tokenizer(hp.n_vocab)?.write_section(&mut section);
    let meta = vec![("source".to_string(), source.to_string())];
    let writer = ModelWriter::new(*hp, meta, section, specs)?;
    writer.write_to_vec(|i, entry| {
        let spec = TensorSpec {
            name: entry.name.clone(),
            dtype: entry.dtype,
            shape: entry.shape.clone(),
        };
        Ok(tensor_data(&spec, entry.len as usize, i as u64 + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::ModelFile;
    use crate::model::Model;
    use crate::session::Session;

    #[test]
    fn synthetic_124m_loads_and_runs() {
        let path =
            std::env::temp_dir().join(format!("gpt2q-synthetic-test-{}.g2q", std::process::id()));
        write(Size::S124M, DType::Q4, &path).unwrap();
        let file = ModelFile::open(&path).unwrap();
        let model = Model::load(&file, true).unwrap();
        assert_eq!(model.blocks.len(), 12);
        let mut session = Session::new(&model, 8).unwrap();
        let logits = session.prefill(&[1, 2, 3]).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
        drop(model);
        drop(file);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tiny_model_loads_verifies_and_runs() {
        let bytes = tiny_bytes().unwrap();
        assert!(bytes.len() < 32 * 1024, "{} bytes", bytes.len());
        let file = ModelFile::from_bytes(&bytes);
        let model = Model::load(&file, true).unwrap();
        let mut session = Session::new(&model, 8).unwrap();
        let logits = session.prefill(&[1, 2, 256]).unwrap();
        assert_eq!(logits.len(), 257);
        assert!(logits.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(Size::parse("1.5b").unwrap(), Size::S1_5B);
        assert!(Size::parse("7B").is_err());
    }
}
