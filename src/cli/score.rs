//! `gpt2q score`: the log-probability of every token of each input line (see `gpt2q::score`),
//! written as one JSON object or one TSV row per line, as each line is scored.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use gpt2q::model::Model;
use gpt2q::score::{Scorer, TextScore};
use gpt2q::session::Session;
use gpt2q::{Error, Result};

use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score, one text per line ("-" for stdin).
    #[arg(short, long)]
    file: PathBuf,
    /// Output: json (one object per line: text, tokens, logprobs, sum_logprob, perplexity) or
    /// tsv (a header, then n_tokens, sum_logprob, perplexity and the text per line).
    #[arg(long, default_value = "json", value_parser = ["json", "tsv"])]
    format: String,
    /// Window length in tokens, <|endoftext|> included (default: the model's maximum context).
    #[arg(short, long)]
    ctx: Option<usize>,
    /// Advance between windows of a line longer than --ctx (default: half of --ctx).
    #[arg(long)]
    stride: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let input: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&args.file).map_err(|e| Error::io(&args.file, e))?)
    };
    let file = args.model.open()?;
    let model = Model::load(&file, args.model.verify)?;
    let window = args.ctx.unwrap_or(model.hparams.n_ctx as usize);
    if window < 2 || window > model.hparams.n_ctx as usize {
        return Err(Error::invalid(format!(
            "--ctx must be in 2..={} for this model, got {window}",
            model.hparams.n_ctx
        )));
    }
    let stride = args.stride.unwrap_or(window / 2);
    let mut session = Session::for_scoring(&model, window)?;
    let mut scorer = Scorer::new(&mut session, window, stride)?;
    let json = args.format == "json";
    if !json {
        outln!("n_tokens\tsum_logprob\tperplexity\ttext");
    }
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let mut out = String::new();
    for number in 1.. {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(&args.file, e))?;
        if n == 0 {
            break;
        }
        let text = std::str::from_utf8(&line)
            .map_err(|e| {
                Error::invalid(format!(
                    "line {number} of {} is not valid UTF-8 (bad byte at offset {})",
                    args.file.display(),
                    e.valid_up_to()
                ))
            })?
            .trim_end_matches('\n')
            .trim_end_matches('\r');
        // On a worker of the thread pool, as `run` generates (see there).
        let score = rayon::scope(|_| scorer.score(text))?;
        out.clear();
        if json {
            json_line(&mut out, text, &score);
        } else {
            tsv_line(&mut out, text, &score);
        }
        outln!("{out}");
    }
    Ok(())
}

/// A perplexity for output: `null` (JSON) or empty (TSV) for a line without tokens.
fn perplexity_or(score: &TextScore, none: &str) -> String {
    score
        .perplexity()
        .map_or_else(|| none.to_string(), |p| p.to_string())
}

/// `{"text":…,"tokens":[…],"logprobs":[…],"sum_logprob":…,"perplexity":…}`.
fn json_line(out: &mut String, text: &str, score: &TextScore) {
    out.push_str("{\"text\":");
    json_string(out, text);
    out.push_str(",\"tokens\":[");
    for (i, t) in score.tokens.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{t}");
    }
    out.push_str("],\"logprobs\":[");
    for (i, l) in score.logprobs.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}{l}");
    }
    let _ = write!(
        out,
        "],\"sum_logprob\":{},\"perplexity\":{}}}",
        score.sum_logprob(),
        perplexity_or(score, "null")
    );
}

/// A JSON string literal (RFC 8259 escapes; everything else as UTF-8).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `n_tokens⇥sum_logprob⇥perplexity⇥text`, with tabs and backslashes in the text escaped.
fn tsv_line(out: &mut String, text: &str, score: &TextScore) {
    let _ = write!(
        out,
        "{}\t{}\t{}\t",
        score.tokens.len(),
        score.sum_logprob(),
        perplexity_or(score, "")
    );
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_controls_and_keep_unicode() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n\u{1}é🙂");
        assert_eq!(s, r#""a\"b\\c\n\u0001é🙂""#);
    }

    #[test]
    fn an_empty_line_has_no_perplexity() {
        let score = TextScore {
            tokens: vec![],
            logprobs: vec![],
        };
        let mut s = String::new();
        json_line(&mut s, "", &score);
        assert_eq!(
            s,
            r#"{"text":"","tokens":[],"logprobs":[],"sum_logprob":0,"perplexity":null}"#
        );
        s.clear();
        tsv_line(&mut s, "a\tb", &score);
        assert_eq!(s, "0\t0\t\ta\\tb");
    }
}
