//! Profile of the matrix products on the GPT-2 124M shapes, one shape at a time.
//!
//! `cargo run --release --example matmul_profile -- <decode|prefill> <threads> <q8|q4> [tokens]`
//!
//! * decode: one token against enough copies of each matrix that the weights come from DRAM as in
//!   a real decode step (`BUDGET_KIB` sets how many KiB of copies; 1 keeps one copy, in cache),
//!   LM head included.
//! * prefill: a batch of `tokens` (default 128) against one copy (a prompt's batch reuses the
//!   weights from cache), without the LM head (a prefill computes only the last token's logits),
//!   each product followed by its layer's epilogue (bias, then GELU or the residual add) as
//!   `linear_batch` runs it in the model.
//!
//! `SHAPE=mlp.c_proj` (a name below) profiles that product alone.
//!
//! Prints the median time of each product and their sum per token or per pass. With one thread
//! and `CLOCK=cpu`, the time is the thread's CPU time (from `/proc/thread-self/schedstat`), which
//! other processes sharing the machine disturb less than the wall clock.

use std::time::Instant;

use gpt2q::aligned::AlignedVec;
use gpt2q::kernels::{self, MatmulScratch, Then};
use gpt2q::mmap::{self, ModelFile};
use gpt2q::quant::{encode_tensor, DType};
use gpt2q::rng::Rng;
use gpt2q::tensor::{Matrix, Weights};

/// (name, rows, cols, products per token, what follows the product in a prefill).
const SHAPES: [(&str, usize, usize, usize, Then); 5] = [
    ("attn.c_attn", 2304, 768, 12, Then::Store),
    ("attn.c_proj", 768, 768, 12, Then::Add),
    ("mlp.c_fc", 3072, 768, 12, Then::GeluTanh),
    ("mlp.c_proj", 768, 3072, 12, Then::Add),
    ("lm_head", 50257, 768, 1, Then::Store),
];

fn matrix(file: &ModelFile, dtype: DType, rows: usize, cols: usize) -> Matrix<'_> {
    let b = file.bytes();
    let w = match dtype {
        DType::Q4 => Weights::Q4(mmap::as_q4(b).unwrap()),
        _ => Weights::Q8(mmap::as_q8(b).unwrap()),
    };
    Matrix::new(rows, cols, w).unwrap()
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Median of `rounds` timings of `f` (wall clock, or this thread's CPU time), in microseconds.
fn median_us(rounds: usize, cpu_time: bool, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            if cpu_time {
                let t = thread_cpu_ns();
                f();
                (thread_cpu_ns() - t) / 1e3
            } else {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e6
            }
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[rounds / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let decode = args.get(1).is_none_or(|m| m != "prefill");
    let threads: usize = args.get(2).map_or(1, |s| s.parse().unwrap());
    let dtype = match args.get(3).map_or("q8", |s| s.as_str()) {
        "q4" => DType::Q4,
        _ => DType::Q8,
    };
    let tokens: usize = if decode {
        1
    } else {
        args.get(4).map_or(128, |s| s.parse().unwrap())
    };
    let cpu_time = threads == 1 && std::env::var("CLOCK").is_ok_and(|c| c == "cpu");
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let shapes = if decode { &SHAPES[..] } else { &SHAPES[..4] };
    let mut scratch = MatmulScratch::new(3072, if decode { 50257 } else { 3072 }, tokens);
    let mut total_us = 0.0;
    let mut rng = Rng::new(7);
    let only = std::env::var("SHAPE").ok();
    for &(name, rows, cols, per_token, then) in shapes {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let one = encode_tensor(dtype, &rng.floats(rows * cols, 0.05), cols);
        let budget: usize = std::env::var("BUDGET_KIB").map_or(96 << 10, |s| s.parse().unwrap());
        let copies = if decode {
            ((budget << 10) / one.len()).max(1)
        } else {
            1
        };
        let files: Vec<ModelFile> = (0..copies).map(|_| ModelFile::from_bytes(&one)).collect();
        let ms: Vec<Matrix<'_>> = files.iter().map(|f| matrix(f, dtype, rows, cols)).collect();
        let x = rng.floats(cols * tokens, 0.05);
        // As the session's buffers: starting on a cache line.
        let mut y = AlignedVec::zeroed(rows * tokens);
        let bias = vec![0f32; rows];
        let med = median_us(7, cpu_time, || {
            for m in &ms {
                if decode {
                    kernels::matmul(m, &x, tokens, &mut y, &mut scratch);
                } else {
                    // As the model runs it: bias and epilogue on the way out.
                    kernels::linear_batch(m, &bias, &x, tokens, &mut y, &mut scratch, then);
                }
            }
        }) / ms.len() as f64;
        let gops = 2.0 * (rows * cols * tokens) as f64 / med / 1e3;
        println!(
            "{name:12} {rows:5}x{cols:4} x{tokens}: median {med:8.1} us  {:5.1} GB/s  {gops:6.1} GOP/s  x{per_token} = {:7.0} us",
            one.len() as f64 / med / 1e3,
            med * per_token as f64
        );
        total_us += med * per_token as f64;
    }
    println!(
        "sum of products: {total_us:.0} us ({:.1} tok/s if nothing else)",
        tokens as f64 * 1e6 / total_us
    );
}
