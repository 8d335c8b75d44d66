//! `gpt2q info`: what a model file holds and how much memory a run needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gpt2q::format::Activation;
use gpt2q::kv_cache::KvType;
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::session::{self, SessionPlan};
use gpt2q::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (.g2q).
    model: PathBuf,
    /// Context size to plan memory for (default: the model's maximum, capped to --mem-limit).
    #[arg(short, long)]
    ctx: Option<usize>,
    /// KV cache element type to plan for: f32, f16 or q8.
    #[arg(long, default_value = "f16")]
    kv: KvType,
    /// Check the plan against this much memory (e.g. 300M; K, M, G are powers of 1024).
    #[arg(long, value_parser = parse_bytes)]
    mem_limit: Option<usize>,
    /// Plan for this many sessions sharing the weights (`gpt2q serve --parallel`).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Parses a byte count: a number with an optional `K`, `M` or `G` suffix (powers of 1024,
/// optionally followed by `B` or `iB`), e.g. `300M`, `1.5G`, `65536`.
pub(super) fn parse_bytes(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches("ib").trim_end_matches('b');
    let (num, mult) = match digits.chars().last() {
        Some('k') => (&digits[..digits.len() - 1], 1u64 << 10),
        Some('m') => (&digits[..digits.len() - 1], 1 << 20),
        Some('g') => (&digits[..digits.len() - 1], 1 << 30),
        Some('t') => (&digits[..digits.len() - 1], 1 << 40),
        _ => (digits, 1),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 300M, 1.5G or 65536"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{s:?} is not a size like 300M, 1.5G or 65536"));
    }
    Ok((value * mult as f64).min(usize::MAX as f64) as usize)
}

pub fn run(args: Args) -> Result<()> {
    let file = ModelFile::open(&args.model)?;
    let model = Model::load(&file, false)?;
    let hp = &model.hparams;
    outln!(
        "file:        {} ({:.1} MiB)",
        args.model.display(),
        mib(file.bytes().len())
    );
    for (k, v) in &model.metadata {
        outln!("{:<12} {v}", format!("{k}:"));
    }
    let act = match hp.activation {
        Activation::GeluTanh => "gelu (tanh)",
        Activation::GeluErf => "gelu (erf)",
    };
    outln!(
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
        outln!(
            "tensors:     {n:>3} {dtype:<4} {params:>12} weights {:>9.1} MiB ({:.2} bits/weight)",
            mib(*bytes as usize),
            *bytes as f64 * 8.0 / *params as f64
        );
    }
    let (matrix_weights, matrix_bytes) = model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 2 && t.name != "wpe.weight")
        .fold((0u64, 0u64), |(w, b), t| {
            (w + t.shape.iter().product::<u64>(), b + t.len)
        });
    outln!(
        "matrices:    {:.3} bits/weight over {matrix_weights} weights (scales included; position embedding excluded)",
        matrix_bytes as f64 * 8.0 / matrix_weights.max(1) as f64
    );
    outln!(
        "per token:   {:.1} MiB of weights read",
        mib(model.weight_bytes_per_token())
    );
    let weights = file.bytes().len();
    let SessionPlan {
        config,
        memory: plan,
    } = session::plan_slots(
        hp,
        weights,
        args.ctx,
        args.kv,
        args.mem_limit,
        args.parallel,
    )?;
    let ctx = config.ctx;
    let slots = match args.parallel {
        1 => String::new(),
        n => format!(", {n} sessions"),
    };
    outln!(
        "memory:      at ctx {ctx}, KV cache {}{slots}{}",
        args.kv,
        args.mem_limit.map_or(String::new(), |l| format!(
            " (--mem-limit {:.1} MiB)",
            mib(l)
        ))
    );
    outln!(
        "  weights    {:>9.1} MiB (mapped read-only, shared)",
        mib(plan.weights)
    );
    outln!("  KV cache   {:>9.1} MiB", mib(plan.kv_cache));
    outln!("  scratch    {:>9.1} MiB", mib(plan.scratch));
    outln!("  total      {:>9.1} MiB", mib(plan.total()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("300M"), Ok(300 << 20));
        assert_eq!(parse_bytes("300MiB"), Ok(300 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KB"), Ok(64 << 10));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1M").is_err());
        assert!(parse_bytes("12X").is_err());
    }
}
