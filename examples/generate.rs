//! Using gpt2q as a library: load a model, generate with a callback per token.
//!
//! ```sh
//! cargo run --release --example generate -- models/tiny-gpt2-q8.g2q "Once upon a time"
//! ```

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use gpt2q::generate::{generate, StopRules};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::Session;
use gpt2q::tokenizer::Utf8Stream;

fn main() -> gpt2q::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/tiny-gpt2-q8.g2q".into()),
    );
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());

    // The file is memory-mapped; the model borrows its weights from the map.
    let file = ModelFile::open(&path)?;
    let model = Model::load(&file, false)?;

    // A session holds the KV cache and scratch memory; several can share one model.
    let ids = model.tokenizer.encode(&prompt);
    let mut session = Session::new(&model, ids.len() + 48)?;
    let config = SamplerConfig {
        seed: 42,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(config, model.hparams.n_vocab as usize)?;

    let rules = StopRules {
        max_new_tokens: 48,
        stop_token: Some(model.hparams.eos_id),
    };
    let mut text = Utf8Stream::new();
    let mut history = Vec::new();
    print!("{prompt}");
    let stats = generate(
        &mut session,
        &mut sampler,
        &ids,
        rules,
        &mut history,
        |token| {
            // Called once per generated token, as soon as it is sampled.
            if token == model.hparams.eos_id {
                return ControlFlow::Break(());
            }
            if let Some(bytes) = model.tokenizer.token_bytes(token) {
                print!("{}", text.push(bytes));
                let _ = std::io::stdout().flush();
            }
            ControlFlow::Continue(())
        },
    )?;
    println!("{}", text.finish());
    eprintln!(
        "{} tokens at {:.1} tok/s",
        stats.generated_tokens,
        stats.decode_tokens_per_second()
    );
    Ok(())
}
