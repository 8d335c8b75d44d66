//! Throwaway decode profile: times `kernels::matmul` for one token on the GPT-2 124M shapes,
//! cycling through enough copies of each matrix that the weights come from DRAM as in a real
//! decode step (`BUDGET_KIB` sets how many KiB of copies; 1 keeps one copy, in cache).
//! `cargo run --release --example decode_profile -- <threads> <q8|q4>`.

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
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let shapes = [
        ("attn.c_attn", 2304, 768, 12),
        ("attn.c_proj", 768, 768, 12),
        ("mlp.c_fc", 3072, 768, 12),
        ("mlp.c_proj", 768, 3072, 12),
        ("lm_head", 50257, 768, 1),
    ];
    let mut scratch = MatmulScratch::new(3072, 50257, 1);
    let mut total_us = 0.0;
    for (name, rows, cols, per_token) in shapes {
        let one = encode_tensor(dtype, &random(rows * cols, 7), cols);
        // At least 96 MiB of copies so each call streams from DRAM.
        let budget: usize = std::env::var("BUDGET_KIB").map_or(96 << 10, |s| s.parse().unwrap());
        let copies = ((budget << 10) / one.len()).max(1);
        let files: Vec<ModelFile> = (0..copies).map(|_| ModelFile::from_bytes(&one)).collect();
        let ms: Vec<Matrix<'_>> = files
            .iter()
            .map(|f| {
                let b = f.bytes();
                let w = match dtype {
                    DType::Q4 => Weights::Q4(mmap::as_q4(b).unwrap()),
                    _ => Weights::Q8(mmap::as_q8(b).unwrap()),
                };
                Matrix::new(rows, cols, w).unwrap()
            })
            .collect();
        let x = random(cols, 3);
        let mut y = vec![0f32; rows];
        let mut best = f64::MAX;
        let mut samples = Vec::new();
        for _round in 0..5 {
            let t = Instant::now();
            for m in &ms {
                kernels::matmul(m, &x, 1, &mut y, &mut scratch);
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / ms.len() as f64;
            samples.push(us);
            best = best.min(us);
        }
        samples.sort_by(f64::total_cmp);
        let med = samples[2];
        println!(
            "{name:12} {rows:5}x{cols:4}: median {med:8.1} us  best {best:8.1} us  {:5.1} GB/s  x{per_token}/token = {:7.0} us",
            one.len() as f64 / med / 1e3,
            med * per_token as f64
        );
        total_us += med * per_token as f64;
    }
    println!(
        "sum of matmuls per token: {:.0} us ({:.1} tok/s if nothing else)",
        total_us,
        1e6 / total_us
    );
}
