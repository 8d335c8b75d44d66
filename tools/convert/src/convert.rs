//! Turning a [`Checkpoint`] into a `.g2q` file: which dtype each tensor gets, the transposition
//! of GPT-2's Conv1D weights to `(out, in)`, metadata, and the streaming write.
//!
//! It owns the conversion policy; the byte layout is the library's (`gpt2q::format`), reading
//! the Hugging Face files is [`crate::checkpoint`]'s, encoding rows is [`crate::encode`]'s and
//! the partial output file is [`crate::output`]'s. Tensors stream through in chunks of rows:
//! decoded, encoded on the thread pool, written, and their input pages released, so memory stays
//! bounded whatever the model's size.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use gpt2q::format::{Activation, ByteSink, DType, HParams, ModelWriter, TensorEntry, TensorSpec};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::quant::QK;
use gpt2q::tokenizer::Tokenizer;
use gpt2q::{Error, Result};

use crate::checkpoint::{Checkpoint, HfConfig, TensorView};
use crate::encode::encode_rows;
use crate::importance::ColumnImportance;
use crate::output::{self, PartialFile};

/// The converter's version, recorded in every file it writes.
pub const CONVERTER: &str = concat!("gpt2q-convert ", env!("CARGO_PKG_VERSION"));

/// What the matrices are stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    /// Everything in f32: the exact reference.
    F32,
    /// Matrices in f16.
    F16,
    /// Matrices in q8 (8.5 bits per weight).
    Q8,
    /// The default 4-bit mix: every matrix in q4 (4.5 bits per weight) except the token
    /// embedding, which is also the LM head, in q8. The tensor-sensitivity report
    /// (`--sensitivity`) shows it to be by far the most sensitive matrix of GPT-2; see
    /// docs/QUANTIZATION.md for the measured trade-off.
    Q4,
    /// Every matrix in q4, the embedding included, except the embedding rows of the most
    /// frequent tokens (the lowest ids: BPE's earliest merges), which take q8 as far as an
    /// average of [`Q4_PURE_BITS_PER_WEIGHT`] over the matrices allows: the smallest file.
    Q4Pure,
}

impl Quant {
    /// Parses a `--quant` value.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Quant::F32),
            "f16" => Ok(Quant::F16),
            "q8" => Ok(Quant::Q8),
            "q4" => Ok(Quant::Q4),
            "q4-pure" => Ok(Quant::Q4Pure),
            _ => Err(Error::invalid(format!(
                "unknown quantisation {s:?}: expected f32, f16, q8, q4 or q4-pure"
            ))),
        }
    }

    /// The name used on the command line and in the file's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
            Quant::Q4Pure => "q4-pure",
        }
    }

    /// Every `--quant` value.
    pub const ALL: [Quant; 5] = [Quant::F32, Quant::F16, Quant::Q8, Quant::Q4, Quant::Q4Pure];

    /// The dtype of the weight matrix `name` (a name in the file, e.g. `h.0.mlp.c_fc.weight`).
    pub fn matrix_dtype(self, name: &str) -> DType {
        match self {
            Quant::F32 => DType::F32,
            Quant::F16 => DType::F16,
            Quant::Q8 => DType::Q8,
            Quant::Q4 if is_token_embedding(name) => DType::Q8,
            Quant::Q4 | Quant::Q4Pure => DType::Q4,
        }
    }
}

/// The token embedding and the LM head: one matrix when tied, so one policy either way.
fn is_token_embedding(name: &str) -> bool {
    name == "wte.weight" || name == "lm_head.weight"
}

/// The average storage cost `--quant q4-pure` may reach over its quantised matrices (scales
/// included): q4 is 4.5 bits per weight; the rest of the budget keeps frequent tokens' embedding
/// rows in q8.
pub const Q4_PURE_BITS_PER_WEIGHT: f64 = 4.6;

impl Quant {
    /// How many leading rows of the token embedding (and LM head) are stored apart in q8: under
    /// `q4-pure`, as many as [`Q4_PURE_BITS_PER_WEIGHT`] allows; otherwise none.
    pub fn frequent_rows(self, cfg: &HfConfig, explicit_lm_head: bool) -> usize {
        let (v, e, i) = (cfg.n_vocab, cfg.n_embd, cfg.n_inner);
        if self != Quant::Q4Pure || e % QK != 0 || i % QK != 0 {
            return 0;
        }
        let heads = if explicit_lm_head { 2.0 } else { 1.0 };
        let (vf, ef, inf) = (v as f64, e as f64, i as f64);
        let weights = heads * vf * ef + cfg.n_layer as f64 * (4.0 * ef * ef + 2.0 * ef * inf);
        let bits = |d: DType| d.row_bytes(QK as u64).unwrap_or(0) as f64 * 8.0 / QK as f64;
        let (q4_bits, q8_bits) = (bits(DType::Q4), bits(DType::Q8));
        let spare = (Q4_PURE_BITS_PER_WEIGHT - q4_bits) * weights;
        let per_row = (q8_bits - q4_bits) * heads * ef;
        ((spare / per_row) as usize).min(v.saturating_sub(1))
    }
}

/// Options of one conversion.
#[derive(Clone, Debug)]
pub struct Options {
    /// Storage of the weight matrices.
    pub quant: Quant,
    /// Replace an existing output file.
    pub force: bool,
    /// Name recorded as the source; defaults to the checkpoint's.
    pub name: Option<String>,
    /// Seconds since the epoch for the `created` metadata (`SOURCE_DATE_EPOCH`), for reproducible files.
    pub created_epoch: Option<u64>,
    /// What the q4 scale search weights each column's rounding error by.
    pub weighting: Weighting,
}

/// What the q4 scale search weights each column's rounding error by (see [`ColumnImportance`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Weighting {
    /// Equal weights: the plain least squared error.
    #[default]
    Uniform,
    /// The measured mean square of every matrix's input over this calibration text.
    Activations {
        /// The calibration text.
        text: String,
        /// How many of its tokens to run, from the start.
        tokens: usize,
    },
}

impl Weighting {
    /// The column weights this choice gives for `ckpt`. Measuring activations runs the model,
    /// built in memory in f16 (half the checkpoint's f32 size): the one step of a conversion
    /// whose memory grows with the model.
    pub fn importance(&self, ckpt: &Checkpoint) -> Result<ColumnImportance> {
        match self {
            Weighting::Uniform => Ok(ColumnImportance::uniform()),
            Weighting::Activations { text, tokens } => {
                let uniform = ColumnImportance::uniform();
                let file = ModelFile::from_bytes(&model_bytes(ckpt, &|_| DType::F16, &uniform)?);
                let model = Model::load(&file, false)?;
                ColumnImportance::from_activations(&model, text, *tokens)
            }
        }
    }
}

/// One tensor to write: its name in the file, and how to get its values from the checkpoint.
struct Planned {
    spec: TensorSpec,
    source: String,
    /// Conv1D weights are stored `(in, out)` by Hugging Face; we store `(out, in)`.
    transpose: bool,
    /// Only these rows of the source (a split embedding's part), else all.
    source_rows: Option<std::ops::Range<usize>>,
}

/// Chooses the dtype of each weight matrix by its name in the file.
pub(crate) type MatrixPolicy<'a> = &'a dyn Fn(&str) -> DType;

/// The tensors of a GPT-2 in file order, matrices in the dtypes `quant` picks; with `frequent`
/// rows, the token embedding (and LM head) is split into those rows in q8 and the rest.
fn plan(
    cfg: &HfConfig,
    quant: MatrixPolicy<'_>,
    explicit_lm_head: bool,
    frequent: usize,
) -> Vec<Planned> {
    let (e, i, v, c) = (cfg.n_embd, cfg.n_inner, cfg.n_vocab, cfg.n_positions);
    let mut out = token_matrix("wte", v, e, quant, frequent);
    out.push(embedding("wpe.weight", c, e, quant));
    for l in 0..cfg.n_layer {
        let p = format!("h.{l}");
        out.push(vector(&format!("{p}.ln_1.weight"), e));
        out.push(vector(&format!("{p}.ln_1.bias"), e));
        out.push(matrix(
            &format!("{p}.attn.c_attn.weight"),
            3 * e,
            e,
            quant,
            true,
        ));
        out.push(vector(&format!("{p}.attn.c_attn.bias"), 3 * e));
        out.push(matrix(
            &format!("{p}.attn.c_proj.weight"),
            e,
            e,
            quant,
            true,
        ));
        out.push(vector(&format!("{p}.attn.c_proj.bias"), e));
        out.push(vector(&format!("{p}.ln_2.weight"), e));
        out.push(vector(&format!("{p}.ln_2.bias"), e));
        out.push(matrix(&format!("{p}.mlp.c_fc.weight"), i, e, quant, true));
        out.push(vector(&format!("{p}.mlp.c_fc.bias"), i));
        out.push(matrix(&format!("{p}.mlp.c_proj.weight"), e, i, quant, true));
        out.push(vector(&format!("{p}.mlp.c_proj.bias"), e));
    }
    out.push(vector("ln_f.weight", e));
    out.push(vector("ln_f.bias", e));
    if explicit_lm_head {
        out.extend(token_matrix("lm_head", v, e, quant, frequent));
    }
    out
}

/// `PREFIX.weight`, `(rows, cols)`; with `frequent` rows, `PREFIX.frequent.weight` (those rows in
/// q8) and `PREFIX.weight` (the others), as the loader expects.
fn token_matrix(
    prefix: &str,
    rows: usize,
    cols: usize,
    quant: MatrixPolicy<'_>,
    frequent: usize,
) -> Vec<Planned> {
    let name = format!("{prefix}.weight");
    if frequent == 0 {
        return vec![matrix(&name, rows, cols, quant, false)];
    }
    let mut head = matrix(&name, frequent, cols, &|_| DType::Q8, false);
    head.spec.name = format!("{prefix}.frequent.weight");
    head.source_rows = Some(0..frequent);
    let mut tail = matrix(&name, rows - frequent, cols, quant, false);
    tail.source_rows = Some(frequent..rows);
    vec![head, tail]
}

fn vector(name: &str, n: usize) -> Planned {
    Planned {
        spec: TensorSpec {
            name: name.to_string(),
            dtype: DType::F32,
            shape: vec![n as u64],
        },
        source: name.to_string(),
        transpose: false,
        source_rows: None,
    }
}

/// A weight matrix `(rows, cols)` in the quantisation's dtype, or f16 when its rows are not a
/// whole number of blocks.
fn matrix(
    name: &str,
    rows: usize,
    cols: usize,
    quant: MatrixPolicy<'_>,
    transpose: bool,
) -> Planned {
    let mut dtype = quant(name);
    if matches!(dtype, DType::Q8 | DType::Q4) && !cols.is_multiple_of(QK) {
        dtype = DType::F16;
    }
    Planned {
        spec: TensorSpec {
            name: name.to_string(),
            dtype,
            shape: vec![rows as u64, cols as u64],
        },
        source: name.to_string(),
        transpose,
        source_rows: None,
    }
}

/// Position embeddings: small and read one row per token, so f16 unless everything is f32.
fn embedding(name: &str, rows: usize, cols: usize, quant: MatrixPolicy<'_>) -> Planned {
    let mut p = matrix(name, rows, cols, quant, false);
    p.spec.dtype = if quant(name) == DType::F32 {
        DType::F32
    } else {
        DType::F16
    };
    p
}

fn hparams(cfg: &HfConfig) -> Result<HParams> {
    let activation = match cfg.activation_function.as_str() {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "gelu" => Activation::GeluErf,
        other => {
            return Err(Error::format(format!(
                "unsupported activation_function {other:?}"
            )))
        }
    };
    let u = |name: &str, v: usize| {
        u32::try_from(v).map_err(|_| Error::format(format!("{name} = {v} is too large")))
    };
    Ok(HParams {
        n_vocab: u("vocab_size", cfg.n_vocab)?,
        n_ctx: u("n_positions", cfg.n_positions)?,
        n_embd: u("n_embd", cfg.n_embd)?,
        n_head: u("n_head", cfg.n_head)?,
        n_layer: u("n_layer", cfg.n_layer)?,
        n_inner: u("n_inner", cfg.n_inner)?,
        layer_norm_eps: cfg.layer_norm_epsilon,
        activation,
        bos_id: cfg.bos_token_id,
        eos_id: cfg.eos_token_id,
    })
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn utc_date(epoch_secs: u64) -> String {
    // Days to civil date, after Howard Hinnant's `civil_from_days`.
    let z = (epoch_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn metadata(ckpt: &Checkpoint, opts: &Options, plan: &[Planned]) -> Vec<(String, String)> {
    let epoch = opts.created_epoch.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let counts = [DType::F32, DType::F16, DType::Q8, DType::Q4]
        .iter()
        .map(|d| (d.name(), plan.iter().filter(|p| p.spec.dtype == *d).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| format!("{n} {d}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        ("converter".into(), CONVERTER.into()),
        (
            "source".into(),
            opts.name.clone().unwrap_or_else(|| ckpt.source_name()),
        ),
        ("created".into(), utc_date(epoch)),
        ("quant".into(), opts.quant.name().into()),
        ("quant.block_size".into(), QK.to_string()),
        ("quant.tensors".into(), counts),
    ]
}

/// What [`convert_with`] reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// Tensor `index` of `count` (its name in the file) is about to be converted.
    Tensor {
        /// Position in the file, from 0.
        index: usize,
        /// Number of tensors in the file.
        count: usize,
        /// Its name in the file.
        name: &'a str,
    },
    /// `done` of the `total` bytes of checkpoint data have been converted and written.
    Progress {
        /// Bytes of the checkpoint's tensors consumed so far.
        done: u64,
        /// Bytes of the checkpoint's tensors the conversion reads in all.
        total: u64,
    },
    /// A partial output left by a conversion that died (killed, or a crash) was removed.
    RemovedStale(&'a Path),
    /// A partial output of another conversion that is still running was left alone.
    OtherPartial(&'a Path),
}

/// What a finished conversion wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Size of the output file in bytes.
    pub bytes: u64,
    /// Number of model parameters stored (every tensor's elements).
    pub weights: u64,
}

impl Summary {
    /// Bits of the file per parameter (header, tokenizer and scales included).
    pub fn bits_per_weight(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.weights.max(1) as f64
    }
}

/// Converts the checkpoint in `dir` to `out`. `progress(i, n, name)` is called before each
/// tensor is converted. See [`convert_with`].
pub fn convert(
    dir: &Path,
    out: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<()> {
    convert_with(dir, out, opts, &mut |e| {
        if let Event::Tensor { index, count, name } = e {
            progress(index, count, name);
        }
    })
    .map(|_| ())
}

/// Converts the checkpoint in `dir` to `out`, reporting [`Event`]s. The file is written to
/// `OUT.partial-PID` next to `out` ([`output`]) and renamed into place when complete; partial
/// files of dead conversions are removed first. Rows are encoded on the current rayon pool; the
/// bytes do not depend on its size.
pub fn convert_with(
    dir: &Path,
    out: &Path,
    opts: &Options,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    if out.exists() && !opts.force {
        return Err(Error::invalid(format!(
            "{} already exists; pass --force to replace it",
            out.display()
        )));
    }
    for stale in output::stale_partials(out) {
        if stale.alive {
            events(Event::OtherPartial(&stale.path));
        } else if std::fs::remove_file(&stale.path).is_ok() {
            events(Event::RemovedStale(&stale.path));
        }
    }
    let ckpt = Checkpoint::open(dir)?;
    let importance = opts.weighting.importance(&ckpt)?;
    let policy = |name: &str| opts.quant.matrix_dtype(name);
    let (writer, planned) = prepare(&ckpt, &policy, opts.quant, |planned| {
        metadata(&ckpt, opts, planned)
    })?;
    let weights = planned
        .iter()
        .map(|p| p.spec.shape.iter().product::<u64>())
        .sum();
    let total = planned.iter().map(|p| source_bytes(&ckpt, p)).sum();
    let (n, mut done) = (planned.len(), 0u64);
    let data = |i: usize, _: &TensorEntry, sink: &mut ByteSink<'_>| {
        let p = &planned[i];
        events(Event::Tensor {
            index: i,
            count: n,
            name: &p.spec.name,
        });
        write_tensor(&ckpt, p, &importance, sink, &mut |bytes| {
            done += bytes;
            events(Event::Progress { done, total });
        })
    };
    let partial = PartialFile::new(out);
    // An existing output is only replaced with --force; without it the finished file is linked
    // into place, which also refuses an output that appears while we convert.
    writer.write_streaming(out, partial.path(), opts.force, data)?;
    let bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(Summary { bytes, weights })
}

/// A writer for `ckpt` with its matrices in the dtypes `policy` picks, and the tensors in the
/// order the writer asks for their bytes.
/// `quant` decides whether the token embedding is split (see [`Quant::frequent_rows`]).
fn prepare(
    ckpt: &Checkpoint,
    policy: MatrixPolicy<'_>,
    quant: Quant,
    metadata: impl FnOnce(&[Planned]) -> Vec<(String, String)>,
) -> Result<(ModelWriter, Vec<Planned>)> {
    let cfg = &ckpt.config;
    let tokenizer = Tokenizer::from_hf(ckpt.read_vocab()?, &ckpt.read_merges()?)?;
    let mut section = Vec::new();
    tokenizer.write_section(&mut section);
    let explicit_lm_head = ckpt.has_lm_head() && !ckpt.lm_head_is_tied()?;
    let frequent = quant.frequent_rows(cfg, explicit_lm_head);
    let planned = plan(cfg, policy, explicit_lm_head, frequent);
    let specs = planned.iter().map(|p| p.spec.clone()).collect();
    let writer = ModelWriter::new(hparams(cfg)?, metadata(&planned), section, specs)?;
    Ok((writer, planned))
}

/// The whole model file for `ckpt` in memory, matrices in the dtypes `policy` picks, none split
/// (no metadata: for measurements, not for users).
pub(crate) fn model_bytes(
    ckpt: &Checkpoint,
    policy: MatrixPolicy<'_>,
    importance: &ColumnImportance,
) -> Result<Vec<u8>> {
    let (writer, planned) = prepare(ckpt, policy, Quant::F32, |_| Vec::new())?;
    writer.write_to_vec(|i, entry| {
        let mut bytes = Vec::with_capacity(entry.len as usize);
        let mut sink = |b: &[u8]| {
            bytes.extend_from_slice(b);
            Ok(())
        };
        write_tensor(ckpt, &planned[i], importance, &mut sink, &mut |_| {})?;
        Ok(bytes)
    })
}

/// The names and sizes (in weights) of `ckpt`'s weight matrices in file order, position
/// embeddings excluded (they are never quantised).
pub(crate) fn matrix_names(ckpt: &Checkpoint) -> Result<Vec<(String, u64)>> {
    let explicit_lm_head = ckpt.has_lm_head() && !ckpt.lm_head_is_tied()?;
    let names = plan(&ckpt.config, &|_| DType::F32, explicit_lm_head, 0)
        .into_iter()
        .filter(|p| p.spec.shape.len() == 2 && p.spec.name != "wpe.weight")
        .map(|p| (p.spec.name, p.spec.shape.iter().product()))
        .collect();
    Ok(names)
}

/// Source elements decoded and encoded at a time: the chunk's `f32` values take 8 MB.
const CHUNK_VALUES: usize = 1 << 21;

/// Bytes of checkpoint data the conversion of `p` reads.
fn source_bytes(ckpt: &Checkpoint, p: &Planned) -> u64 {
    let elem = ckpt.dtype(&p.source).map_or(0, |d| d.float_size()) as u64;
    p.spec.shape.iter().product::<u64>() * elem
}

/// Converts tensor `p` into `sink`, a chunk of rows at a time, releasing each chunk's input once
/// it is encoded; `consumed(bytes)` counts the input bytes done.
fn write_tensor(
    ckpt: &Checkpoint,
    p: &Planned,
    importance: &ColumnImportance,
    sink: &mut ByteSink<'_>,
    consumed: &mut dyn FnMut(u64),
) -> Result<()> {
    let view = ckpt.view(&p.source)?;
    let cols = *p.spec.shape.last().unwrap_or(&1) as usize;
    let rows = p.spec.shape.iter().rev().skip(1).product::<u64>() as usize;
    let elem = source_bytes(ckpt, p) / (rows * cols).max(1) as u64;
    let weights = importance.get(&p.spec.name).filter(|w| w.len() == cols);
    let encode = |values: &[f32], out: &mut Vec<u8>| {
        let row_bytes = p.spec.dtype.row_bytes(cols as u64).unwrap_or(0) as usize;
        out.resize(values.len() / cols * row_bytes, 0);
        encode_rows(p.spec.dtype, values, cols, weights, out);
    };
    let chunk_rows = (CHUNK_VALUES / cols).max(1);
    let mut out = Vec::new();
    if p.transpose {
        // A Conv1D weight is read whole (the largest is 4·n_embd² values), then streamed out.
        let values = view.read_transposed()?;
        view.release(0..view.numel());
        for chunk in values.chunks(chunk_rows * cols) {
            encode(chunk, &mut out);
            sink(&out)?;
            consumed(chunk.len() as u64 * elem);
        }
        return Ok(());
    }
    let first = p.source_rows.as_ref().map_or(0, |r| r.start);
    let mut values = Vec::new();
    for r0 in (0..rows).step_by(chunk_rows) {
        let n = chunk_rows.min(rows - r0);
        let start = (first + r0) * cols;
        values.resize(n * cols, 0.0);
        read_chunk(&view, start, &mut values, cols)?;
        encode(&values, &mut out);
        sink(&out)?;
        consumed(values.len() as u64 * elem);
    }
    Ok(())
}

/// Decodes elements `start..start + out.len()` of `view` and releases their pages.
fn read_chunk(view: &TensorView<'_>, start: usize, out: &mut [f32], cols: usize) -> Result<()> {
    let read = view.par_read_into(start, out, cols);
    view.release(start..start + out.len());
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_824_000), "2026-11-28");
    }
}
