//! Multi-turn chat: the KV cache is kept between turns (only new tokens are run), replies match
//! a from-scratch generation, the context shifts when full, and the `gpt2q chat` binary; and the
//! stop-string hold-back of the generation loop that chat and `gpt2q run` share.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::gpt2q_command;

use gpt2q::chat::{Chat, ChatConfig, ChatTemplate};
use gpt2q::generate::{generate, ContextPolicy, Event, Generator, StopReason, StopRules, StopText};
use gpt2q::kv_cache::KvType;
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::{Session, SessionConfig};

fn default_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q")
}

fn config(system: &str, max_reply_tokens: usize) -> ChatConfig {
    ChatConfig {
        template: ChatTemplate::dialogpt(),
        system: system.into(),
        max_reply_tokens,
        keep: None,
    }
}

fn session<'m>(model: &'m Model<'m>, ctx: usize) -> Session<'m> {
    Session::with_config(model, SessionConfig::new(ctx).with_kv(KvType::F32)).unwrap()
}

fn sampler(model: &Model<'_>, seed: u64) -> Sampler {
    let config = SamplerConfig {
        seed,
        ..SamplerConfig::default()
    };
    Sampler::new(config, model.hparams.n_vocab as usize).unwrap()
}

fn collect(out: &mut Vec<u8>) -> impl FnMut(&[u8]) -> ControlFlow<()> + '_ {
    |b| {
        out.extend_from_slice(b);
        ControlFlow::Continue(())
    }
}

#[test]
fn second_turn_runs_only_its_new_tokens() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let mut s = session(&model, 256);
    let mut smp = sampler(&model, 7);
    let mut chat = Chat::new(&mut s, &mut smp, config("A friendly talk.", 12)).unwrap();
    let system = model.tokenizer.encode("A friendly talk.").len();
    assert_eq!((chat.position(), chat.keep()), (system, system));

    let mut out = Vec::new();
    let first = chat.turn("Hello, how are you?", collect(&mut out)).unwrap();
    let turn1 = model
        .tokenizer
        .encode("Hello, how are you?<|endoftext|>")
        .len();
    assert_eq!(first.fed_tokens, turn1);
    // The last reply token is sampled but not yet in the cache (nor the <|endoftext|> closing
    // a reply cut at the length limit).
    let pending = |stop| if stop == StopReason::EndOfText { 1 } else { 2 };
    let before = chat.history().len();
    assert_eq!(chat.position(), before - pending(first.stop));

    let text = "Tell me about the sea.";
    let second = chat.turn(text, collect(&mut out)).unwrap();
    let turn2 = model
        .tokenizer
        .encode(&format!("{text}<|endoftext|>"))
        .len();
    assert_eq!(
        second.fed_tokens,
        pending(first.stop) + turn2,
        "{first:?} {second:?}"
    );
    assert!(second.fed_tokens < before, "the history was re-run");
    assert_eq!(second.context_shifts, 0);
    assert_eq!(chat.position() + pending(second.stop), chat.history().len());
}

#[test]
fn kept_cache_reply_matches_a_fresh_generation() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let mut s = session(&model, 256);
    let mut greedy = Sampler::new(SamplerConfig::greedy(), model.hparams.n_vocab as usize).unwrap();
    let mut chat = Chat::new(&mut s, &mut greedy, config("", 6)).unwrap();
    let mut sink = Vec::new();
    chat.turn("The weather is nice today.", collect(&mut sink))
        .unwrap();
    let stats = chat.turn("What shall we do?", collect(&mut sink)).unwrap();
    let mut history = chat.history().to_vec();
    if stats.stop == StopReason::Length {
        history.pop(); // the <|endoftext|> closing a cut reply
    }
    let (context, reply) = history.split_at(history.len() - stats.generated_tokens);

    let mut fresh = session(&model, 256);
    let mut greedy = Sampler::new(SamplerConfig::greedy(), model.hparams.n_vocab as usize).unwrap();
    let rules = StopRules {
        max_new_tokens: stats.generated_tokens,
        stop_token: Some(model.hparams.eos_id),
    };
    let mut got = Vec::new();
    generate(
        &mut fresh,
        &mut greedy,
        context,
        rules,
        &mut Vec::new(),
        |t| {
            got.push(t);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(got, reply);
}

#[test]
fn full_context_shifts_and_keeps_the_system_prompt() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let system = model.tokenizer.encode("You are a helpful bot.");
    let mut s = session(&model, 32);
    let mut smp = sampler(&model, 3);
    let mut chat = Chat::new(&mut s, &mut smp, config("You are a helpful bot.", 8)).unwrap();
    let mut shifts = 0;
    for turn in ["One two three four five.", "Six seven eight nine.", "Ten!"] {
        for _ in 0..2 {
            let stats = chat.turn(turn, |_| ControlFlow::Continue(())).unwrap();
            shifts += stats.context_shifts;
            assert!(chat.position() <= 32);
            assert_eq!(&chat.history()[..system.len()], &system[..]);
        }
    }
    assert!(shifts > 0);
    // A turn that cannot fit even after dropping everything unkept is refused, changing nothing.
    let history = chat.history().to_vec();
    let long = "word ".repeat(40);
    let err = chat.turn(&long, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(err.to_string().contains("room for"), "{err}");
    assert_eq!(chat.history(), &history[..]);
}

#[test]
fn a_stopped_reply_is_closed_before_the_next_turn() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let mut s = session(&model, 128);
    let mut smp = sampler(&model, 5);
    let template = ChatTemplate::new("User: {user}\nBot:", Some("\n")).unwrap();
    let cfg = ChatConfig {
        template,
        ..config("", 16)
    };
    let mut chat = Chat::new(&mut s, &mut smp, cfg).unwrap();
    let stats = chat.turn("Hello", |_| ControlFlow::Break(())).unwrap();
    assert_eq!(
        (stats.stop, stats.generated_tokens),
        (StopReason::Callback, 1)
    );
    let newline = model.tokenizer.encode("\n");
    assert!(chat.history().ends_with(&newline));
    let mut out = Vec::new();
    let next = chat.turn("Bye", collect(&mut out)).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains('\n'));
    assert_eq!(
        next.fed_tokens,
        1 + newline.len() + model.tokenizer.encode("User: Bye\nBot:").len()
    );
}

#[test]
fn chat_binary_answers_each_piped_line() {
    let mut child = gpt2q_command()
        .args(["chat", "--seed", "2", "-n", "6", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Hello!\nHow are you?\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(!o.stdout.is_empty());
    assert!(o.stdout.ends_with(b"\n"));

    let bad = gpt2q_command()
        .args(["chat", "--template", "no placeholder"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("{user}"));
}

/// The greedy continuation of `prompt`, one byte string per token.
fn greedy_pieces(model: &Model<'_>, prompt: &[u32], n: usize) -> Vec<Vec<u8>> {
    let mut s = session(model, 128);
    let mut greedy = Sampler::new(SamplerConfig::greedy(), model.hparams.n_vocab as usize).unwrap();
    let rules = StopRules {
        max_new_tokens: n,
        stop_token: None,
    };
    let mut pieces = Vec::new();
    generate(&mut s, &mut greedy, prompt, rules, &mut Vec::new(), |t| {
        pieces.push(model.tokenizer.token_bytes(t).unwrap().to_vec());
        ControlFlow::Continue(())
    })
    .unwrap();
    pieces
}

#[test]
fn a_stop_string_split_across_two_tokens_is_never_output() {
    let file = ModelFile::open(&default_model()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let prompt = model.tokenizer.encode("Once upon a time, there was a");
    let pieces = greedy_pieces(&model, &prompt, 40);
    let text = pieces.concat();
    // A stop string from the end of one token and the start of the next whose first occurrence
    // in the output straddles a token boundary, after some text.
    let boundaries: Vec<usize> = pieces
        .iter()
        .scan(0, |end, p| {
            *end += p.len();
            Some(*end)
        })
        .collect();
    let (stop, first) = (0..pieces.len() - 1)
        .find_map(|i| {
            let (a, b) = (&pieces[i], &pieces[i + 1]);
            let stop = [&a[a.len().saturating_sub(2)..], &b[..b.len().min(2)]].concat();
            let stop = String::from_utf8(stop).ok().filter(|s| s.len() >= 2)?;
            let first = text
                .windows(stop.len())
                .position(|w| w == stop.as_bytes())?;
            let end = first + stop.len();
            boundaries
                .iter()
                .any(|&b| 0 < first && first < b && b < end)
                .then_some((stop, first))
        })
        .expect("no two adjacent tokens with text");

    let mut s = session(&model, 128);
    let mut greedy = Sampler::new(SamplerConfig::greedy(), model.hparams.n_vocab as usize).unwrap();
    let mut generator = Generator::new(&mut s, &mut greedy, prompt, ContextPolicy::default());
    let mut stop_text = StopText::new(&stop).unwrap();
    let rules = StopRules {
        max_new_tokens: 40,
        stop_token: None,
    };
    let mut out = Vec::new();
    let stats = generator
        .generate(rules, Some(&mut stop_text), |event| {
            if let Event::Text(bytes) = event {
                out.extend_from_slice(bytes);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::StopString, "stop {stop:?}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&text[..first]),
        "stop {stop:?}"
    );
    // It stopped at the token completing the stop string, not later.
    let completing = boundaries
        .iter()
        .position(|&b| b >= first + stop.len())
        .unwrap();
    assert_eq!(stats.generated_tokens, completing + 1);
}
