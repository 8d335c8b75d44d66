//! A Hugging Face GPT-2 checkpoint directory: `config.json`, the safetensors weights (one file or an
//! index plus shards), `vocab.json` and `merges.txt`.
//!
//! [`Checkpoint::open`] validates the configuration and every tensor's name, dtype and shape against it
//! before any weight is read; weights are then read lazily, one tensor at a time, by canonical name
//! (GPT-2 names without the `transformer.` prefix, see [`Checkpoint::expected_tensors`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use gpt2q::{Error, Result};
use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::safetensors::{decode_into, kind, SafetensorsFile, StDtype, TensorInfo};

/// Canonical name of the optional, untied output projection.
pub const LM_HEAD: &str = "lm_head.weight";

/// Prefix `GPT2LMHeadModel` puts on the body's tensor names.
const PREFIX: &str = "transformer.";

/// Activation functions we accept (all are GELU; the first two are the tanh approximation).
pub const ACTIVATIONS: [&str; 3] = ["gelu_new", "gelu_pytorch_tanh", "gelu"];

/// Largest accepted width-like size (`n_embd`, `n_head`); keeps every derived size far from overflow.
const MAX_WIDTH: usize = 1 << 20;
/// Largest accepted `n_vocab`, `n_positions`, `n_ctx`, `n_inner`.
const MAX_COUNT: usize = 1 << 24;
/// Largest accepted `n_layer`.
const MAX_LAYERS: usize = 4096;

/// Hyper-parameters read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// Always `"gpt2"` (anything else is refused).
    pub model_type: String,
    /// Vocabulary size (`vocab_size`, or the older `n_vocab`).
    pub n_vocab: usize,
    /// Number of learned positions (rows of `wpe`).
    pub n_positions: usize,
    /// Context length (`n_ctx`; equals `n_positions` when absent).
    pub n_ctx: usize,
    /// Model width.
    pub n_embd: usize,
    /// Attention heads; divides `n_embd`.
    pub n_head: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// MLP hidden width (`n_inner`; `4 * n_embd` when null or absent).
    pub n_inner: usize,
    /// LayerNorm epsilon (default 1e-5).
    pub layer_norm_epsilon: f32,
    /// One of [`ACTIVATIONS`], as written in the config (default `gelu_new`). `"gelu"` is the exact
    /// (erf) GELU; the others are the tanh approximation.
    pub activation_function: String,
    /// Beginning-of-text token (default 50256).
    pub bos_token_id: u32,
    /// End-of-text token (default 50256).
    pub eos_token_id: u32,
    /// Whether the output projection is `wte` (default true).
    pub tie_word_embeddings: bool,
}

impl HfConfig {
    /// Parses and validates the text of a `config.json`; `path` only labels error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(format!("{}: not valid JSON: {e}", path.display())))?;
        let obj = json.as_object().ok_or_else(|| {
            Error::format(format!(
                "{}: must be a JSON object, found {}",
                path.display(),
                kind(&json)
            ))
        })?;
        let f = Fields { obj, path };
        check_model_type(&f)?;
        check_unsupported_flags(&f)?;
        let config = Self::read_fields(&f)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads the fields, applying transformers' defaults for the optional ones.
    fn read_fields(f: &Fields) -> Result<Self> {
        let n_vocab = match f.opt_usize("vocab_size")? {
            Some(n) => n,
            None => f.req_usize("n_vocab")?,
        };
        let n_positions = f.req_usize("n_positions")?;
        let n_embd = f.req_usize("n_embd")?;
        Ok(HfConfig {
            model_type: "gpt2".to_string(),
            n_vocab,
            n_positions,
            n_ctx: f.opt_usize("n_ctx")?.unwrap_or(n_positions),
            n_embd,
            n_head: f.req_usize("n_head")?,
            n_layer: f.req_usize("n_layer")?,
            n_inner: f
                .opt_usize("n_inner")?
                .unwrap_or_else(|| n_embd.saturating_mul(4)),
            layer_norm_epsilon: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
            activation_function: f
                .opt_str("activation_function")?
                .unwrap_or("gelu_new")
                .to_string(),
            bos_token_id: f.opt_u32("bos_token_id")?.unwrap_or(50256),
            eos_token_id: f.opt_u32("eos_token_id")?.unwrap_or(50256),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        })
    }

    /// Checks sizes, their relations, the activation and the special tokens.
    fn validate(&self, path: &Path) -> Result<()> {
        let p = path.display();
        let limits = [
            ("vocab_size", self.n_vocab, MAX_COUNT),
            ("n_positions", self.n_positions, MAX_COUNT),
            ("n_ctx", self.n_ctx, MAX_COUNT),
            ("n_embd", self.n_embd, MAX_WIDTH),
            ("n_head", self.n_head, MAX_WIDTH),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_inner", self.n_inner, MAX_COUNT),
        ];
        for (name, value, max) in limits {
            if value == 0 || value > max {
                return Err(Error::format(format!(
                    "{p}: {name} is {value}, expected 1..={max}"
                )));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::format(format!(
                "{p}: n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if !ACTIVATIONS.contains(&self.activation_function.as_str()) {
            return Err(Error::format(format!(
                "{p}: activation_function {:?} is not supported (expected one of {ACTIVATIONS:?})",
                self.activation_function
            )));
        }
        let eps = self.layer_norm_epsilon;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::format(format!(
                "{p}: layer_norm_epsilon is {eps}, expected a positive finite number"
            )));
        }
        self.check_token_ids(path)
    }

    /// `bos_token_id` and `eos_token_id` must lie in the vocabulary.
    fn check_token_ids(&self, path: &Path) -> Result<()> {
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if usize::try_from(id).map_or(true, |id| id >= self.n_vocab) {
                return Err(Error::format(format!(
                    "{}: {name} {id} is outside the vocabulary (vocab_size {})",
                    path.display(),
                    self.n_vocab
                )));
            }
        }
        Ok(())
    }
}

/// Refuses any `model_type` other than `gpt2`.
fn check_model_type(f: &Fields) -> Result<()> {
    match f.opt_str("model_type")? {
        Some("gpt2") => Ok(()),
        Some(other) => Err(Error::format(format!(
            "{}: model_type is {other:?}, but only GPT-2 checkpoints (model_type \"gpt2\") can be converted",
            f.path.display()
        ))),
        None => Err(Error::format(format!(
            "{}: missing \"model_type\" (expected \"gpt2\")",
            f.path.display()
        ))),
    }
}

/// Refuses GPT-2 variants whose attention or structure we do not implement.
fn check_unsupported_flags(f: &Fields) -> Result<()> {
    let refused = [
        ("scale_attn_by_inverse_layer_idx", true),
        ("reorder_and_upcast_attn", true),
        ("add_cross_attention", true),
        ("scale_attn_weights", false),
    ];
    for (flag, bad) in refused {
        if f.opt_bool(flag)? == Some(bad) {
            return Err(Error::format(format!(
                "{}: {flag} is {bad}, which is not supported (only standard GPT-2 attention is implemented)",
                f.path.display()
            )));
        }
    }
    Ok(())
}

/// Typed access to the fields of a JSON config object, with errors naming the file and key.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    /// The value of `key`, treating an explicit `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> Error {
        Error::format(format!(
            "{}: \"{key}\" must be {expected}, found {found}",
            self.path.display()
        ))
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| {
            Error::format(format!(
                "{}: missing \"{key}\" (a non-negative integer)",
                self.path.display()
            ))
        })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
            })
            .transpose()
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| self.wrong(key, "a token id (0..2^32)", v))
            })
            .transpose()
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.wrong(key, "a number", v))
            })
            .transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string", v)))
            .transpose()
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong(key, "true or false", v))
            })
            .transpose()
    }
}

/// Where a canonical tensor is stored.
#[derive(Debug, Clone)]
struct Location {
    /// Index into `Checkpoint::shards`.
    shard: usize,
    /// The name as stored in that file (possibly with the `transformer.` prefix).
    key: String,
}

/// An opened, validated GPT-2 checkpoint directory. Weights are read lazily with [`Checkpoint::read`].
#[derive(Debug)]
pub struct Checkpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its validated configuration.
    pub config: HfConfig,
    shards: Vec<SafetensorsFile>,
    names: BTreeMap<String, Location>,
    name_or_path: Option<String>,
}

impl Checkpoint {
    /// Opens `dir`: reads and validates `config.json`, maps `model.safetensors` (or the shards named by
    /// `model.safetensors.index.json`; the single file wins if both exist), and checks that the tensors
    /// are exactly those of a GPT-2 with this configuration, with the expected shapes and float dtypes.
    /// No weight data is read.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{}: not a directory (expected a Hugging Face GPT-2 checkpoint directory)",
                dir.display()
            )));
        }
        let (config, name_or_path) = load_config(dir)?;
        let shards = open_weights(dir)?;
        let names = map_names(dir, &shards, &config)?;
        let ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
            names,
            name_or_path,
        };
        ckpt.check_tensors()?;
        Ok(ckpt)
    }

    /// The required tensors of a GPT-2 with `config` and their shapes as Hugging Face stores them
    /// (Conv1D weights as `(in, out)`), by canonical name. The optional [`LM_HEAD`] is not included.
    pub fn expected_tensors(config: &HfConfig) -> Vec<(String, Vec<usize>)> {
        let (d, inner) = (config.n_embd, config.n_inner);
        let mut out = vec![
            ("wte.weight".to_string(), vec![config.n_vocab, d]),
            ("wpe.weight".to_string(), vec![config.n_positions, d]),
        ];
        for i in 0..config.n_layer {
            let layer: [(&str, Vec<usize>); 12] = [
                ("ln_1.weight", vec![d]),
                ("ln_1.bias", vec![d]),
                ("attn.c_attn.weight", vec![d, d.saturating_mul(3)]),
                ("attn.c_attn.bias", vec![d.saturating_mul(3)]),
                ("attn.c_proj.weight", vec![d, d]),
                ("attn.c_proj.bias", vec![d]),
                ("ln_2.weight", vec![d]),
                ("ln_2.bias", vec![d]),
                ("mlp.c_fc.weight", vec![d, inner]),
                ("mlp.c_fc.bias", vec![inner]),
                ("mlp.c_proj.weight", vec![inner, d]),
                ("mlp.c_proj.bias", vec![d]),
            ];
            out.extend(layer.into_iter().map(|(n, s)| (format!("h.{i}.{n}"), s)));
        }
        out.push(("ln_f.weight".to_string(), vec![d]));
        out.push(("ln_f.bias".to_string(), vec![d]));
        out
    }

    /// Reads tensor `canonical` as `f32` values (row-major, in the stored shape). Any non-finite value
    /// is an error naming the tensor and the element.
    pub fn read(&self, canonical: &str) -> Result<Vec<f32>> {
        let view = self.view(canonical)?;
        let mut values = vec![0.0; view.numel()];
        view.read_into(0, &mut values)?;
        Ok(values)
    }

    /// Tensor `canonical` as stored, not yet read: its elements are decoded on demand, a run at a
    /// time, and released from memory once used (see [`TensorView`]).
    pub fn view(&self, canonical: &str) -> Result<TensorView<'_>> {
        let (loc, shard, _) = self.lookup(canonical)?;
        let (info, bytes) = shard.raw(&loc.key)?;
        let canonical = self
            .names
            .get_key_value(canonical)
            .map_or("", |(k, _)| k.as_str());
        Ok(TensorView {
            canonical,
            key: &loc.key,
            shard,
            info,
            bytes,
        })
    }

    /// Stored shape of tensor `canonical`, if the checkpoint has it.
    pub fn shape(&self, canonical: &str) -> Option<&[usize]> {
        self.lookup(canonical)
            .ok()
            .map(|(_, _, t)| t.shape.as_slice())
    }

    /// Stored dtype of tensor `canonical`, if the checkpoint has it.
    pub fn dtype(&self, canonical: &str) -> Option<&StDtype> {
        self.lookup(canonical).ok().map(|(_, _, t)| &t.dtype)
    }

    /// Whether the checkpoint stores an `lm_head.weight`.
    pub fn has_lm_head(&self) -> bool {
        self.names.contains_key(LM_HEAD)
    }

    /// `Ok(true)` when there is no `lm_head.weight`, or it equals `wte.weight` bit for bit after
    /// conversion to `f32`. Reads both tensors.
    pub fn lm_head_is_tied(&self) -> Result<bool> {
        if !self.has_lm_head() {
            return Ok(true);
        }
        let (head, wte) = (self.view(LM_HEAD)?, self.view("wte.weight")?);
        if head.numel() != wte.numel() {
            return Ok(false);
        }
        let n = head.numel();
        let (mut a, mut b) = (vec![0.0; COMPARE_CHUNK], vec![0.0; COMPARE_CHUNK]);
        for start in (0..n).step_by(COMPARE_CHUNK) {
            let len = COMPARE_CHUNK.min(n - start);
            head.read_into(start, &mut a[..len])?;
            wte.read_into(start, &mut b[..len])?;
            head.release(start..start + len);
            wte.release(start..start + len);
            if a[..len]
                .iter()
                .zip(&b[..len])
                .any(|(x, y)| x.to_bits() != y.to_bits())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A name for the model's metadata: the directory's name, followed by `_name_or_path` from
    /// `config.json` in parentheses when present and different.
    pub fn source_name(&self) -> String {
        let dir_name = self
            .dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| self.dir.display().to_string());
        match self.name_or_path.as_deref() {
            Some(n) if !n.is_empty() && n != dir_name => format!("{dir_name} ({n})"),
            _ => dir_name,
        }
    }

    /// Reads `vocab.json` (an object mapping token string to id) and returns `(token, id)` pairs sorted
    /// by id. The ids must be exactly `0..n_vocab`.
    pub fn read_vocab(&self) -> Result<Vec<(String, u32)>> {
        let path = self.dir.join("vocab.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        parse_vocab(&text, self.config.n_vocab, &path)
    }

    /// Reads `merges.txt` and checks its shape: an optional `#version` first line, then one merge per
    /// line, two space-separated non-empty symbols. Returns the text unchanged.
    pub fn read_merges(&self) -> Result<String> {
        let path = self.dir.join("merges.txt");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        check_merges(&text, &path)?;
        Ok(text)
    }

    /// The location, file and header entry of tensor `canonical`.
    fn lookup(&self, canonical: &str) -> Result<(&Location, &SafetensorsFile, &TensorInfo)> {
        let missing = || {
            Error::invalid(format!(
                "{}: the checkpoint has no tensor {canonical:?}",
                self.dir.display()
            ))
        };
        let loc = self.names.get(canonical).ok_or_else(missing)?;
        let shard = self.shards.get(loc.shard).ok_or_else(missing)?;
        let info = shard.tensors().get(&loc.key).ok_or_else(missing)?;
        Ok((loc, shard, info))
    }

    /// Every required tensor present with its expected shape and a float dtype; `lm_head.weight`
    /// likewise when present, and present when the embeddings are untied.
    fn check_tensors(&self) -> Result<()> {
        let expected = Self::expected_tensors(&self.config);
        let missing: Vec<String> = expected
            .iter()
            .filter(|(n, _)| !self.names.contains_key(n))
            .map(|(n, s)| format!("{n} (expected shape {s:?})"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::format(format!(
                "{}: missing tensor{} {}",
                self.dir.display(),
                if missing.len() == 1 { "" } else { "s" },
                summarize(&missing)
            )));
        }
        let head = vec![self.config.n_vocab, self.config.n_embd];
        if !self.config.tie_word_embeddings && !self.has_lm_head() {
            return Err(Error::format(format!(
                "{}: config.json sets tie_word_embeddings to false, but there is no {LM_HEAD} (expected shape {head:?})",
                self.dir.display()
            )));
        }
        let optional = self.has_lm_head().then(|| (LM_HEAD.to_string(), head));
        for (name, shape) in expected.iter().chain(optional.as_ref()) {
            self.check_tensor(name, shape)?;
        }
        Ok(())
    }

    /// Tensor `name` has shape `expected` and a float dtype.
    fn check_tensor(&self, name: &str, expected: &[usize]) -> Result<()> {
        let (loc, shard, info) = self.lookup(name)?;
        let what = format!(
            "{}: tensor {name} (stored as {:?})",
            shard.path().display(),
            loc.key
        );
        if info.shape != expected {
            let hint = if info.shape.iter().rev().eq(expected.iter()) && expected.len() == 2 {
                " (transposed? Hugging Face GPT-2 stores Conv1D weights as (in, out))"
            } else {
                ""
            };
            return Err(Error::format(format!(
                "{what}: expected shape {expected:?}, found {:?}{hint}",
                info.shape
            )));
        }
        if !info.dtype.is_float() {
            return Err(Error::format(format!(
                "{what}: dtype is {}, expected F32, F16 or BF16",
                info.dtype
            )));
        }
        Ok(())
    }
}

/// Elements compared at a time by [`Checkpoint::lm_head_is_tied`].
const COMPARE_CHUNK: usize = 1 << 20;

/// One stored tensor of a [`Checkpoint`], read a run of elements at a time: the converter
/// decodes a few rows, converts them, writes them, and [`TensorView::release`]s them, so its
/// memory does not grow with the checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    canonical: &'a str,
    key: &'a str,
    shard: &'a SafetensorsFile,
    info: &'a TensorInfo,
    bytes: &'a [u8],
}

impl TensorView<'_> {
    /// The stored shape.
    pub fn shape(&self) -> &[usize] {
        &self.info.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.info.numel()
    }

    /// Decodes elements `start..start + out.len()` (row-major) into `out`. Any non-finite value
    /// is an error naming the tensor and the element.
    pub fn read_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.decode_unchecked(start, out)?;
        match first_non_finite(out) {
            None => Ok(()),
            Some(i) => Err(self.non_finite(start + i, out[i])),
        }
    }

    /// As [`TensorView::read_into`], decoding `cols`-long rows on every thread of the pool.
    pub fn par_read_into(&self, start: usize, out: &mut [f32], cols: usize) -> Result<()> {
        out.par_chunks_mut(cols.max(1))
            .enumerate()
            .try_for_each(|(r, row)| self.decode_unchecked(start + r * cols, row))?;
        match first_non_finite(out) {
            None => Ok(()),
            Some(i) => Err(self.non_finite(start + i, out[i])),
        }
    }

    /// Reads a 2-D tensor stored `(rows, cols)` as its transpose `(cols, rows)`, row-major, on
    /// every thread of the pool (output rows in bands of 32, each reading 32 consecutive stored
    /// values per stored row). Any non-finite value is an error naming a stored element.
    pub fn read_transposed(&self) -> Result<Vec<f32>> {
        let [rows, cols] = self.info.shape[..] else {
            return Err(Error::invalid(format!(
                "tensor {}: cannot transpose shape {:?}",
                self.canonical, self.info.shape
            )));
        };
        const BAND: usize = 32;
        let mut out = vec![0f32; rows * cols];
        out.par_chunks_mut(BAND * rows.max(1))
            .enumerate()
            .try_for_each(|(band, dst)| {
                let j0 = band * BAND;
                let n = dst.len() / rows.max(1);
                let mut run = [0f32; BAND];
                for i in 0..rows {
                    self.decode_unchecked(i * cols + j0, &mut run[..n])?;
                    for (t, &v) in run[..n].iter().enumerate() {
                        dst[t * rows + i] = v;
                    }
                }
                Ok::<(), Error>(())
            })?;
        match first_non_finite(&out) {
            None => Ok(out),
            Some(k) => Err(self.non_finite((k % rows) * cols + k / rows, out[k])),
        }
    }

    /// Drops the memory pages holding elements `elems` (see [`SafetensorsFile::release`]).
    pub fn release(&self, elems: Range<usize>) {
        let size = self.info.dtype.float_size();
        let base = self.info.range.start;
        self.shard
            .release(base + elems.start * size..base + elems.end * size);
    }

    /// Decodes without the finiteness check.
    fn decode_unchecked(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let size = self.info.dtype.float_size();
        let bytes = start
            .checked_add(out.len())
            .filter(|&end| end <= self.numel() && size > 0)
            .and_then(|end| self.bytes.get(start * size..end * size));
        match bytes {
            Some(bytes) if decode_into(bytes, &self.info.dtype, out) => Ok(()),
            _ => Err(Error::invalid(format!(
                "{}: tensor {} (stored as {:?}, {} elements of {}): cannot read elements {start}..{}",
                self.shard.path().display(),
                self.canonical,
                self.key,
                self.numel(),
                self.info.dtype,
                start.saturating_add(out.len())
            ))),
        }
    }

    fn non_finite(&self, i: usize, value: f32) -> Error {
        Error::format(format!(
            "{}: tensor {} (stored as {:?}) has a non-finite value {value} at element {i} (index {:?} of shape {:?}); the checkpoint is damaged",
            self.shard.path().display(),
            self.canonical,
            self.key,
            unravel(i, &self.info.shape),
            self.info.shape
        ))
    }
}

/// The index of the first non-finite value, checked on every thread of the pool.
fn first_non_finite(values: &[f32]) -> Option<usize> {
    const PIECE: usize = 1 << 14;
    let piece = values
        .par_chunks(PIECE)
        .enumerate()
        .filter(|(_, c)| !c.iter().fold(true, |ok, v| ok & v.is_finite()))
        .map(|(k, _)| k)
        .min()?;
    let start = piece * PIECE;
    values[start..]
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| start + i)
}

/// Reads `config.json` in `dir`: the validated config and `_name_or_path` if present.
fn load_config(dir: &Path) -> Result<(HfConfig, Option<String>)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let config = HfConfig::from_json(&text, &path)?;
    let name_or_path = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("_name_or_path")?.as_str().map(str::to_string));
    Ok((config, name_or_path))
}

/// Opens the weight files of `dir`: `model.safetensors`, or the shards of its index.
fn open_weights(dir: &Path) -> Result<Vec<SafetensorsFile>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![SafetensorsFile::open(&single)?]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return open_sharded(dir, &index);
    }
    let pytorch = ["pytorch_model.bin", "pytorch_model.bin.index.json"]
        .iter()
        .any(|f| dir.join(f).is_file());
    let d = dir.display();
    if pytorch {
        return Err(Error::invalid(format!(
            "{d}: has only PyTorch pickle weights (pytorch_model.bin), which are not read; convert to safetensors first, e.g. with transformers' model.save_pretrained(out_dir, safe_serialization=True)"
        )));
    }
    Err(Error::invalid(format!(
        "{d}: no model.safetensors or model.safetensors.index.json found"
    )))
}

/// Opens each shard named by the index once, and checks that the index and the shards agree.
fn open_sharded(dir: &Path, index: &Path) -> Result<Vec<SafetensorsFile>> {
    let weight_map = read_weight_map(index)?;
    let files: BTreeSet<&str> = weight_map.values().map(String::as_str).collect();
    let mut shards = Vec::with_capacity(files.len());
    for file in files {
        let shard = SafetensorsFile::open(&dir.join(file))?;
        check_shard_matches_index(&shard, file, &weight_map, index)?;
        shards.push(shard);
    }
    Ok(shards)
}

/// Reads the `weight_map` of a `model.safetensors.index.json`: tensor name → shard file name.
fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    let p = index.display();
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(format!("{p}: not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(format!("{p}: missing \"weight_map\" object")))?;
    if map.is_empty() {
        return Err(Error::format(format!("{p}: \"weight_map\" is empty")));
    }
    map.iter()
        .map(|(name, file)| {
            let file = file.as_str().filter(|f| is_plain_file_name(f)).ok_or_else(|| {
                Error::format(format!(
                    "{p}: weight_map entry {name:?} must name a file in the same directory, found {file}"
                ))
            })?;
            Ok((name.clone(), file.to_string()))
        })
        .collect()
}

/// A bare file name: no directory components, not `.` or `..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\'])
        && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
}

/// Every tensor the index places in `file` is in `shard`, and `shard` holds nothing else.
fn check_shard_matches_index(
    shard: &SafetensorsFile,
    file: &str,
    weight_map: &BTreeMap<String, String>,
    index: &Path,
) -> Result<()> {
    let listed = weight_map.iter().filter(|(_, f)| f.as_str() == file);
    for (name, _) in listed {
        if !shard.tensors().contains_key(name) {
            return Err(Error::format(format!(
                "{}: lists tensor {name:?} in {file}, but {} has no such tensor",
                index.display(),
                shard.path().display()
            )));
        }
    }
    for name in shard.tensors().keys() {
        let placed = weight_map.get(name).map(String::as_str);
        if placed != Some(file) {
            let where_ = placed.map_or("does not list it".to_string(), |f| {
                format!("places it in {f}")
            });
            return Err(Error::format(format!(
                "{}: holds tensor {name:?}, but {} {where_}",
                shard.path().display(),
                index.display()
            )));
        }
    }
    Ok(())
}

/// What a stored tensor name means.
enum Role {
    /// A non-persistent attention buffer (`attn.bias`, `attn.masked_bias`): skipped.
    Ignored,
    /// A weight with this canonical name.
    Weight(String),
    /// Not part of a GPT-2 with this configuration.
    Unexpected,
}

/// Classifies stored name `key` against the set of `known` canonical names.
fn role_of(key: &str, known: &BTreeSet<String>) -> Role {
    if key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias") {
        return Role::Ignored;
    }
    let (canonical, prefixed) = match key.strip_prefix(PREFIX) {
        Some(rest) => (rest, true),
        None => (key, false),
    };
    if known.contains(canonical) || (canonical == LM_HEAD && !prefixed) {
        Role::Weight(canonical.to_string())
    } else {
        Role::Unexpected
    }
}

/// Maps canonical names to their stored locations, refusing unexpected and doubly-stored tensors.
fn map_names(
    dir: &Path,
    shards: &[SafetensorsFile],
    config: &HfConfig,
) -> Result<BTreeMap<String, Location>> {
    let known: BTreeSet<String> = Checkpoint::expected_tensors(config)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut names: BTreeMap<String, Location> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for (shard, file) in shards.iter().enumerate() {
        for key in file.tensors().keys() {
            let canonical = match role_of(key, &known) {
                Role::Ignored => continue,
                Role::Unexpected => {
                    unexpected.push(key.clone());
                    continue;
                }
                Role::Weight(c) => c,
            };
            if let Some(prev) = names.get(&canonical) {
                return Err(Error::format(format!(
                    "{}: tensor {canonical} is stored twice, as {:?} and {key:?}",
                    dir.display(),
                    prev.key
                )));
            }
            let key = key.clone();
            names.insert(canonical, Location { shard, key });
        }
    }
    if !unexpected.is_empty() {
        return Err(Error::format(format!(
            "{}: unexpected tensors for a GPT-2 with n_layer={}: {}",
            dir.display(),
            config.n_layer,
            summarize(&unexpected)
        )));
    }
    Ok(names)
}

/// Parses `vocab.json` text: token → id, with ids exactly `0..n_vocab`. Sorted by id.
fn parse_vocab(text: &str, n_vocab: usize, path: &Path) -> Result<Vec<(String, u32)>> {
    let p = path.display();
    let json: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(format!("{p}: not valid JSON: {e}")))?;
    let obj = json.as_object().ok_or_else(|| {
        Error::format(format!(
            "{p}: must be a JSON object of token -> id, found {}",
            kind(&json)
        ))
    })?;
    if obj.len() != n_vocab {
        return Err(Error::format(format!(
            "{p}: has {} tokens, but config.json says vocab_size is {n_vocab}",
            obj.len()
        )));
    }
    let mut vocab = obj
        .iter()
        .map(|(tok, id)| Ok((tok.clone(), vocab_id(tok, id, n_vocab, path)?)))
        .collect::<Result<Vec<_>>>()?;
    vocab.sort_by_key(|&(_, id)| id);
    for pair in vocab.windows(2) {
        if let [(a, id), (b, next)] = pair {
            if id == next {
                return Err(Error::format(format!(
                    "{p}: tokens {a:?} and {b:?} share id {id}"
                )));
            }
        }
    }
    Ok(vocab)
}

/// The id of `tok` in `vocab.json`: an integer in `0..n_vocab`.
fn vocab_id(tok: &str, id: &Value, n_vocab: usize, path: &Path) -> Result<u32> {
    id.as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .filter(|&i| usize::try_from(i).is_ok_and(|i| i < n_vocab))
        .ok_or_else(|| {
            Error::format(format!(
                "{}: token {tok:?} has id {id}, expected an integer in 0..{n_vocab}",
                path.display()
            ))
        })
}

/// Checks `merges.txt` text: optional `#version` line first, then `left right` per non-empty line.
fn check_merges(text: &str, path: &Path) -> Result<()> {
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        let ok = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty()
        );
        if !ok {
            return Err(Error::format(format!(
                "{}: line {}: expected two space-separated symbols, found {line:?}",
                path.display(),
                i + 1
            )));
        }
    }
    Ok(())
}

/// The multi-dimensional index of flat element `i` in a row-major `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (slot, &dim) in idx.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = i % dim;
            i /= dim;
        }
    }
    idx
}

/// The first few items of a list, then how many there are in all.
fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let head = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        format!("{head}, ... ({} in all)", items.len())
    } else {
        head
    }
}
