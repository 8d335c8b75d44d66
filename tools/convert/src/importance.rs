//! How much each input column of a weight matrix matters, for the error-weighted q4 scale search.
//!
//! The rounding error of weight `W[i][j]` reaches the output as `e · x_j`, so on average it costs
//! in proportion to the mean square of the activation `x_j` that the column multiplies. The
//! estimate here is measured: the mean square of every matrix's input over a forward pass on
//! calibration text (`gpt2q-convert --calib`). Without it every column weighs the same.
//!
//! Measured on the shared tiny model it does not help (docs/QUANTIZATION.md): that model has no
//! outlier channels, and its 4-bit error is dominated by which *rows* (tokens) are hit, not which
//! columns. It is kept for checkpoints with GPT-2's large outlier channels.

use std::collections::HashMap;

use gpt2q::model::Model;
use gpt2q::session::{MatrixInput, Session};
use gpt2q::{Error, Result};

/// Window length of the calibration pass (capped by the model's context).
const CALIBRATION_WINDOW: usize = 256;

/// Per-column weights of the q4 scale search, by matrix name in the file.
#[derive(Clone, Debug, Default)]
pub struct ColumnImportance {
    by_matrix: HashMap<String, Vec<f32>>,
}

impl ColumnImportance {
    /// No estimate for any matrix: every block minimises its plain squared error.
    pub fn uniform() -> Self {
        Self::default()
    }

    /// The measured estimate: the mean square of every matrix's input over the first `tokens`
    /// tokens of `text`, run in windows of 256 through `model` (the converter passes the
    /// checkpoint stored in f16, which computes in f32; f16 storage halves the memory of the pass
    /// and moves the statistics by far less than their sampling noise).
    pub fn from_activations(model: &Model, text: &str, tokens: usize) -> Result<Self> {
        let mut ids = model.tokenizer.encode(text);
        ids.truncate(tokens);
        if ids.len() < 2 {
            return Err(Error::invalid(format!(
                "the calibration text has {} tokens; at least 2 are needed",
                ids.len()
            )));
        }
        let window = CALIBRATION_WINDOW.min(model.hparams.n_ctx as usize);
        let mut session = Session::for_scoring(model, window)?;
        let mut sums: HashMap<MatrixInput, (Vec<f64>, usize)> = HashMap::new();
        let mut accumulate = |input: MatrixInput, rows: &[f32]| {
            let cols = match input {
                MatrixInput::MlpProj(_) => model.hparams.n_inner as usize,
                _ => model.hparams.n_embd as usize,
            };
            let (sum, count) = sums.entry(input).or_insert_with(|| (vec![0.0; cols], 0));
            for row in rows.chunks_exact(cols) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += (v as f64) * (v as f64);
                }
                *count += 1;
            }
        };
        for piece in ids.chunks(window) {
            session.reset();
            for batch in piece.chunks(session.batch()) {
                session.forward_observed(batch, &mut accumulate)?;
            }
        }
        let mut importance = Self::uniform();
        for (input, (sum, count)) in sums {
            let mean = sum.iter().map(|s| (s / count as f64) as f32).collect();
            for name in matrix_names_reading(input) {
                importance.insert(&name, floored(Vec::clone(&mean)));
            }
        }
        Ok(importance)
    }

    /// The column weights of matrix `name`, if there is an estimate for it.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.by_matrix.get(name).map(Vec::as_slice)
    }

    /// Sets the column weights of matrix `name`.
    pub fn insert(&mut self, name: &str, weights: Vec<f32>) {
        self.by_matrix.insert(name.to_string(), weights);
    }
}

/// The file names of the matrices that read `input`.
fn matrix_names_reading(input: MatrixInput) -> Vec<String> {
    match input {
        MatrixInput::AttnQkv(l) => vec![format!("h.{l}.attn.c_attn.weight")],
        MatrixInput::AttnProj(l) => vec![format!("h.{l}.attn.c_proj.weight")],
        MatrixInput::MlpFc(l) => vec![format!("h.{l}.mlp.c_fc.weight")],
        MatrixInput::MlpProj(l) => vec![format!("h.{l}.mlp.c_proj.weight")],
        MatrixInput::LmHead => vec!["wte.weight".into(), "lm_head.weight".into()],
    }
}

/// Raises every weight to at least 1% of the mean, so a column whose activation happens to be
/// tiny still keeps a say in its block's scale.
/// Non-finite or negative weights count as the floor; with no usable weight at all, the weights
/// are equal.
pub(crate) fn floored(mut w: Vec<f32>) -> Vec<f32> {
    let usable = || w.iter().filter(|v| v.is_finite() && **v >= 0.0);
    let mean = usable().map(|&v| v as f64).sum::<f64>() / usable().count().max(1) as f64;
    let floor = (0.01 * mean) as f32;
    if !(floor > 0.0 && floor.is_finite()) {
        w.fill(1.0);
        return w;
    }
    for v in &mut w {
        if !(v.is_finite() && *v >= floor) {
            *v = floor;
        }
    }
    w
}
