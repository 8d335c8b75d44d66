//! Per-token log-probabilities (`gpt2q::score`, `gpt2q score`): the same numbers as perplexity
//! over the same windows, the reference's log-softmax, and the command's output formats.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{converted, floats, gpt2q_command, ids, reference};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::perplexity::{nll, perplexity};
use gpt2q::score::{logits, score_text, token_logprobs, Scorer};
use gpt2q::session::Session;
use gpt2q_convert::convert::Quant;
use serde_json::Value;

/// The reference tests' tolerance on a logit; a log-softmax differs by at most twice it.
const LOGIT_TOLERANCE: f32 = 1e-3;

fn heldout_ids(model: &Model<'_>) -> Vec<u32> {
    let text = std::fs::read_to_string(common::fixtures().join("heldout.txt")).unwrap();
    model.tokenizer.encode(&text)
}

#[test]
fn logprobs_agree_with_perplexity_over_the_same_windows() {
    let file = ModelFile::open(&converted(Quant::Q8)).unwrap();
    let model = Model::load(&file, false).unwrap();
    let ids = heldout_ids(&model);
    let (window, stride) = (64, 24);
    // Perplexity's windows cover ids[..covered] exactly; score goes on past it (a final window
    // ending at the last token), which must not change the earlier tokens' numbers.
    let covered = window + 5 * stride;
    let mut session = Session::for_scoring(&model, window).unwrap();
    let report = perplexity(&mut session, &ids[..covered], window, stride).unwrap();
    let lp = token_logprobs(&mut session, &ids[..covered + 37], window, stride).unwrap();
    assert_eq!(
        lp.len(),
        covered + 36,
        "every token after the first is scored"
    );
    assert_eq!(report.scored_tokens, covered - 1);
    let mean_nll = -lp[..covered - 1].iter().sum::<f64>() / (covered - 1) as f64;
    println!(
        "mean NLL: score {mean_nll:.8}, perplexity {:.8}",
        report.mean_nll()
    );
    assert!((mean_nll - report.mean_nll()).abs() < 1e-5);
    assert!(lp.iter().all(|l| l.is_finite() && *l <= 0.0));
}

#[test]
fn a_text_that_fits_is_one_window_and_matches_token_by_token() {
    let file = ModelFile::open(&converted(Quant::F32)).unwrap();
    let model = Model::load(&file, false).unwrap();
    let text = "It was a dark and stormy night, and the rain fell in torrents.";
    let mut session = Session::for_scoring(&model, 64).unwrap();
    let score = score_text(&mut session, text, 64, 32).unwrap();
    assert_eq!(score.tokens, model.tokenizer.encode(text));
    assert_eq!(score.logprobs.len(), score.tokens.len());
    // The same numbers, one token at a time from <|endoftext|>.
    let mut single = Session::new(&model, 64).unwrap();
    let mut prev = model.hparams.eos_id;
    for (&t, &l) in score.tokens.iter().zip(&score.logprobs) {
        let expected = -nll(single.forward(prev).unwrap(), t);
        assert!((l - expected).abs() < 1e-4, "{l} vs {expected}");
        prev = t;
    }
    let ppl = score.perplexity().unwrap();
    let mean = -score.sum_logprob() / score.tokens.len() as f64;
    assert!((ppl.ln() - mean).abs() < 1e-12);
    // A long text in windows with some context, and the limits of the windows.
    let long = "The old lighthouse keeper counted the ships. ".repeat(12);
    let s = score_text(&mut session, &long, 64, 32).unwrap();
    assert_eq!(s.logprobs.len(), s.tokens.len());
    let err = score_text(&mut session, &long, 64, 64).unwrap_err();
    assert!(err.to_string().contains("stride 64"), "{err}");
    assert!(score_text(&mut session, &long, 65, 32).is_err());
    let empty = score_text(&mut session, "", 64, 32).unwrap();
    assert!(empty.tokens.is_empty() && empty.perplexity().is_none());
    assert!(score_text(&mut Session::new(&model, 64).unwrap(), text, 64, 32).is_err());
}

#[test]
fn a_scorer_gives_score_texts_numbers_running_endoftext_once() {
    let file = ModelFile::open(&converted(Quant::Q8)).unwrap();
    let model = Model::load(&file, false).unwrap();
    let mut session = Session::for_scoring(&model, 48).unwrap();
    let long = "The old lighthouse keeper counted the ships. ".repeat(8);
    let texts = [
        "The sea",
        "",
        "a",
        long.as_str(),
        "It was a dark and stormy night.",
        "The sea",
    ];
    let expected: Vec<_> = texts
        .iter()
        .map(|t| score_text(&mut session, t, 48, 24).unwrap())
        .collect();
    let mut scorer = Scorer::new(&mut session, 48, 24).unwrap();
    for (text, want) in texts.iter().zip(&expected) {
        let got = scorer.score(text).unwrap();
        assert_eq!(got.tokens, want.tokens);
        assert_eq!(got.logprobs.len(), want.logprobs.len());
        for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
            assert!((a - b).abs() < 1e-4, "{text:?}: {a} vs {b}");
        }
    }
    let mut plain = Session::new(&model, 48).unwrap();
    let refused = Scorer::new(&mut plain, 48, 24).is_err();
    assert!(refused, "a session without all logits is refused");
}

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z = max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    l.iter().map(|&v| v as f64 - z).collect()
}

#[test]
fn logits_and_logprobs_match_the_reference() {
    let file = ModelFile::open(&converted(Quant::F32)).unwrap();
    let model = Model::load(&file, false).unwrap();
    let mut session = Session::for_scoring(&model, 160).unwrap();
    for p in reference()["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = ids(&p["ids"]);
        let expected = floats(&p["last_logits"]);
        let last = logits(&mut session, &prompt, true).unwrap();
        let all = logits(&mut session, &prompt, false).unwrap();
        assert_eq!(all.len(), prompt.len() * expected.len());
        assert_eq!(&all[all.len() - expected.len()..], &last[..], "{name}");
        let diff = last
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= LOGIT_TOLERANCE, "{name}: logits differ by {diff}");
        // The log-probability of the reference's greedy next token, scored after the prompt.
        let next = ids(&p["greedy"]["ids"])[0];
        let mut seq = prompt.clone();
        seq.push(next);
        let lp = token_logprobs(&mut session, &seq, 160, 80).unwrap();
        let theirs = log_softmax(&expected)[next as usize];
        println!("{name:<16} logprob {:.6} vs {theirs:.6}", lp[lp.len() - 1]);
        assert!((lp[lp.len() - 1] - theirs).abs() <= 2.0 * LOGIT_TOLERANCE as f64);
    }
}

fn score_command(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = gpt2q_command()
        .arg("score")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_command_writes_a_json_object_per_line() {
    let lines = "The quick brown fox\n\nsays \"hi\"\tthere\r\nCafé 🙂";
    let o = score_command(&["-f", "-"], lines.as_bytes());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let out: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(out.len(), 4);
    assert_eq!(out[2]["text"], "says \"hi\"\tthere");
    assert_eq!(out[3]["text"], "Café 🙂");
    assert_eq!(out[1]["perplexity"], Value::Null);
    // The library's numbers for the same model and windows.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q");
    let file = ModelFile::open(&path).unwrap();
    let model = Model::load(&file, false).unwrap();
    let window = model.hparams.n_ctx as usize;
    let mut session = Session::for_scoring(&model, window).unwrap();
    let mut scorer = Scorer::new(&mut session, window, window / 2).unwrap();
    let expected = scorer.score("The quick brown fox").unwrap();
    assert_eq!(ids(&out[0]["tokens"]), expected.tokens);
    let lp: Vec<f64> = out[0]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // serde_json's float parsing may differ from Rust's printing in the last bit.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    assert_eq!(lp.len(), expected.logprobs.len());
    assert!(lp
        .iter()
        .zip(&expected.logprobs)
        .all(|(a, b)| close(*a, *b)));
    let sum = out[0]["sum_logprob"].as_f64().unwrap();
    assert!(close(sum, expected.sum_logprob()));
    let ppl = out[0]["perplexity"].as_f64().unwrap();
    assert!(close(ppl, expected.perplexity().unwrap()));

    let o = score_command(&["-f", "-", "--format", "tsv"], lines.as_bytes());
    let tsv = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<&str> = tsv.lines().collect();
    assert_eq!(rows[0], "n_tokens\tsum_logprob\tperplexity\ttext");
    assert_eq!(rows.len(), 5);
    assert!(rows[1].starts_with(&format!("{}\t", expected.tokens.len())));
    assert!(rows[3].ends_with("\tsays \"hi\"\\tthere"), "{}", rows[3]);
}

#[test]
fn the_command_refuses_bad_input_with_its_line() {
    let o = score_command(&["-f", "-"], b"fine\nbad \xff byte\n");
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    let o = score_command(&["-f", "/nonexistent/lines.txt"], b"");
    assert_eq!(o.status.code(), Some(4));
    let o = score_command(&["-f", "-", "--ctx", "1"], b"x\n");
    assert_eq!(o.status.code(), Some(2));
}
