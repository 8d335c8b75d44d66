//! The tensor-sensitivity report: how much each weight matrix alone suffers from 4-bit storage.
//!
//! For every matrix of a checkpoint, a model is built in memory with that one matrix in q4 and
//! everything else in f16, and its next-token distributions on a calibration text are compared
//! with the all-f16 model's (mean and 99th-percentile KL divergence, top-1 agreement). The
//! ranking is the evidence behind the mixed-precision policy of `--quant q4`
//! ([`crate::convert::Quant::Q4`]).

use std::path::Path;

use gpt2q::format::DType;
use gpt2q::mmap::ModelFile;
use gpt2q::perplexity::compare;
use gpt2q::{model::Model, session::Session};
use gpt2q::{Error, Result};

use crate::checkpoint::Checkpoint;
use crate::convert::{matrix_names, model_bytes};
use crate::importance::ColumnImportance;

/// How much of the calibration text to score.
#[derive(Clone, Copy, Debug)]
pub struct SensitivityOptions {
    /// Tokens of the text used (from its start).
    pub tokens: usize,
    /// Window length: the text is scored in non-overlapping windows of this many tokens.
    pub window: usize,
}

impl Default for SensitivityOptions {
    fn default() -> Self {
        SensitivityOptions {
            tokens: 2048,
            window: 256,
        }
    }
}

/// What storing one matrix in q4 does to the model's predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    /// The matrix's name in the file, e.g. `h.3.mlp.c_proj.weight`.
    pub tensor: String,
    /// Its number of weights.
    pub weights: u64,
    /// Mean KL divergence of the next-token distribution from the all-f16 model's.
    pub kl_mean: f64,
    /// 99th percentile of the KL divergence.
    pub kl_p99: f64,
    /// Share of positions whose most likely next token is the all-f16 model's.
    pub top1: f64,
}

/// Measures every matrix of the checkpoint in `dir` on `text`, most sensitive first.
/// `progress(i, n, name)` is called before each matrix is measured.
pub fn tensor_sensitivity(
    dir: &Path,
    text: &str,
    opts: SensitivityOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<Sensitivity>> {
    let ckpt = Checkpoint::open(dir)?;
    let importance = ColumnImportance::uniform();
    let base_file = ModelFile::from_bytes(&model_bytes(&ckpt, &|_| DType::F16, &importance)?);
    let base = Model::load(&base_file, false)?;
    let window = opts.window.min(base.hparams.n_ctx as usize);
    let mut ids = base.tokenizer.encode(text);
    ids.truncate(opts.tokens);
    if ids.len() < 2 {
        return Err(Error::invalid(format!(
            "the calibration text has {} tokens; at least 2 are needed",
            ids.len()
        )));
    }
    let window = window.min(ids.len());
    let names = matrix_names(&ckpt)?;
    let mut out = Vec::with_capacity(names.len());
    for (i, (name, weights)) in names.iter().enumerate() {
        progress(i, names.len(), name);
        let only_this = |n: &str| if n == name { DType::Q4 } else { DType::F16 };
        let file = ModelFile::from_bytes(&model_bytes(&ckpt, &only_this, &importance)?);
        let model = Model::load(&file, false)?;
        let mut session = Session::for_scoring(&model, window)?;
        let mut base_session = Session::for_scoring(&base, window)?;
        let (_, cmp) = compare(&mut session, &mut base_session, &ids, window, window)?;
        out.push(Sensitivity {
            tensor: name.clone(),
            weights: *weights,
            kl_mean: cmp.kl_mean(),
            kl_p99: cmp.kl_percentile(99.0),
            top1: cmp.top1_agreement(),
        });
    }
    out.sort_by(|a, b| b.kl_mean.total_cmp(&a.kl_mean));
    Ok(out)
}

/// The report as a Markdown table.
pub fn format_report(rows: &[Sensitivity]) -> String {
    let mut s =
        String::from("| tensor | weights | mean KL | p99 KL | top-1 |\n|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.6} | {:.6} | {:.4} |\n",
            r.tensor, r.weights, r.kl_mean, r.kl_p99, r.top1
        ));
    }
    s
}
