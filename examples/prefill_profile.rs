//! Throwaway prefill profile: times `kernels::matmul` for a batch of tokens on each GPT-2 124M
//! matrix shape (one copy each, as a prompt's batch reuses the weights from cache), and the sum
//! over a forward pass's matrices without the LM head (a prefill computes only the last token's
//! logits). `cargo run --release --example prefill_profile -- <threads> <q8|q4> [tokens]`.

use std::time::Instant;

use gpt2q::kernels::{self, MatmulScratch};
use gpt2q::mmap::{self, ModelFile};
use gpt2q::quant::{encode_tensor, DType};
use gpt2q::rng::Rng;
use gpt2q::tensor::{Matrix, Weights};

/// Values uniform in ±0.05, the same for the same seed.
fn random(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).floats(n, 0.05)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map_or(1, |s| s.parse().unwrap());
    let dtype = match args.get(2).map_or("q8", |s| s.as_str()) {
        "q4" => DType::Q4,
        _ => DType::Q8,
    };
    let tokens: usize = args.get(3).map_or(128, |s| s.parse().unwrap());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let shapes = [
        ("attn.c_attn", 2304, 768, 12),
        ("attn.c_proj", 768, 768, 12),
        ("mlp.c_fc", 3072, 768, 12),
        ("mlp.c_proj", 768, 3072, 12),
    ];
    let mut scratch = MatmulScratch::new(3072, 3072, tokens);
    let mut total_us = 0.0;
    for (name, rows, cols, per_pass) in shapes {
        let file = ModelFile::from_bytes(&encode_tensor(dtype, &random(rows * cols, 7), cols));
        let b = file.bytes();
        let w = match dtype {
            DType::Q4 => Weights::Q4(mmap::as_q4(b).unwrap()),
            _ => Weights::Q8(mmap::as_q8(b).unwrap()),
        };
        let m = Matrix::new(rows, cols, w).unwrap();
        let x = random(cols * tokens, 3);
        let mut y = vec![0f32; rows * tokens];
        let mut samples: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                kernels::matmul(&m, &x, tokens, &mut y, &mut scratch);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let med = samples[3];
        let gops = 2.0 * (rows * cols * tokens) as f64 / med / 1e3;
        println!(
            "{name:12} {rows:5}x{cols:4} x{tokens}: median {med:8.1} us  {gops:6.1} GOP/s  x{per_pass}/pass = {:7.0} us",
            med * per_pass as f64
        );
        total_us += med * per_pass as f64;
    }
    println!(
        "sum of matmuls per pass: {:.0} us ({:.1} tok/s if nothing else)",
        total_us,
        tokens as f64 * 1e6 / total_us
    );
}
