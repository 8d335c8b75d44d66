//! The GPT-2 model: its weights as borrowed views of a mapped `.g2q` file, and the [`Session`]
//! that runs the forward pass one token at a time with a KV cache.
//!
//! This module owns the architecture (token + position embeddings, pre-LN blocks with causal
//! multi-head attention and a GELU MLP, final layer norm, LM head) and the order of operations.
//! Arithmetic is delegated to [`crate::kernels`]; choosing tokens to [`crate::sampler`].

use crate::error::{Error, Result};
use crate::format::{Activation, DType, HParams, Layout, TensorEntry};
use crate::kernels;
use crate::kv_cache::KvCache;
use crate::mmap::{self, ModelFile};
use crate::tensor::{Matrix, Weights};
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
    /// Token embeddings, `(n_vocab, n_embd)`; also the LM head when tied.
    pub wte: Matrix<'a>,
    /// Position embeddings, `(n_ctx, n_embd)`.
    pub wpe: Matrix<'a>,
    /// The transformer blocks.
    pub blocks: Vec<Block<'a>>,
    /// Final layer norm.
    pub ln_f: Norm<'a>,
    /// Output projection to logits, `(n_vocab, n_embd)`: `wte` unless the file has `lm_head.weight`.
    pub lm_head: Matrix<'a>,
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
        let wte = t.matrix("wte.weight", v, e)?;
        let blocks = (0..hp.n_layer as usize)
            .map(|l| t.block(l, e, i))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match layout.entry("lm_head.weight") {
            Some(_) => t.matrix("lm_head.weight", v, e)?,
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

/// Per-token working memory, allocated once per session.
struct Scratch {
    /// Residual stream, `(n_embd)`.
    x: Vec<f32>,
    /// Layer-norm output, `(n_embd)`.
    xn: Vec<f32>,
    /// q, k, v, `(3*n_embd)`.
    qkv: Vec<f32>,
    /// Attention output before projection, `(n_embd)`.
    attn: Vec<f32>,
    /// A projection's output, `(n_embd)`.
    proj: Vec<f32>,
    /// MLP hidden layer, `(n_inner)`.
    hidden: Vec<f32>,
    /// Attention weights over positions, `(capacity)`.
    scores: Vec<f32>,
    /// Next-token logits, `(n_vocab)`.
    logits: Vec<f32>,
}

impl Scratch {
    fn new(hp: &HParams, capacity: usize) -> Self {
        let (e, i) = (hp.n_embd as usize, hp.n_inner as usize);
        Scratch {
            x: vec![0.0; e],
            xn: vec![0.0; e],
            qkv: vec![0.0; 3 * e],
            attn: vec![0.0; e],
            proj: vec![0.0; e],
            hidden: vec![0.0; i],
            scores: vec![0.0; capacity],
            logits: vec![0.0; hp.n_vocab as usize],
        }
    }

    fn byte_len(&self) -> usize {
        let floats = self.x.len()
            + self.xn.len()
            + self.qkv.len()
            + self.attn.len()
            + self.proj.len()
            + self.hidden.len()
            + self.scores.len()
            + self.logits.len();
        floats * std::mem::size_of::<f32>()
    }
}

/// One generation over a model: the KV cache, scratch memory and the current position.
/// Several sessions can share one [`Model`].
pub struct Session<'m> {
    model: &'m Model<'m>,
    cache: KvCache,
    scratch: Scratch,
    pos: usize,
}

impl<'m> Session<'m> {
    /// A session with room for `ctx` positions (`1..=n_ctx`). All memory is allocated here.
    pub fn new(model: &'m Model<'m>, ctx: usize) -> Result<Self> {
        let hp = &model.hparams;
        if ctx == 0 || ctx > hp.n_ctx as usize {
            return Err(Error::invalid(format!(
                "context size {ctx} is not in 1..={} (the model's maximum)",
                hp.n_ctx
            )));
        }
        let cache = KvCache::new(hp.n_layer as usize, hp.n_head as usize, hp.head_dim(), ctx)?;
        Ok(Session {
            model,
            cache,
            scratch: Scratch::new(hp, ctx),
            pos: 0,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model<'m> {
        self.model
    }

    /// Number of positions processed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Positions the session can hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Bytes held by the KV cache and scratch buffers.
    pub fn memory_bytes(&self) -> usize {
        self.cache.byte_len() + self.scratch.byte_len()
    }

    /// Forgets every position: the next token is at position 0.
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Runs `tokens` through the model and returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let Some((&last, head)) = tokens.split_last() else {
            return Err(Error::invalid("cannot run an empty prompt"));
        };
        self.check_room(tokens.len())?;
        for &t in head {
            self.step(t, false)?;
        }
        self.step(last, true)?;
        Ok(&self.scratch.logits)
    }

    /// Runs one token at the next position and returns the logits for the token after it.
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        self.check_room(1)?;
        self.step(token, true)?;
        Ok(&self.scratch.logits)
    }

    /// The logits computed by the last [`Session::prefill`] or [`Session::forward`], mutable so a
    /// sampler can apply penalties in place.
    pub fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.scratch.logits
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.capacity() {
            return Err(Error::invalid(format!(
                "context is full: {} positions used, {n} more requested, room for {}",
                self.pos,
                self.capacity()
            )));
        }
        Ok(())
    }

    /// The forward pass for one token at `self.pos`; logits only when `want_logits`.
    fn step(&mut self, token: u32, want_logits: bool) -> Result<()> {
        let model = self.model;
        let token = t_checked(token, model)?;
        let pos = self.pos;
        let s = &mut self.scratch;
        kernels::dequantize_row(&model.wte, token as usize, &mut s.x);
        kernels::dequantize_row(&model.wpe, pos, &mut s.xn);
        kernels::add_assign(&mut s.x, &s.xn);
        for (l, block) in model.blocks.iter().enumerate() {
            attention(block, l, pos, &model.hparams, &mut self.cache, s);
            mlp(block, &model.hparams, s);
        }
        self.pos += 1;
        if want_logits {
            let hp = &model.hparams;
            kernels::layer_norm(
                &s.x,
                model.ln_f.weight,
                model.ln_f.bias,
                hp.layer_norm_eps,
                &mut s.xn,
            );
            kernels::matvec(&model.lm_head, &s.xn, &mut s.logits);
        }
        Ok(())
    }
}

fn t_checked(token: u32, model: &Model<'_>) -> Result<u32> {
    if token >= model.hparams.n_vocab {
        return Err(Error::invalid(format!(
            "token id {token} is outside the vocabulary of {}",
            model.hparams.n_vocab
        )));
    }
    Ok(token)
}

/// `x += proj(attention(ln_1(x)))` for the token at `pos`, storing its keys and values.
fn attention(
    b: &Block<'_>,
    layer: usize,
    pos: usize,
    hp: &HParams,
    cache: &mut KvCache,
    s: &mut Scratch,
) {
    let e = hp.n_embd as usize;
    let hd = hp.head_dim();
    kernels::layer_norm(
        &s.x,
        b.ln_1.weight,
        b.ln_1.bias,
        hp.layer_norm_eps,
        &mut s.xn,
    );
    kernels::linear(&b.attn_qkv.weight, b.attn_qkv.bias, &s.xn, &mut s.qkv);
    let (q, kv) = s.qkv.split_at(e);
    let (k, v) = kv.split_at(e);
    cache.store(layer, pos, k, v);
    let scale = 1.0 / (hd as f32).sqrt();
    let n = pos + 1;
    for h in 0..hp.n_head as usize {
        let qh = &q[h * hd..(h + 1) * hd];
        let keys = cache.keys(layer, h, n);
        let scores = &mut s.scores[..n];
        for (score, key) in scores.iter_mut().zip(keys.chunks_exact(hd)) {
            *score = kernels::dot_f32(qh, key) * scale;
        }
        kernels::softmax(scores);
        let out = &mut s.attn[h * hd..(h + 1) * hd];
        out.fill(0.0);
        for (&p, value) in scores
            .iter()
            .zip(cache.values(layer, h, n).chunks_exact(hd))
        {
            kernels::axpy(out, p, value);
        }
    }
    kernels::linear(&b.attn_proj.weight, b.attn_proj.bias, &s.attn, &mut s.proj);
    kernels::add_assign(&mut s.x, &s.proj);
}

/// `x += mlp(ln_2(x))`.
fn mlp(b: &Block<'_>, hp: &HParams, s: &mut Scratch) {
    kernels::layer_norm(
        &s.x,
        b.ln_2.weight,
        b.ln_2.bias,
        hp.layer_norm_eps,
        &mut s.xn,
    );
    kernels::linear(&b.mlp_fc.weight, b.mlp_fc.bias, &s.xn, &mut s.hidden);
    match hp.activation {
        Activation::GeluTanh => kernels::gelu_tanh(&mut s.hidden),
        Activation::GeluErf => kernels::gelu_erf(&mut s.hidden),
    }
    kernels::linear(&b.mlp_proj.weight, b.mlp_proj.bias, &s.hidden, &mut s.proj);
    kernels::add_assign(&mut s.x, &s.proj);
}
