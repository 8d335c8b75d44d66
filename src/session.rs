//! A [`Session`]: one generation over a [`Model`], holding the KV cache, scratch memory and the
//! current position, and running the forward pass.
//!
//! This module owns the order of operations of GPT-2's forward pass (embeddings, then per block
//! attention and MLP with their layer norms and residuals, final layer norm, LM head), how a
//! session is sized ([`SessionConfig`]) and what memory that takes ([`MemoryPlan`], computed
//! without allocating, and [`plan`], which chooses a context for a memory limit and refuses what
//! does not fit). Arithmetic is delegated to [`crate::kernels`]; choosing tokens to
//! [`crate::sampler`].

use rayon::prelude::*;

use crate::aligned::AlignedVec;
use crate::attention::{self, Heads};
use crate::error::{Error, Result};
use crate::format::{Activation, HParams};
use crate::kernels::{self, MatmulScratch, Then};
use crate::kv_cache::{KvCache, KvType};
use crate::machine;
use crate::model::{Block, Model, Norm};

/// Working memory for a batch of up to `batch` tokens, allocated once per session.
struct Scratch {
    /// Residual stream, `(batch, n_embd)`.
    x: AlignedVec,
    /// Layer-norm output, `(batch, n_embd)`.
    xn: AlignedVec,
    /// q, k, v, `(batch, 3*n_embd)`.
    qkv: AlignedVec,
    /// Attention output before projection, `(batch, n_embd)`.
    attn: AlignedVec,
    /// MLP hidden layer, `(batch, n_inner)`.
    hidden: AlignedVec,
    /// Attention scores and weights: a row of `capacity` per query of a batch (rounded up to
    /// whole tiles, [`attention::scores_len`]).
    scores: AlignedVec,
    /// Logits, `(n_vocab)`, or `(batch, n_vocab)` when every position's logits are kept.
    logits: AlignedVec,
    /// Quantised activations and output tiles for the matrix products.
    matmul: MatmulScratch,
}

/// Sizes of the scratch buffers for one configuration, in elements.
struct ScratchDims {
    /// `x`, `xn` and `attn` each.
    embd: usize,
    qkv: usize,
    hidden: usize,
    scores: usize,
    logits: usize,
    /// `MatmulScratch::new` arguments: widest input, widest output, batch.
    matmul: (usize, usize, usize),
}

impl ScratchDims {
    fn new(hp: &HParams, config: &SessionConfig) -> Self {
        let (e, i, v, b) = (
            hp.n_embd as usize,
            hp.n_inner as usize,
            hp.n_vocab as usize,
            config.batch,
        );
        let logit_rows = if config.all_logits { b } else { 1 };
        let widest_out = (3 * e).max(i).max(if config.all_logits { v } else { 0 });
        ScratchDims {
            embd: b * e,
            qkv: b * 3 * e,
            hidden: b * i,
            scores: attention::scores_len(b, config.ctx),
            logits: logit_rows * v,
            matmul: (e.max(i), widest_out, b),
        }
    }

    /// Bytes the buffers take (must agree with [`Scratch::byte_len`]).
    fn byte_len(&self) -> usize {
        // x, xn, attn, qkv, hidden, scores, logits.
        let lens = [
            self.embd,
            self.embd,
            self.embd,
            self.qkv,
            self.hidden,
            self.scores,
            self.logits,
        ];
        let (cols, rows, tokens) = self.matmul;
        lens.map(AlignedVec::byte_len_for).iter().sum::<usize>()
            + MatmulScratch::byte_len_for(cols, rows, tokens)
    }
}

impl Scratch {
    fn new(hp: &HParams, config: &SessionConfig) -> Self {
        let d = ScratchDims::new(hp, config);
        let (cols, rows, tokens) = d.matmul;
        Scratch {
            x: AlignedVec::zeroed(d.embd),
            xn: AlignedVec::zeroed(d.embd),
            qkv: AlignedVec::zeroed(d.qkv),
            attn: AlignedVec::zeroed(d.embd),
            hidden: AlignedVec::zeroed(d.hidden),
            scores: AlignedVec::zeroed(d.scores),
            logits: AlignedVec::zeroed(d.logits),
            matmul: MatmulScratch::new(cols, rows, tokens),
        }
    }

    fn byte_len(&self) -> usize {
        let buffers = [
            &self.x,
            &self.xn,
            &self.qkv,
            &self.attn,
            &self.hidden,
            &self.scores,
            &self.logits,
        ];
        buffers.iter().map(|b| b.byte_len()).sum::<usize>() + self.matmul.byte_len()
    }
}

/// How a session is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Positions the KV cache holds (`1..=n_ctx`).
    pub ctx: usize,
    /// Tokens processed together by [`Session::prefill`] (each weight is read once per batch).
    pub batch: usize,
    /// Keep the logits of every position of a batch ([`Session::forward_batch`]), not just the last.
    pub all_logits: bool,
    /// How the KV cache stores keys and values.
    pub kv: KvType,
}

impl SessionConfig {
    /// Default sizing for `ctx` positions: batches of up to 128 tokens, last logits only, and
    /// the default KV element type ([`KvType::default`], f16).
    pub fn new(ctx: usize) -> Self {
        SessionConfig {
            ctx,
            batch: ctx.clamp(1, 128),
            all_logits: false,
            kv: KvType::default(),
        }
    }

    /// The same sizing with the KV cache stored as `kv`.
    pub fn with_kv(self, kv: KvType) -> Self {
        SessionConfig { kv, ..self }
    }
}

/// The memory a run needs, in bytes, computed without allocating any of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The mapped model file (shared, paged in from disk; all of it is touched per token).
    pub weights: usize,
    /// The KV cache.
    pub kv_cache: usize,
    /// Activations, attention scores, logits and matrix-product scratch.
    pub scratch: usize,
}

impl MemoryPlan {
    /// The plan for a session of `config` over a model with `hp`, whose file is `weights` bytes.
    pub fn new(hp: &HParams, weights: usize, config: &SessionConfig) -> Result<Self> {
        Ok(MemoryPlan {
            weights,
            kv_cache: KvCache::planned_bytes(
                hp.n_layer as usize,
                hp.n_head as usize,
                hp.head_dim(),
                config.ctx,
                config.kv,
            )?,
            scratch: ScratchDims::new(hp, config).byte_len(),
        })
    }

    /// The plan of `slots` sessions sharing the mapped weights: each has its own KV cache and
    /// scratch.
    pub fn with_slots(self, slots: usize) -> Self {
        MemoryPlan {
            weights: self.weights,
            kv_cache: self.kv_cache.saturating_mul(slots),
            scratch: self.scratch.saturating_mul(slots),
        }
    }

    /// Weights + KV cache + scratch.
    pub fn total(&self) -> usize {
        self.weights
            .saturating_add(self.kv_cache)
            .saturating_add(self.scratch)
    }

    /// The largest context in `1..=hp.n_ctx` whose plan (sized like `SessionConfig::new(ctx)`
    /// with `kv`) fits in `limit` bytes, if any does.
    pub fn max_ctx_within(hp: &HParams, weights: usize, kv: KvType, limit: usize) -> Option<usize> {
        Self::max_ctx_within_slots(hp, weights, kv, limit, 1)
    }

    /// As [`MemoryPlan::max_ctx_within`] for `slots` sessions sharing the weights.
    pub fn max_ctx_within_slots(
        hp: &HParams,
        weights: usize,
        kv: KvType,
        limit: usize,
        slots: usize,
    ) -> Option<usize> {
        let fits = |ctx: usize| {
            MemoryPlan::new(hp, weights, &SessionConfig::new(ctx).with_kv(kv))
                .is_ok_and(|p| p.with_slots(slots).total() <= limit)
        };
        // The plan grows with ctx, so binary-search the last context that fits.
        if !fits(1) {
            return None;
        }
        let (mut lo, mut hi) = (1usize, hp.n_ctx as usize);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    }
}

/// A session's sizing and the memory it needs, as [`plan`] chose them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPlan {
    /// The sizing to pass to [`Session::with_config`].
    pub config: SessionConfig,
    /// What the planned sessions (all of them, see [`plan_slots`]) and the mapped weights take.
    pub memory: MemoryPlan,
}

/// Chooses the context of a run over a model with `hp` whose file is `weights` bytes, with its KV
/// cache stored as `kv`: `ctx` if given (checked against the model and `mem_limit`), else the
/// model's maximum capped to what fits in `mem_limit`. Refuses, saying what would fit, when the
/// plan exceeds `mem_limit`; without a limit, refuses a session larger than the machine's memory
/// ([`machine::memory_bytes`]). Error messages name the `gpt2q` flags (`--ctx`, `--kv`,
/// `--mem-limit`) that change the outcome.
pub fn plan(
    hp: &HParams,
    weights: usize,
    ctx: Option<usize>,
    kv: KvType,
    mem_limit: Option<usize>,
) -> Result<SessionPlan> {
    plan_slots(hp, weights, ctx, kv, mem_limit, 1)
}

/// As [`plan`] for `slots` (at least 1) sessions of the same size sharing the mapped weights
/// (`gpt2q serve --parallel`): the memory plan counts every session's KV cache and scratch.
pub fn plan_slots(
    hp: &HParams,
    weights: usize,
    ctx: Option<usize>,
    kv: KvType,
    mem_limit: Option<usize>,
    slots: usize,
) -> Result<SessionPlan> {
    if slots == 0 {
        return Err(Error::invalid("--parallel must be at least 1"));
    }
    let max_ctx = hp.n_ctx as usize;
    let ctx = match (ctx, mem_limit) {
        (Some(c), _) => c,
        (None, Some(limit)) => MemoryPlan::max_ctx_within_slots(hp, weights, kv, limit, slots)
            .map_or(max_ctx, |c| c.min(max_ctx)),
        (None, None) => max_ctx,
    };
    if ctx == 0 || ctx > max_ctx {
        return Err(Error::invalid(format!(
            "--ctx must be in 1..={max_ctx} for this model, got {ctx}"
        )));
    }
    let config = SessionConfig::new(ctx).with_kv(kv);
    let memory = MemoryPlan::new(hp, weights, &config)?.with_slots(slots);
    match mem_limit {
        Some(limit) if memory.total() > limit => Err(Error::invalid(over_limit(
            hp, weights, ctx, kv, &memory, limit, slots,
        ))),
        Some(_) => Ok(SessionPlan { config, memory }),
        None => {
            check_fits_machine(ctx, &memory, machine::memory_bytes())?;
            Ok(SessionPlan { config, memory })
        }
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Without a memory limit, refuses a session (KV cache and scratch, which are allocated, unlike
/// the mapped weights) larger than the machine's memory: a crafted or mistaken header would
/// otherwise end in a failed allocation, which aborts.
fn check_fits_machine(ctx: usize, plan: &MemoryPlan, machine: Option<usize>) -> Result<()> {
    let session = plan.kv_cache.saturating_add(plan.scratch);
    match machine {
        Some(total) if session > total => Err(Error::invalid(format!(
            "at --ctx {ctx} the KV cache and scratch need {:.1} MiB, more than this machine's {:.1} MiB of memory; pass a smaller --ctx or --mem-limit",
            mib(session),
            mib(total)
        ))),
        _ => Ok(()),
    }
}

/// Why `plan` is over `limit`, and the largest context that would fit with each KV type.
fn over_limit(
    hp: &HParams,
    weights: usize,
    ctx: usize,
    kv: KvType,
    plan: &MemoryPlan,
    limit: usize,
    slots: usize,
) -> String {
    let parallel = if slots > 1 {
        format!(" --parallel {slots}")
    } else {
        String::new()
    };
    let mut msg = format!(
        "the memory plan at --ctx {ctx} --kv {kv}{parallel} is {:.1} MiB (weights {:.1} + KV cache {:.1} + scratch {:.1}), over --mem-limit {:.1} MiB",
        mib(plan.total()),
        mib(plan.weights),
        mib(plan.kv_cache),
        mib(plan.scratch),
        mib(limit)
    );
    let fits: Vec<String> = KvType::ALL
        .iter()
        .filter_map(|&k| {
            MemoryPlan::max_ctx_within_slots(hp, weights, k, limit, slots)
                .map(|c| format!("--ctx {c} --kv {k}"))
        })
        .collect();
    if fits.is_empty() {
        msg += &format!(
            "; nothing fits: the mapped weights alone are {:.1} MiB (use a smaller quantisation or raise the limit)",
            mib(weights)
        );
    } else {
        msg += &format!("; at most this would fit: {}", fits.join(", or "));
    }
    msg
}

/// Which weight matrix reads an activation, as [`Session::forward_observed`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatrixInput {
    /// The query/key/value projection of block `l` (reads ln_1's output).
    AttnQkv(usize),
    /// The attention output projection of block `l` (reads the heads' concatenated output).
    AttnProj(usize),
    /// The MLP up-projection of block `l` (reads ln_2's output).
    MlpFc(usize),
    /// The MLP down-projection of block `l` (reads the GELU's output).
    MlpProj(usize),
    /// The LM head (reads ln_f's output).
    LmHead,
}

/// Receives each matrix's input rows, `(tokens, in_features)` row-major.
type Observer<'o> = &'o mut dyn FnMut(MatrixInput, &[f32]);

/// One generation over a model: the KV cache, scratch memory and the current position.
/// Several sessions can share one [`Model`].
pub struct Session<'m> {
    model: &'m Model<'m>,
    config: SessionConfig,
    cache: KvCache,
    scratch: Scratch,
    pos: usize,
    /// Tokens in the last batch whose logits are in `scratch.logits`.
    logit_rows: usize,
}

impl<'m> Session<'m> {
    /// A session with room for `ctx` positions (`1..=n_ctx`) and default batching.
    pub fn new(model: &'m Model<'m>, ctx: usize) -> Result<Self> {
        Self::with_config(model, SessionConfig::new(ctx))
    }

    /// A session sized by `config`. All memory is allocated here.
    pub fn with_config(model: &'m Model<'m>, config: SessionConfig) -> Result<Self> {
        let hp = &model.hparams;
        if config.ctx == 0 || config.ctx > hp.n_ctx as usize {
            return Err(Error::invalid(format!(
                "context size {} is not in 1..={} (the model's maximum)",
                config.ctx, hp.n_ctx
            )));
        }
        if config.batch == 0 || config.batch > config.ctx {
            return Err(Error::invalid(format!(
                "batch size {} is not in 1..={}",
                config.batch, config.ctx
            )));
        }
        let cache = KvCache::with_type(
            hp.n_layer as usize,
            hp.n_head as usize,
            hp.head_dim(),
            config.ctx,
            config.kv,
        )?;
        Ok(Session {
            model,
            config,
            cache,
            scratch: Scratch::new(hp, &config),
            pos: 0,
            logit_rows: 0,
        })
    }

    /// A session for scoring text: room for `window` positions, every position's logits kept, in
    /// batches of up to 128 tokens, default KV type.
    pub fn for_scoring(model: &'m Model<'m>, window: usize) -> Result<Self> {
        let config = SessionConfig {
            all_logits: true,
            ..SessionConfig::new(window)
        };
        Self::with_config(model, config)
    }

    /// How the session is sized.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Tokens processed together.
    pub fn batch(&self) -> usize {
        self.config.batch
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
        self.logit_rows = 0;
    }

    /// Forgets positions `pos..`: the next token is at position `pos` (no-op if `pos` is not
    /// before the current position). Earlier positions' keys and values stay valid, since each
    /// depends only on the tokens up to it. The logits are stale until the next call that runs
    /// tokens.
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Runs `tokens` through the model in batches and returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Err(Error::invalid("cannot run an empty prompt"));
        }
        self.check_tokens(tokens)?;
        let batch = self.config.batch;
        with_a_worker_awake(|| {
            for chunk in tokens.chunks(batch) {
                self.run_batch(chunk, false, &mut |_, _| {});
            }
        });
        Ok(self.last_logits())
    }

    /// Runs one token at the next position and returns the logits for the token after it.
    pub fn forward(&mut self, token: u32) -> Result<&[f32]> {
        self.check_tokens(&[token])?;
        with_a_worker_awake(|| self.run_batch(&[token], false, &mut |_, _| {}));
        Ok(self.last_logits())
    }

    /// Runs up to `batch` tokens and returns every position's logits, `(tokens.len(), n_vocab)`
    /// row-major. Needs a session made with `all_logits`.
    pub fn forward_batch(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let mut result = Ok(());
        with_a_worker_awake(|| {
            result = self.forward_observed(tokens, &mut |_, _| {}).map(|_| ());
        });
        result?;
        let v = self.model.hparams.n_vocab as usize;
        Ok(&self.scratch.logits[..tokens.len() * v])
    }

    /// As [`Session::forward_batch`], also handing `observer` the input of every weight matrix
    /// as it is computed (for calibration statistics; not for the generation loop).
    pub fn forward_observed(
        &mut self,
        tokens: &[u32],
        observer: &mut dyn FnMut(MatrixInput, &[f32]),
    ) -> Result<&[f32]> {
        if !self.config.all_logits || tokens.is_empty() || tokens.len() > self.config.batch {
            return Err(Error::invalid(format!(
                "a batch needs 1..={} tokens and a session with all_logits",
                self.config.batch
            )));
        }
        self.check_tokens(tokens)?;
        self.run_batch(tokens, true, observer);
        let v = self.model.hparams.n_vocab as usize;
        Ok(&self.scratch.logits[..tokens.len() * v])
    }

    /// The logits computed by the last call, for the last token, mutable so a sampler can apply
    /// penalties in place.
    pub fn logits_mut(&mut self) -> &mut [f32] {
        let v = self.model.hparams.n_vocab as usize;
        let start = self.logit_rows.saturating_sub(1) * v;
        &mut self.scratch.logits[start..start + v]
    }

    fn last_logits(&self) -> &[f32] {
        let v = self.model.hparams.n_vocab as usize;
        let start = self.logit_rows.saturating_sub(1) * v;
        &self.scratch.logits[start..start + v]
    }

    /// Token ids in range and room in the cache, checked before any work.
    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| t >= self.model.hparams.n_vocab) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.model.hparams.n_vocab
            )));
        }
        if self.pos + tokens.len() > self.capacity() {
            return Err(Error::invalid(format!(
                "context is full: {} positions used, {} more requested, room for {}",
                self.pos,
                tokens.len(),
                self.capacity()
            )));
        }
        Ok(())
    }

    /// The forward pass for `tokens` (checked, at most `batch`) at positions `pos..`; logits of
    /// every token when `all` is set, else of the last.
    fn run_batch(&mut self, tokens: &[u32], all: bool, observe: Observer<'_>) {
        let model = self.model;
        let hp = &model.hparams;
        let (e, n) = (hp.n_embd as usize, tokens.len());
        let s = &mut self.scratch;
        for (t, &token) in tokens.iter().enumerate() {
            let x = &mut s.x[t * e..(t + 1) * e];
            kernels::dequantize_split_row(&model.wte, token as usize, x);
            let p = &mut s.xn[t * e..(t + 1) * e];
            kernels::dequantize_row(&model.wpe, self.pos + t, p);
            kernels::add_assign(x, p);
        }
        for (l, block) in model.blocks.iter().enumerate() {
            self_attention(block, l, self.pos, n, hp, &mut self.cache, s, observe);
            mlp(block, l, n, hp, s, observe);
        }
        self.pos += n;
        let first = if all { 0 } else { n - 1 };
        let rows = n - first;
        for t in first..n {
            let (x, xn) = (
                &s.x[t * e..(t + 1) * e],
                &mut s.xn[(t - first) * e..(t - first + 1) * e],
            );
            kernels::layer_norm(x, model.ln_f.weight, model.ln_f.bias, hp.layer_norm_eps, xn);
        }
        observe(MatrixInput::LmHead, &s.xn[..rows * e]);
        let v = hp.n_vocab as usize;
        let logits = &mut s.logits[..rows * v];
        kernels::matmul_split(
            &model.lm_head,
            &s.xn[..rows * e],
            rows,
            logits,
            &mut s.matmul,
        );
        self.logit_rows = rows;
    }
}

/// Whether a forward pass keeps a worker spinning ([`with_a_worker_awake`]). Measured on x86-64
/// (2 vCPUs: prefill +6.6%, decode +3.8% at two threads, medians of 20 and 12 alternated runs);
/// not on ARM, where the cost model counts the spinning as work and cannot time a wake-up.
const KEEP_A_WORKER_AWAKE: bool = cfg!(target_arch = "x86_64");

/// Runs `f` while another worker of the current pool waits for work by spinning instead of
/// sleeping, so that each parallel section of `f` finds it awake: a token's forward pass has
/// ten or more of them, and an idle rayon worker goes to sleep after a few dozen yields, so each
/// section otherwise starts with a wake-up (on a virtual machine, an interrupt to a halted vCPU).
/// The spinning worker takes the pool's work as it appears (`rayon::yield_now`); no allocation.
fn with_a_worker_awake(f: impl FnOnce() + Send) {
    use std::sync::atomic::{AtomicBool, Ordering};
    if !KEEP_A_WORKER_AWAKE || rayon::current_num_threads() < 2 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::join(
        || {
            f();
            done.store(true, Ordering::Release);
        },
        || {
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        },
    );
}

/// `x += proj(attention(ln_1(x)))` for `n` tokens starting at position `pos`, storing their keys
/// and values in the cache first so each token attends to itself and everything before it
/// ([`attention::attend`]).
#[allow(clippy::too_many_arguments)]
fn self_attention(
    b: &Block<'_>,
    layer: usize,
    pos: usize,
    n: usize,
    hp: &HParams,
    cache: &mut KvCache,
    s: &mut Scratch,
    observe: Observer<'_>,
) {
    let e = hp.n_embd as usize;
    layer_norms(&s.x[..n * e], b.ln_1, hp.layer_norm_eps, &mut s.xn[..n * e]);
    observe(MatrixInput::AttnQkv(layer), &s.xn[..n * e]);
    kernels::linear_batch(
        &b.attn_qkv.weight,
        b.attn_qkv.bias,
        &s.xn[..n * e],
        n,
        &mut s.qkv[..n * 3 * e],
        &mut s.matmul,
        Then::Store,
    );
    cache.store_batch(layer, pos, &s.qkv[..n * 3 * e]);
    let heads = Heads {
        n_head: hp.n_head as usize,
        head_dim: hp.head_dim(),
    };
    attention::attend(
        cache,
        layer,
        pos,
        heads,
        n,
        &s.qkv[..n * 3 * e],
        &mut s.scores,
        &mut s.attn[..n * e],
    );
    observe(MatrixInput::AttnProj(layer), &s.attn[..n * e]);
    kernels::linear_batch(
        &b.attn_proj.weight,
        b.attn_proj.bias,
        &s.attn[..n * e],
        n,
        &mut s.x[..n * e],
        &mut s.matmul,
        Then::Add,
    );
}

/// Layer norm of each `n_embd`-wide row of `x` into `out` (a batch's rows in parallel).
fn layer_norms(x: &[f32], norm: Norm<'_>, eps: f32, out: &mut [f32]) {
    const PARALLEL_MIN_ROWS: usize = 8;
    let e = norm.weight.len();
    let row = |(xs, os): (&[f32], &mut [f32])| {
        kernels::layer_norm(xs, norm.weight, norm.bias, eps, os);
    };
    if x.len() < PARALLEL_MIN_ROWS * e {
        x.chunks_exact(e).zip(out.chunks_exact_mut(e)).for_each(row);
    } else {
        x.par_chunks_exact(e)
            .zip(out.par_chunks_exact_mut(e))
            .for_each(row);
    }
}

/// `x += mlp(ln_2(x))` for `n` tokens.
fn mlp(
    b: &Block<'_>,
    layer: usize,
    n: usize,
    hp: &HParams,
    s: &mut Scratch,
    observe: Observer<'_>,
) {
    let (e, i) = (hp.n_embd as usize, hp.n_inner as usize);
    layer_norms(&s.x[..n * e], b.ln_2, hp.layer_norm_eps, &mut s.xn[..n * e]);
    observe(MatrixInput::MlpFc(layer), &s.xn[..n * e]);
    let hidden = &mut s.hidden[..n * i];
    kernels::linear_batch(
        &b.mlp_fc.weight,
        b.mlp_fc.bias,
        &s.xn[..n * e],
        n,
        hidden,
        &mut s.matmul,
        match hp.activation {
            Activation::GeluTanh => Then::GeluTanh,
            Activation::GeluErf => Then::GeluErf,
        },
    );
    observe(MatrixInput::MlpProj(layer), hidden);
    kernels::linear_batch(
        &b.mlp_proj.weight,
        b.mlp_proj.bias,
        hidden,
        n,
        &mut s.x[..n * e],
        &mut s.matmul,
        Then::Add,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::ModelFile;
    use crate::quant::DType;
    use crate::synthetic;

    /// Prefill in batches (attention in tiles of queries, the tiles in parallel) gives the logits
    /// of a token-by-token run (one query at a time) within float rounding, for every KV cache
    /// type, on one and two threads. A small synthetic model with GPT-2's head size (64) and f32
    /// matrices, so that both runs take the same matrix products and only attention differs;
    /// 75 tokens are a full batch of 64 and a second one at position 64 whose last tile is
    /// ragged.
    #[test]
    fn batched_prefill_matches_token_by_token() {
        let hp = HParams {
            n_vocab: 300,
            n_ctx: 96,
            n_embd: 128,
            n_head: 2,
            n_layer: 2,
            n_inner: 256,
            ..synthetic::tiny_hparams()
        };
        let bytes = synthetic::model_bytes(&hp, synthetic::specs(&hp, DType::F32), "test").unwrap();
        let file = ModelFile::from_bytes(&bytes);
        let model = Model::load(&file, true).unwrap();
        let v = hp.n_vocab as usize;
        let tokens: Vec<u32> = (0..75u32).map(|i| (i * 37 + 11) % hp.n_vocab).collect();
        for kv in KvType::ALL {
            let config = SessionConfig {
                all_logits: true,
                ..SessionConfig::new(96)
            }
            .with_kv(kv);
            let mut one = Session::with_config(&model, config).unwrap();
            let want: Vec<f32> = tokens
                .iter()
                .flat_map(|&t| one.forward(t).unwrap().to_vec())
                .collect();
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut batched = Session::with_config(&model, config).unwrap();
                let mut got = Vec::new();
                pool.install(|| {
                    for chunk in tokens.chunks(config.batch) {
                        got.extend_from_slice(batched.forward_batch(chunk).unwrap());
                    }
                });
                assert_eq!(got.len(), tokens.len() * v);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                println!("KV {kv}, {threads} threads: max |Δ logit| {worst:.2e} of {scale:.2}");
                assert!(worst <= 1e-5 * scale, "KV {kv}, {threads} threads: {worst}");
            }
        }
    }

    /// Prefill and decode keep a worker spinning for the pass ([`with_a_worker_awake`]): the
    /// logits are those of a one-thread pool, from inside a two-thread pool, with two sessions
    /// running at once in it (each one's spinning worker must run the other's work, not wait
    /// for it), and from outside any pool.
    #[test]
    fn passes_with_a_worker_kept_awake_finish_and_match_one_thread() {
        let hp = HParams {
            n_vocab: 300,
            n_ctx: 64,
            n_embd: 64,
            n_head: 2,
            n_layer: 2,
            n_inner: 128,
            ..synthetic::tiny_hparams()
        };
        let bytes = synthetic::model_bytes(&hp, synthetic::specs(&hp, DType::Q8), "test").unwrap();
        let file = ModelFile::from_bytes(&bytes);
        let model = Model::load(&file, true).unwrap();
        let prompt: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % hp.n_vocab).collect();
        let run = || {
            let mut s = Session::new(&model, 64).unwrap();
            let mut out = s.prefill(&prompt).unwrap().to_vec();
            for t in [5, 6, 7] {
                out.extend_from_slice(s.forward(t).unwrap());
            }
            out
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let want = pool(1).install(run);
        let close = |got: &[f32]| {
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-4, "max |Δ logit| {worst}");
        };
        let two = pool(2);
        close(&two.install(run));
        let (a, b) = two.install(|| rayon::join(run, run));
        close(&a);
        close(&b);
        close(&run());
    }

    #[test]
    fn a_session_larger_than_the_machine_is_refused() {
        let plan = MemoryPlan {
            weights: 3 << 30,
            kv_cache: 300 << 20,
            scratch: 100 << 20,
        };
        // The mapped weights do not count; the allocated session does.
        assert!(check_fits_machine(512, &plan, Some(400 << 20)).is_ok());
        let err = check_fits_machine(512, &plan, Some((400 << 20) - 1)).unwrap_err();
        assert!(err.to_string().contains("--ctx 512"), "{err}");
        assert!(check_fits_machine(512, &plan, None).is_ok());
    }

    #[test]
    fn slots_share_the_weights_and_multiply_the_rest() {
        let one = MemoryPlan {
            weights: 100,
            kv_cache: 10,
            scratch: 3,
        };
        let two = one.with_slots(2);
        assert_eq!((two.weights, two.kv_cache, two.scratch), (100, 20, 6));
        assert_eq!(two.total(), 126);
    }
}
