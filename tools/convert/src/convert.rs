//! Turning a [`Checkpoint`] into a `.g2q` file: which dtype each tensor gets, the transposition
//! of GPT-2's Conv1D weights to `(out, in)`, metadata, and the atomic write.
//!
//! It owns the conversion policy; the byte layout is the library's (`gpt2q::format`), and reading
//! the Hugging Face files is [`crate::checkpoint`]'s.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use gpt2q::format::{Activation, DType, HParams, ModelWriter, TensorEntry, TensorSpec};
use gpt2q::quant::{encode_tensor_weighted, QK};
use gpt2q::tokenizer::Tokenizer;
use gpt2q::{Error, Result};

use crate::checkpoint::{Checkpoint, HfConfig};
use crate::importance::ColumnImportance;

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
    /// The column weights this choice gives for `ckpt`.
    pub fn importance(&self, ckpt: &Checkpoint) -> Result<ColumnImportance> {
        match self {
            Weighting::Uniform => Ok(ColumnImportance::uniform()),
            Weighting::Activations { text, tokens } => {
                ColumnImportance::from_activations(ckpt, text, *tokens)
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
    if matches!(dtype, DType::Q8 | DType::Q4) && cols % QK != 0 {
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

/// Converts the checkpoint in `dir` to `out`. `progress(i, n, name)` is called before each
/// tensor is converted.
pub fn convert(
    dir: &Path,
    out: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<()> {
    if out.exists() && !opts.force {
        return Err(Error::invalid(format!(
            "{} already exists; pass --force to replace it",
            out.display()
        )));
    }
    let ckpt = Checkpoint::open(dir)?;
    let importance = opts.weighting.importance(&ckpt)?;
    let policy = |name: &str| opts.quant.matrix_dtype(name);
    let (writer, planned) = prepare(&ckpt, &policy, opts.quant, |planned| {
        metadata(&ckpt, opts, planned)
    })?;
    let n = planned.len();
    let data = |i: usize, _: &TensorEntry| {
        let p = &planned[i];
        progress(i, n, &p.spec.name);
        tensor_bytes(&ckpt, p, &importance)
    };
    if opts.force {
        writer.write_atomic(out, data)
    } else {
        // Also refuses an output that appears while we convert.
        writer.write_new(out, data)
    }
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
    writer.write_to_vec(|i, _| tensor_bytes(ckpt, &planned[i], importance))
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

fn tensor_bytes(ckpt: &Checkpoint, p: &Planned, importance: &ColumnImportance) -> Result<Vec<u8>> {
    let mut values = ckpt.read(&p.source)?;
    let cols = *p.spec.shape.last().unwrap_or(&1) as usize;
    if let Some(rows) = &p.source_rows {
        values = values[rows.start * cols..rows.end * cols].to_vec();
    }
    if p.transpose {
        let rows = p.spec.shape[0] as usize;
        values = transpose(&values, cols, rows);
    }
    let weights = importance.get(&p.spec.name).filter(|w| w.len() == cols);
    Ok(encode_tensor_weighted(p.spec.dtype, &values, cols, weights))
}

/// Transposes a row-major `(rows, cols)` matrix into `(cols, rows)`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
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

    #[test]
    fn transpose_swaps_axes() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(transpose(&m, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
