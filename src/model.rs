//! The GPT-2 model: its weights as borrowed views of a mapped `.g2q` file.
//!
//! This module owns the architecture's parameters (token + position embeddings, pre-LN blocks with
//! causal multi-head attention and a GELU MLP, final layer norm, LM head), loading them by name
//! with the shapes and dtypes they must have. Running them is [`crate::session`]'s.

use crate::error::{Error, Result};
use crate::format::{HParams, Layout, TensorEntry};
use crate::mmap::{self, ModelFile};
use crate::quant::DType;
use crate::tensor::{Matrix, SplitMatrix, Weights};
use crate::tokenizer::Tokenizer;

/// A layer norm's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'a> {
    /// Scale, `(n_embd)`.
    pub weight: &'a [f32],
    /// Shift, `(n_embd)`.
    pub bias: &'a [f32],
}

/// A linear layer `y = W·x + b`.
#[derive(Clone, Copy, Debug)]
pub struct Linear<'a> {
    /// Weights, `(out_features, in_features)`.
    pub weight: Matrix<'a>,
    /// Bias, `(out_features)`.
    pub bias: &'a [f32],
}

/// One transformer block.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    /// Layer norm before attention.
    pub ln_1: Norm<'a>,
    /// Query/key/value projection, `(3*n_embd, n_embd)`: rows are q, then k, then v.
    pub attn_qkv: Linear<'a>,
    /// Attention output projection, `(n_embd, n_embd)`.
    pub attn_proj: Linear<'a>,
    /// Layer norm before the MLP.
    pub ln_2: Norm<'a>,
    /// MLP up-projection, `(n_inner, n_embd)`.
    pub mlp_fc: Linear<'a>,
    /// MLP down-projection, `(n_embd, n_inner)`.
    pub mlp_proj: Linear<'a>,
}

/// A loaded GPT-2: hyper-parameters, tokenizer and weight views borrowed from a [`ModelFile`].
pub struct Model<'a> {
    /// Hyper-parameters.
    pub hparams: HParams,
    /// The tokenizer stored in the file.
    pub tokenizer: Tokenizer,
    /// Token embeddings, `(n_vocab, n_embd)`; also the LM head when tied. Rows of the most
    /// frequent tokens may be stored apart in another dtype (see [`SplitMatrix`]).
    pub wte: SplitMatrix<'a>,
    /// Position embeddings, `(n_ctx, n_embd)`.
    pub wpe: Matrix<'a>,
    /// The transformer blocks.
    pub blocks: Vec<Block<'a>>,
    /// Final layer norm.
    pub ln_f: Norm<'a>,
    /// Output projection to logits, `(n_vocab, n_embd)`: `wte` unless the file has `lm_head.weight`.
    pub lm_head: SplitMatrix<'a>,
    /// The file's metadata.
    pub metadata: Vec<(String, String)>,
    /// The file's tensor table.
    pub tensors: Vec<TensorEntry>,
}

impl<'a> Model<'a> {
    /// Parses and validates `file` and borrows every weight from it. Checks the header and
    /// tokenizer checksums; tensor checksums only if `verify` is set (it reads every byte).
    pub fn load(file: &'a ModelFile, verify: bool) -> Result<Self> {
        let layout = Layout::parse(file.bytes())
            .map_err(|e| Error::format(format!("{}: {e}", file.path().display())))?;
        if verify {
            layout.verify_tensors()?;
        }
        let tokenizer = Tokenizer::from_section(layout.tokenizer)?;
        let hp = layout.hparams;
        if tokenizer.n_tokens() != hp.n_vocab as usize {
            return Err(Error::format(format!(
                "the tokenizer has {} tokens but n_vocab is {}",
                tokenizer.n_tokens(),
                hp.n_vocab
            )));
        }
        let t = Tensors { layout: &layout };
        let (v, c, e, i) = (
            hp.n_vocab as usize,
            hp.n_ctx as usize,
            hp.n_embd as usize,
            hp.n_inner as usize,
        );
        let wte = t.split_matrix("wte", v, e)?;
        let blocks = (0..hp.n_layer as usize)
            .map(|l| t.block(l, e, i))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match layout.entry("lm_head.weight") {
            Some(_) => t.split_matrix("lm_head", v, e)?,
            None => wte,
        };
        Ok(Model {
            hparams: hp,
            tokenizer,
            wte,
            wpe: t.matrix("wpe.weight", c, e)?,
            blocks,
            ln_f: t.norm("ln_f", e)?,
            lm_head,
            metadata: layout.metadata.clone(),
            tensors: layout.tensors.clone(),
        })
    }

    /// The metadata value for `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Bytes of weights read to generate one token (every matrix once, the LM head included).
    pub fn weight_bytes_per_token(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.attn_qkv.weight.byte_len()
                    + b.attn_proj.weight.byte_len()
                    + b.mlp_fc.weight.byte_len()
                    + b.mlp_proj.weight.byte_len()
            })
            .sum();
        blocks + self.lm_head.byte_len()
    }
}

/// Looks tensors up by name with the shape and dtype the model expects.
struct Tensors<'l, 'a> {
    layout: &'l Layout<'a>,
}

impl<'a> Tensors<'_, 'a> {
    fn entry(&self, name: &str, shape: &[usize]) -> Result<&TensorEntry> {
        let entry = self.layout.entry(name).ok_or_else(|| {
            Error::format(format!("tensor {name} is missing from the model file"))
        })?;
        if entry
            .shape
            .iter()
            .map(|&d| d as usize)
            .ne(shape.iter().copied())
        {
            return Err(Error::format(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                entry.shape
            )));
        }
        Ok(entry)
    }

    fn vector(&self, name: &str, n: usize) -> Result<&'a [f32]> {
        let entry = self.entry(name, &[n])?;
        if entry.dtype != DType::F32 {
            return Err(Error::format(format!(
                "tensor {name} must be f32, found {}",
                entry.dtype.name()
            )));
        }
        mmap::as_f32(self.layout.data(entry))
            .ok_or_else(|| Error::format(format!("tensor {name} is misaligned")))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        let entry = self.entry(name, &[rows, cols])?;
        let bytes = self.layout.data(entry);
        let weights = match entry.dtype {
            DType::F32 => mmap::as_f32(bytes).map(Weights::F32),
            DType::F16 => mmap::as_f16(bytes).map(Weights::F16),
            DType::Q8 => mmap::as_q8(bytes).map(Weights::Q8),
            DType::Q4 => mmap::as_q4(bytes).map(Weights::Q4),
        };
        weights
            .and_then(|w| Matrix::new(rows, cols, w))
            .ok_or_else(|| Error::format(format!("tensor {name} is misaligned or mis-sized")))
    }

    /// `PREFIX.weight`, `(rows, cols)`, or, when the file has `PREFIX.frequent.weight` `(k, cols)`
    /// for rows `0..k`, that followed by `PREFIX.weight` `(rows − k, cols)` for the rest.
    fn split_matrix(&self, prefix: &str, rows: usize, cols: usize) -> Result<SplitMatrix<'a>> {
        let head_name = format!("{prefix}.frequent.weight");
        let Some(head) = self.layout.entry(&head_name) else {
            return Ok(SplitMatrix::whole(self.matrix(
                &format!("{prefix}.weight"),
                rows,
                cols,
            )?));
        };
        let k = match head.shape.as_slice() {
            &[k, c] if c as usize == cols && k > 0 && (k as usize) < rows => k as usize,
            shape => {
                return Err(Error::format(format!(
                    "tensor {head_name} has shape {shape:?}, expected [1..{rows}, {cols}]"
                )))
            }
        };
        Ok(SplitMatrix {
            head: Some(self.matrix(&head_name, k, cols)?),
            tail: self.matrix(&format!("{prefix}.weight"), rows - k, cols)?,
        })
    }

    fn norm(&self, prefix: &str, n: usize) -> Result<Norm<'a>> {
        Ok(Norm {
            weight: self.vector(&format!("{prefix}.weight"), n)?,
            bias: self.vector(&format!("{prefix}.bias"), n)?,
        })
    }

    fn linear(&self, prefix: &str, rows: usize, cols: usize) -> Result<Linear<'a>> {
        Ok(Linear {
            weight: self.matrix(&format!("{prefix}.weight"), rows, cols)?,
            bias: self.vector(&format!("{prefix}.bias"), rows)?,
        })
    }

    fn block(&self, l: usize, n_embd: usize, n_inner: usize) -> Result<Block<'a>> {
        let p = format!("h.{l}");
        Ok(Block {
            ln_1: self.norm(&format!("{p}.ln_1"), n_embd)?,
            attn_qkv: self.linear(&format!("{p}.attn.c_attn"), 3 * n_embd, n_embd)?,
            attn_proj: self.linear(&format!("{p}.attn.c_proj"), n_embd, n_embd)?,
            ln_2: self.norm(&format!("{p}.ln_2"), n_embd)?,
            mlp_fc: self.linear(&format!("{p}.mlp.c_fc"), n_inner, n_embd)?,
            mlp_proj: self.linear(&format!("{p}.mlp.c_proj"), n_embd, n_inner)?,
        })
    }
}
