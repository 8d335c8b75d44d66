//! `gpt2q info`: what a model file holds and how much memory a run needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gpt2q::format::Activation;
use gpt2q::mmap::ModelFile;
use gpt2q::model::{Model, Session};
use gpt2q::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (.g2q).
    model: PathBuf,
    /// Context size to plan memory for (default: the model's maximum).
    #[arg(short, long)]
    ctx: Option<usize>,
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn run(args: Args) -> Result<()> {
    let file = ModelFile::open(&args.model)?;
    let model = Model::load(&file, false)?;
    let hp = &model.hparams;
    println!(
        "file:        {} ({:.1} MiB)",
        args.model.display(),
        mib(file.bytes().len())
    );
    for (k, v) in &model.metadata {
        println!("{:<12} {v}", format!("{k}:"));
    }
    let act = match hp.activation {
        Activation::GeluTanh => "gelu (tanh)",
        Activation::GeluErf => "gelu (erf)",
    };
    println!(
        "model:       {} layers, {} wide, {} heads of {}, MLP {}, vocab {}, context {}, {act}, eps {}",
        hp.n_layer, hp.n_embd, hp.n_head, hp.head_dim(), hp.n_inner, hp.n_vocab, hp.n_ctx, hp.layer_norm_eps
    );
    let mut by_dtype: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
    for t in &model.tensors {
        let e = by_dtype.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.shape.iter().product::<u64>();
        e.2 += t.len;
    }
    for (dtype, (n, params, bytes)) in &by_dtype {
        println!(
            "tensors:     {n:>3} {dtype:<4} {params:>12} weights {:>9.1} MiB ({:.2} bits/weight)",
            mib(*bytes as usize),
            *bytes as f64 * 8.0 / *params as f64
        );
    }
    let ctx = args.ctx.unwrap_or(hp.n_ctx as usize);
    let session = Session::new(&model, ctx)?;
    let weights = file.bytes().len();
    println!(
        "memory:      weights {:.1} MiB (mapped, shared) + KV cache and scratch at ctx {ctx} {:.1} MiB = {:.1} MiB",
        mib(weights),
        mib(session.memory_bytes()),
        mib(weights + session.memory_bytes())
    );
    println!(
        "per token:   {:.1} MiB of weights read",
        mib(model.weight_bytes_per_token())
    );
    Ok(())
}
