//! The `gpt2q` Python module (`gpt2q._gpt2q`, re-exported by `python/gpt2q/__init__.py`): a thin
//! layer over the gpt2q library. Every forward pass runs on the model's thread pool with the GIL
//! released ([`job`]); library errors become Python exceptions ([`errors`]).

mod chat;
mod errors;
mod job;
mod model;
mod options;
mod owned;

use std::path::PathBuf;

use gpt2q_convert::convert::{convert as convert_checkpoint, Options, Quant, Weighting};
use pyo3::prelude::*;

use crate::errors::{to_py, ModelError};

/// Converts the Hugging Face GPT-2 checkpoint in `src_dir` (config.json, model.safetensors,
/// vocab.json, merges.txt) into the `.g2q` file `out_path`, with matrices stored as `quant`
/// (f32, f16, q8, q4 or q4-pure), as `gpt2q-convert` does. The file is written next to
/// `out_path` and renamed into place when complete. An existing `out_path` is an error unless
/// `force`. `name` is recorded as the model's source (default: the checkpoint's).
#[pyfunction]
#[pyo3(signature = (src_dir, out_path, quant = "q8", force = false, name = None))]
fn convert(
    py: Python<'_>,
    src_dir: PathBuf,
    out_path: PathBuf,
    quant: &str,
    force: bool,
    name: Option<String>,
) -> PyResult<()> {
    let options = Options {
        quant: Quant::parse(quant).map_err(to_py)?,
        force,
        name,
        created_epoch: None,
        weighting: Weighting::default(),
    };
    py.detach(|| convert_checkpoint(&src_dir, &out_path, &options, &mut |_, _, _| {}))
        .map_err(to_py)
}

#[pymodule]
fn _gpt2q(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_class::<chat::Chat>()?;
    m.add_class::<job::TextStream>()?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    Ok(())
}
