//! The bodies of the OpenAI HTTP API as `gpt2q serve` reads and writes them: requests parsed
//! with serde and checked into a [`GenSpec`], responses and stream chunks built as JSON, and the
//! error shape (`{"error": {"message", "type", "param", "code"}}`).

use serde::Deserialize;
use serde_json::{json, Value};

use gpt2q::chat::ChatTemplate;
use gpt2q::generate::StopReason;
use gpt2q::model::Model;
use gpt2q::sampler::SamplerConfig;

use gpt2q::slots::{Finish, GenSpec, TokenRecord, MAX_TOP_LOGPROBS};

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// A request refused, with its HTTP status and OpenAI's error fields.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status (4xx or 5xx).
    pub status: u16,
    /// What was wrong, for a person.
    pub message: String,
    /// OpenAI's error type.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// A machine-readable code, if any.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param),
            code: None,
        }
    }

    /// An error with `status` and `kind`, about no field in particular.
    pub fn status(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// The same error with `code` set.
    pub fn with_code(self, code: &'static str) -> Self {
        ApiError {
            code: Some(code),
            ..self
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// `prompt`: a string, token ids, or a batch of one of either.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<i64>),
    /// A batch of texts (only one is served).
    Texts(Vec<String>),
    /// A batch of token-id lists (only one is served).
    TokenLists(Vec<Vec<i64>>),
}

/// `stop`: one string or several.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// A chat message's content: text, or a list of parts of which only text parts are served.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    /// Text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Deserialize, Debug)]
pub struct ContentPart {
    /// `"text"` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Deserialize, Debug)]
pub struct Message {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    #[serde(default)]
    pub content: Option<Content>,
}

/// The body of `POST /v1/completions` or `POST /v1/chat/completions` (fields of both; each
/// endpoint reads its own). Unknown fields are ignored, as OpenAI's clients send many.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
pub struct Request {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub messages: Option<Vec<Message>>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub repeat_last_n: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<i64>,
    pub echo: Option<bool>,
    /// gpt2q's own: keep the last tokens of a prompt longer than the context instead of refusing.
    pub truncate_prompt: Option<bool>,
    /// llama-server's: keep generating after `<|endoftext|>`.
    pub ignore_eos: Option<bool>,
}

/// Server-wide limits and defaults a request is checked against.
pub struct Limits<'a> {
    /// The model's id (what `model` must be, if given).
    pub model_id: &'a str,
    /// Positions each slot holds.
    pub ctx: usize,
    /// Most tokens one request may generate (larger `max_tokens` are lowered to it).
    pub max_tokens_cap: usize,
    /// Tokens at the start that context shifts keep (`--keep`), for completions.
    pub keep: usize,
}

/// A checked request: what to generate and how to answer.
pub struct Params {
    /// What the slot generates.
    pub spec: GenSpec,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Streaming: end with a usage chunk.
    pub include_usage: bool,
    /// Completions: put the prompt before the generated text.
    pub echo: bool,
    /// The prompt's text (for `echo`).
    pub prompt_text: String,
}

/// Parses a request body: bad JSON, wrong types and invalid UTF-8 are 400s.
pub fn parse(body: &[u8]) -> Result<Request, ApiError> {
    if body.is_empty() {
        return Err(ApiError::status(
            400,
            "invalid_request_error",
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::status(
            400,
            "invalid_request_error",
            format!("the request body is not a valid request: {e}"),
        )
    })
}

fn check_model(req: &Request, limits: &Limits<'_>) -> Result<(), ApiError> {
    match &req.model {
        Some(m) if m != limits.model_id && !m.is_empty() => Err(ApiError {
            status: 404,
            message: format!(
                "the model `{m}` does not exist; this server serves `{}`",
                limits.model_id
            ),
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        }),
        _ => Ok(()),
    }
}

fn number_in(
    param: &'static str,
    value: Option<f64>,
    default: f64,
    ok: impl Fn(f64) -> bool,
    range: &str,
) -> Result<f64, ApiError> {
    let v = value.unwrap_or(default);
    if ok(v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(
            param,
            format!("{param} must be {range}, got {v}"),
        ))
    }
}

/// The sampler settings of a request; gpt2q's command-line defaults where it gives none.
fn sampler_config(req: &Request, n_vocab: usize, ctx: usize) -> Result<SamplerConfig, ApiError> {
    let defaults = SamplerConfig::default();
    let temperature = number_in(
        "temperature",
        req.temperature,
        defaults.temperature as f64,
        |t| (0.0..=2.0).contains(&t),
        "in [0, 2]",
    )?;
    let top_p = number_in(
        "top_p",
        req.top_p,
        defaults.top_p as f64,
        |p| p > 0.0 && p <= 1.0,
        "in (0, 1]",
    )?;
    let min_p = number_in(
        "min_p",
        req.min_p,
        defaults.min_p as f64,
        |p| (0.0..1.0).contains(&p),
        "in [0, 1)",
    )?;
    let repeat_penalty = number_in(
        "repeat_penalty",
        req.repeat_penalty,
        1.0,
        |p| p > 0.0 && p <= 10.0,
        "in (0, 10]",
    )?;
    for (param, value) in [
        ("frequency_penalty", req.frequency_penalty),
        ("presence_penalty", req.presence_penalty),
    ] {
        let v = number_in(
            param,
            value,
            0.0,
            |v| (-2.0..=2.0).contains(&v),
            "in [-2, 2]",
        )?;
        if v != 0.0 {
            return Err(ApiError::invalid(
                param,
                format!("{param} is not supported by gpt2q; use repeat_penalty (e.g. 1.1)"),
            ));
        }
    }
    let top_k = match req.top_k {
        None => defaults.top_k,
        Some(k) if (0..=n_vocab as i64).contains(&k) => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be in 0..={n_vocab}, got {k}"),
            ))
        }
    };
    let repeat_last_n = match req.repeat_last_n {
        None => defaults.repeat_last_n,
        Some(-1) => ctx,
        Some(n) if (0..=ctx as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "repeat_last_n",
                format!("repeat_last_n must be -1 or in 0..={ctx}, got {n}"),
            ))
        }
    };
    let seed = match req.seed {
        None | Some(-1) => random_seed(),
        Some(s) if s >= 0 => s as u64,
        Some(s) => {
            return Err(ApiError::invalid(
                "seed",
                format!("seed must be -1 (random) or >= 0, got {s}"),
            ))
        }
    };
    Ok(SamplerConfig {
        temperature: temperature as f32,
        top_k,
        top_p: top_p as f32,
        min_p: min_p as f32,
        repetition_penalty: repeat_penalty as f32,
        repeat_last_n,
        seed,
    })
}

/// A seed from the clock and a counter, for requests that give none.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn stop_strings(req: &Request) -> Result<Vec<String>, ApiError> {
    let stops = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                stops.len()
            ),
        ));
    }
    if let Some(s) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "a stop string is {} bytes, more than {MAX_STOP_BYTES}",
                s.len()
            ),
        ));
    }
    // An empty stop string would end every reply before it starts: ignore it.
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

fn max_tokens(req: &Request, default: usize, cap: usize) -> Result<usize, ApiError> {
    let (param, value) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, v) => ("max_tokens", v),
    };
    match value {
        None => Ok(default.min(cap)),
        Some(v) if v >= 0 => Ok((v as u64).min(cap as u64) as usize),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("{param} must be >= 0, got {v}"),
        )),
    }
}

fn stop_token(req: &Request, model: &Model<'_>) -> Option<u32> {
    (!req.ignore_eos.unwrap_or(false)).then_some(model.hparams.eos_id)
}

fn check_n(req: &Request) -> Result<(), ApiError> {
    match req.n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::invalid(
            "n",
            format!("only n = 1 is supported, got {n}"),
        )),
    }
}

/// Token ids checked against the vocabulary.
fn token_ids(ids: &[i64], n_vocab: usize) -> Result<Vec<u32>, ApiError> {
    ids.iter()
        .map(|&id| match u32::try_from(id) {
            Ok(t) if (t as usize) < n_vocab => Ok(t),
            _ => Err(ApiError::invalid(
                "prompt",
                format!("token id {id} is outside the vocabulary of {n_vocab}"),
            )),
        })
        .collect()
}

/// A prompt that fits the context, or its last `ctx` tokens when truncation was asked for.
fn fit_prompt(mut ids: Vec<u32>, ctx: usize, truncate: bool) -> Result<Vec<u32>, ApiError> {
    if ids.len() <= ctx {
        return Ok(ids);
    }
    if !truncate {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "the prompt is {} tokens, more than the context of {ctx} (send \"truncate_prompt\": true to keep the last {ctx})",
                ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    ids.drain(..ids.len() - ctx);
    Ok(ids)
}

fn stream_flags(req: &Request) -> (bool, bool) {
    let stream = req.stream.unwrap_or(false);
    let usage = stream && req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    (stream, usage)
}

/// Completions' default `max_tokens` (OpenAI's).
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// Checks a `/v1/completions` request.
pub fn completion(
    req: &Request,
    model: &Model<'_>,
    limits: &Limits<'_>,
) -> Result<Params, ApiError> {
    check_model(req, limits)?;
    check_n(req)?;
    let n_vocab = model.hparams.n_vocab as usize;
    let (mut ids, text) = match &req.prompt {
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
        Some(Prompt::Text(t)) => (model.tokenizer.encode(t), Some(t.clone())),
        Some(Prompt::Tokens(ids)) => (token_ids(ids, n_vocab)?, None),
        Some(Prompt::Texts(v)) if v.len() == 1 => {
            (model.tokenizer.encode(&v[0]), Some(v[0].clone()))
        }
        Some(Prompt::TokenLists(v)) if v.len() == 1 => (token_ids(&v[0], n_vocab)?, None),
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "only one prompt per request is supported",
            ))
        }
    };
    if ids.is_empty() {
        // As `gpt2q run`: an empty prompt starts from <|endoftext|>.
        ids.push(model.hparams.eos_id);
    }
    let ids = fit_prompt(ids, limits.ctx, req.truncate_prompt.unwrap_or(false))?;
    let prompt_text = match text {
        Some(t) if ids.len() == model.tokenizer.encode(&t).len() => t,
        _ => model.tokenizer.decode(&ids).unwrap_or_default(),
    };
    let logprobs = match &req.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(0),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if k <= MAX_TOP_LOGPROBS as u64 => Some(k as usize),
            _ => {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("logprobs must be an integer in 0..={MAX_TOP_LOGPROBS}, got {n}"),
                ))
            }
        },
        Some(other) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be an integer, got {other}"),
            ))
        }
    };
    let (stream, include_usage) = stream_flags(req);
    let echo = req.echo.unwrap_or(false);
    Ok(Params {
        spec: GenSpec {
            sampler: sampler_config(req, n_vocab, limits.ctx)?,
            max_tokens: max_tokens(req, COMPLETIONS_DEFAULT_MAX_TOKENS, limits.max_tokens_cap)?,
            stops: stop_strings(req)?,
            stop_token: stop_token(req, model),
            logprobs,
            // A stream sends the echoed prompt before any output, so only whole answers score it.
            prompt_logprobs: echo && !stream,
            keep: limits.keep.min(ids.len()),
            prompt: ids,
        },
        stream,
        include_usage,
        echo,
        prompt_text,
    })
}

fn message_text(m: &Message) -> Result<String, ApiError> {
    match &m.content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("content parts of type {kind:?} are not supported (text only)"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// A conversation's prompt tokens, turn by turn as `gpt2q chat` feeds them (so a conversation
/// that goes on starts with the tokens of its earlier requests), and how many system tokens
/// lead it.
pub fn chat_prompt(
    messages: &[Message],
    template: &ChatTemplate,
    model: &Model<'_>,
) -> Result<(Vec<u32>, usize), ApiError> {
    let tokenizer = &model.tokenizer;
    let mut ids = Vec::new();
    let mut system = 0;
    for (i, m) in messages.iter().enumerate() {
        let text = message_text(m)?;
        match m.role.as_str() {
            "system" | "developer" => {
                ids.extend(tokenizer.encode(&text));
                if system == i {
                    system += 1;
                }
            }
            "user" => ids.extend(tokenizer.encode(&template.render(&text))),
            "assistant" => {
                ids.extend(tokenizer.encode(&text));
                ids.extend(tokenizer.encode(template.reply_end()));
            }
            role => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("unknown role {role:?} (system, user or assistant)"),
                ))
            }
        }
    }
    let system_tokens = messages[..system]
        .iter()
        .map(|m| message_text(m).map(|t| tokenizer.encode(&t).len()))
        .sum::<Result<usize, _>>()?;
    Ok((ids, system_tokens))
}

/// Checks a `/v1/chat/completions` request.
pub fn chat(
    req: &Request,
    model: &Model<'_>,
    limits: &Limits<'_>,
    template: &ChatTemplate,
) -> Result<Params, ApiError> {
    check_model(req, limits)?;
    check_n(req)?;
    let messages = match &req.messages {
        Some(m) if !m.is_empty() => m,
        _ => return Err(ApiError::invalid("messages", "messages must not be empty")),
    };
    let (ids, system) = chat_prompt(messages, template, model)?;
    if ids.is_empty() {
        return Err(ApiError::invalid("messages", "the messages have no text"));
    }
    let ids = fit_prompt(ids, limits.ctx, req.truncate_prompt.unwrap_or(false))?;
    let logprobs = match (&req.logprobs, req.top_logprobs) {
        (None | Some(Value::Null) | Some(Value::Bool(false)), None) => None,
        (None | Some(Value::Null) | Some(Value::Bool(false)), Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ))
        }
        (Some(Value::Bool(true)), k) => match k.unwrap_or(0) {
            k if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
            k => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be in 0..={MAX_TOP_LOGPROBS}, got {k}"),
                ))
            }
        },
        (Some(other), _) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be a boolean, got {other}"),
            ))
        }
    };
    let mut stops = stop_strings(req)?;
    if let Some(s) = template.stop() {
        stops.push(s.to_owned());
    }
    let (stream, include_usage) = stream_flags(req);
    // Keep the system prompt when the context shifts, if it leaves room.
    let keep = if system + 2 <= limits.ctx { system } else { 0 };
    Ok(Params {
        spec: GenSpec {
            sampler: sampler_config(req, model.hparams.n_vocab as usize, limits.ctx)?,
            max_tokens: max_tokens(req, limits.max_tokens_cap, limits.max_tokens_cap)?,
            stops,
            stop_token: stop_token(req, model),
            logprobs,
            prompt_logprobs: false,
            keep,
            prompt: ids,
        },
        stream,
        include_usage,
        echo: false,
        prompt_text: String::new(),
    })
}

/// OpenAI's `finish_reason` for a stop reason.
pub fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndOfText | StopReason::StopString => "stop",
        StopReason::Length | StopReason::ContextFull => "length",
        StopReason::Callback => "cancelled",
    }
}

/// The `usage` object.
pub fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
    })
}

fn token_text(model: &Model<'_>, id: u32) -> String {
    String::from_utf8_lossy(model.tokenizer.token_bytes(id).unwrap_or(&[])).into_owned()
}

/// Completions' `logprobs` object for `records`, offsets counted from `offset` (bytes of text
/// before the first token). With `prompt` (echo), the records start with the prompt's tokens
/// after its first, which has no probability (`null`).
pub fn completion_logprobs(
    model: &Model<'_>,
    prompt: Option<&[u32]>,
    records: &[TokenRecord],
    mut offset: usize,
) -> Value {
    let (mut tokens, mut logprobs, mut tops, mut offsets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if let Some(&first) = prompt.and_then(|p| p.first()) {
        let text = token_text(model, first);
        offsets.push(offset);
        offset += text.len();
        tokens.push(Value::from(text));
        logprobs.push(Value::Null);
        tops.push(Value::Null);
    }
    for r in records {
        let text = token_text(model, r.id);
        offsets.push(offset);
        offset += text.len();
        tokens.push(Value::from(text));
        logprobs.push(json!(r.logprob));
        let mut top = serde_json::Map::new();
        for &(id, lp) in &r.top[..r.n_top] {
            top.insert(token_text(model, id), json!(lp));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
}

/// Chat's `logprobs.content` entries for `records`.
pub fn chat_logprobs(model: &Model<'_>, records: &[TokenRecord]) -> Value {
    let entry = |id: u32, lp: f32| {
        let bytes = model.tokenizer.token_bytes(id).unwrap_or(&[]);
        json!({"token": token_text(model, id), "logprob": lp, "bytes": bytes})
    };
    let content: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut e = entry(r.id, r.logprob);
            let top: Vec<Value> = r.top[..r.n_top]
                .iter()
                .map(|&(id, lp)| entry(id, lp))
                .collect();
            e["top_logprobs"] = Value::from(top);
            e
        })
        .collect();
    json!({"content": content})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_with_either_shape_and_wrong_types_fail() {
        let r =
            parse(br#"{"prompt": "hi", "stop": ["a", "b"], "max_tokens": 5, "extra": 1}"#).unwrap();
        assert!(matches!(r.prompt, Some(Prompt::Text(_))));
        assert!(matches!(r.stop, Some(Stop::Many(ref v)) if v.len() == 2));
        assert!(matches!(
            parse(br#"{"prompt": [1, 2]}"#).unwrap().prompt,
            Some(Prompt::Tokens(_))
        ));
        for bad in [
            &br#"{"prompt": "hi", "max_tokens": "5"}"#[..],
            br#"{"prompt": "hi", "max_tokens": 1e30}"#,
            br#"{"prompt": "hi", "max_tokens": 18446744073709551616}"#,
            br#"{"prompt": "#,
            b"{\"prompt\": \"\xff\"}",
            br#"[1, 2]"#,
            b"",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn limits_are_checked() {
        let req = |json: &str| parse(json.as_bytes()).unwrap();
        assert_eq!(
            max_tokens(&req(r#"{"max_tokens": 100000}"#), 16, 256).unwrap(),
            256
        );
        assert_eq!(max_tokens(&req("{}"), 16, 256).unwrap(), 16);
        assert!(max_tokens(&req(r#"{"max_tokens": -1}"#), 16, 256).is_err());
        assert!(stop_strings(&req(r#"{"stop": ["a","b","c","d","e"]}"#)).is_err());
        assert_eq!(stop_strings(&req(r#"{"stop": ["", "x"]}"#)).unwrap(), ["x"]);
        assert!(check_n(&req(r#"{"n": 2}"#)).is_err());
        assert!(sampler_config(&req(r#"{"temperature": -1}"#), 10, 8).is_err());
        assert!(sampler_config(&req(r#"{"top_k": 11}"#), 10, 8).is_err());
        assert!(sampler_config(&req(r#"{"seed": -2}"#), 10, 8).is_err());
        assert!(sampler_config(&req(r#"{"frequency_penalty": 0.5}"#), 10, 8).is_err());
        let c = sampler_config(&req(r#"{"temperature": 0, "seed": 7}"#), 10, 8).unwrap();
        assert_eq!((c.temperature, c.seed), (0.0, 7));
        assert!(fit_prompt(vec![1; 9], 8, false).is_err());
        assert_eq!(fit_prompt((0..9).collect(), 8, true).unwrap()[0], 1);
    }
}
