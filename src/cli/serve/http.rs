//! The HTTP side of `gpt2q serve`: routing, the API key, the body size limit, JSON responses and
//! server-sent event streams, over tiny_http (which parses HTTP; nothing here does).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, StatusCode};

use gpt2q::chat::ChatTemplate;
use gpt2q::model::Model;
use gpt2q::tokenizer::Utf8Stream;

use super::api::{self, ApiError, Limits, Params};
use super::metrics::{Endpoint, Metrics};
use gpt2q::slots::{Finish, Job, Scheduler, TokenRecord};

/// How the server was configured.
pub struct Config {
    /// The model's id in `/v1/models` and responses.
    pub model_id: String,
    /// Bearer token every request but `/health` must carry, if set.
    pub api_key: Option<String>,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Most tokens a request may generate.
    pub max_tokens_cap: usize,
    /// Positions each slot holds.
    pub ctx: usize,
    /// Slots.
    pub slots: usize,
    /// Requests that may wait for a slot.
    pub queue: usize,
    /// Context shifts keep this many tokens of a completion's prompt.
    pub keep: usize,
    /// How chat turns are written.
    pub template: ChatTemplate,
    /// Log one line per request on stderr.
    pub log: bool,
}

/// Everything a request handler needs; shared by every handler thread.
pub struct Server<'a> {
    /// The model (for its tokenizer).
    pub model: &'a Model<'a>,
    /// The slots and queue.
    pub scheduler: &'a Scheduler,
    /// Counters.
    pub metrics: &'a Metrics,
    /// Configuration.
    pub config: &'a Config,
    next_id: AtomicU64,
    created: u64,
}

/// What a route answers.
enum Reply {
    Json(u16, Value),
    Metrics(String),
    Generate(Kind, Params, Arc<Job>),
}

/// Which generation endpoint a job came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header(name: &str, value: &str) -> Header {
    // Only called with fixed ASCII names and values.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "application/json"))
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<'a> Server<'a> {
    /// A server over `model` and `scheduler`.
    pub fn new(
        model: &'a Model<'a>,
        scheduler: &'a Scheduler,
        metrics: &'a Metrics,
        config: &'a Config,
    ) -> Self {
        Server {
            model,
            scheduler,
            metrics,
            config,
            next_id: AtomicU64::new(1),
            created: now_secs(),
        }
    }

    /// Answers one request (on its own thread; generation requests block it until done).
    pub fn handle(&self, mut request: Request) {
        let start = Instant::now();
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let method = request.method().clone();
        let endpoint = match path.as_str() {
            "/v1/completions" | "/completions" => Endpoint::Completions,
            "/v1/chat/completions" | "/chat/completions" => Endpoint::Chat,
            "/v1/models" | "/models" => Endpoint::Models,
            p if p.starts_with("/v1/models/") => Endpoint::Models,
            "/health" => Endpoint::Health,
            "/metrics" => Endpoint::Metrics,
            _ => Endpoint::Other,
        };
        self.metrics.request(endpoint);
        let reply = self.route(&mut request, &method, endpoint);
        let (status, detail) = match reply {
            Ok(Reply::Json(status, body)) => {
                let _ = request.respond(json_response(status, &body));
                (status, String::new())
            }
            Ok(Reply::Metrics(text)) => {
                let response = Response::from_string(text).with_header(header(
                    "Content-Type",
                    "text/plain; version=0.0.4; charset=utf-8",
                ));
                let _ = request.respond(response);
                (200, String::new())
            }
            Ok(Reply::Generate(kind, params, job)) => self.generate(request, kind, &params, &job),
            Err(e) => {
                self.metrics.client_error(e.status);
                let mut response = json_response(e.status, &e.body());
                if e.status == 429 {
                    response = response.with_header(header("Retry-After", "1"));
                }
                let detail = e.message.clone();
                let _ = request.respond(response);
                (e.status, detail)
            }
        };
        if self.config.log {
            eprintln!(
                "gpt2q serve: {method} {path} {status} {:.3}s {detail}",
                start.elapsed().as_secs_f64()
            );
        }
    }

    fn route(
        &self,
        request: &mut Request,
        method: &Method,
        endpoint: Endpoint,
    ) -> Result<Reply, ApiError> {
        if endpoint != Endpoint::Health {
            self.authorize(request)?;
        }
        let expected = match endpoint {
            Endpoint::Completions | Endpoint::Chat => Method::Post,
            _ => Method::Get,
        };
        if endpoint != Endpoint::Other && *method != expected {
            return Err(ApiError::status(
                405,
                "invalid_request_error",
                format!("{} takes {expected}, not {method}", request.url()),
            ));
        }
        match endpoint {
            Endpoint::Health => Ok(Reply::Json(
                200,
                json!({
                    "status": "ok",
                    "slots_idle": self.config.slots - self.scheduler.busy(),
                    "slots_processing": self.scheduler.busy(),
                }),
            )),
            Endpoint::Models => match request
                .url()
                .split('?')
                .next()
                .and_then(|p| p.strip_prefix("/v1/models/"))
            {
                None => Ok(Reply::Json(
                    200,
                    json!({"object": "list", "data": [self.model_object()]}),
                )),
                Some(id) if id == self.config.model_id => Ok(Reply::Json(200, self.model_object())),
                Some(id) => Err(ApiError {
                    status: 404,
                    message: format!("the model `{id}` does not exist"),
                    kind: "invalid_request_error",
                    param: Some("model"),
                    code: Some("model_not_found"),
                }),
            },
            Endpoint::Metrics => Ok(Reply::Metrics(self.metrics.render(
                self.config.slots,
                self.scheduler.queued(),
                self.config.queue,
            ))),
            Endpoint::Completions => self.submit(request, Kind::Completion),
            Endpoint::Chat => self.submit(request, Kind::Chat),
            Endpoint::Other => Err(ApiError::status(
                404,
                "invalid_request_error",
                format!("no such endpoint: {}", request.url()),
            )),
        }
    }

    /// Reads and checks a generation request and queues its job.
    fn submit(&self, request: &mut Request, kind: Kind) -> Result<Reply, ApiError> {
        let body = self.read_body(request)?;
        let req = api::parse(&body)?;
        let limits = Limits {
            model_id: &self.config.model_id,
            ctx: self.config.ctx,
            max_tokens_cap: self.config.max_tokens_cap,
            keep: self.config.keep,
        };
        let params = match kind {
            Kind::Chat => api::chat(&req, self.model, &limits, &self.config.template)?,
            Kind::Completion => api::completion(&req, self.model, &limits)?,
        };
        let job = Job::new(params.spec.clone());
        self.scheduler.submit(job.clone()).map_err(|_| {
            ApiError::status(
                429,
                "rate_limit_error",
                format!(
                    "all {} slots are busy and {} requests are waiting; retry later",
                    self.config.slots, self.config.queue
                ),
            )
        })?;
        Ok(Reply::Generate(kind, params, job))
    }

    fn authorize(&self, request: &Request) -> Result<(), ApiError> {
        let Some(key) = &self.config.api_key else {
            return Ok(());
        };
        let given = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if same_secret(g.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ApiError::status(
                401,
                "authentication_error",
                "a valid API key is required (Authorization: Bearer KEY)",
            )
            .with_code("invalid_api_key")),
        }
    }

    fn read_body(&self, request: &mut Request) -> Result<Vec<u8>, ApiError> {
        let limit = self.config.max_body;
        let too_large = || {
            ApiError::status(
                413,
                "invalid_request_error",
                format!("the request body is larger than {limit} bytes"),
            )
        };
        if request.body_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        request
            .as_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| {
                ApiError::status(
                    400,
                    "invalid_request_error",
                    format!("reading the body: {e}"),
                )
            })?;
        if body.len() > limit {
            return Err(too_large());
        }
        Ok(body)
    }

    /// The served model as `/v1/models` lists it (with llama-server's `meta`).
    fn model_object(&self) -> Value {
        let hp = &self.model.hparams;
        json!({
            "id": self.config.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "gpt2q",
            "meta": {
                "n_ctx_train": hp.n_ctx,
                "n_ctx": self.config.ctx,
                "n_vocab": hp.n_vocab,
                "n_embd": hp.n_embd,
                "n_layer": hp.n_layer,
            },
        })
    }

    fn id(&self, kind: Kind) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Completion => format!("cmpl-{}-{n}", self.created),
            Kind::Chat => format!("chatcmpl-{}-{n}", self.created),
        }
    }

    /// Answers a generation request: one JSON body at the end, or a stream of events.
    fn generate(&self, request: Request, kind: Kind, params: &Params, job: &Job) -> (u16, String) {
        let id = self.id(kind);
        let result = if params.stream {
            self.stream(request, kind, &id, params, job)
        } else {
            self.complete(request, kind, &id, params, job)
        };
        match result {
            Ok(f) => (
                200,
                format!(
                    "{} prompt ({} reused) + {} tokens, {}",
                    f.prompt_tokens,
                    f.cached_tokens,
                    f.completion_tokens,
                    api::finish_reason(f.reason)
                ),
            ),
            Err((status, why)) => (status, why),
        }
    }

    /// Waits for the whole output and answers with one JSON body.
    fn complete(
        &self,
        request: Request,
        kind: Kind,
        id: &str,
        params: &Params,
        job: &Job,
    ) -> Result<Finish, (u16, String)> {
        let (mut text, mut tokens) = job.buffers();
        let (mut all_text, mut all_tokens) = (Vec::new(), Vec::new());
        let finish = loop {
            let done = job.take(&mut text, &mut tokens);
            all_text.extend_from_slice(&text);
            all_tokens.extend_from_slice(&tokens);
            if let Some(done) = done {
                break done;
            }
        };
        let finish = match finish {
            Ok(f) => f,
            Err(e) => {
                let error = ApiError::status(500, "server_error", e.clone());
                let _ = request.respond(json_response(500, &error.body()));
                return Err((500, e));
            }
        };
        let generated = String::from_utf8_lossy(&all_text);
        let model = &self.config.model_id;
        let reason = api::finish_reason(finish.reason);
        let body = match kind {
            Kind::Completion => {
                let echo = if params.echo {
                    params.prompt_text.as_str()
                } else {
                    ""
                };
                let logprobs = params.spec.logprobs.map(|_| {
                    let prompt = params.echo.then_some(params.spec.prompt.as_slice());
                    api::completion_logprobs(self.model, prompt, &all_tokens, 0)
                });
                json!({
                    "id": id, "object": "text_completion", "created": now_secs(), "model": model,
                    "choices": [{"text": format!("{echo}{generated}"), "index": 0,
                                 "logprobs": logprobs, "finish_reason": reason}],
                    "usage": api::usage(&finish),
                })
            }
            Kind::Chat => {
                let logprobs = params
                    .spec
                    .logprobs
                    .map(|_| api::chat_logprobs(self.model, &all_tokens));
                json!({
                    "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
                    "choices": [{"index": 0,
                                 "message": {"role": "assistant", "content": generated},
                                 "logprobs": logprobs, "finish_reason": reason}],
                    "usage": api::usage(&finish),
                })
            }
        };
        let _ = request.respond(json_response(200, &body));
        Ok(finish)
    }

    /// Streams the output as server-sent events, one per batch of new text, ending with
    /// `data: [DONE]`. A failed write (the client left) cancels the job.
    fn stream(
        &self,
        request: Request,
        kind: Kind,
        id: &str,
        params: &Params,
        job: &Job,
    ) -> Result<Finish, (u16, String)> {
        if *request.http_version() < (1, 1) {
            job.cancel();
            let error = ApiError::status(
                505,
                "invalid_request_error",
                "streaming needs HTTP/1.1 (chunked transfer encoding)",
            );
            let _ = request.respond(json_response(505, &error.body()));
            return Err((505, error.message));
        }
        let mut events = match EventStream::start(request) {
            Ok(events) => events,
            Err(e) => {
                job.cancel();
                return Err((499, format!("client gone before the stream started: {e}")));
            }
        };
        let chunk = |delta: Value, logprobs: Option<Value>, reason: Option<&str>| match kind {
            Kind::Completion => json!({
                "id": id, "object": "text_completion", "created": now_secs(),
                "model": self.config.model_id,
                "choices": [{"text": delta, "index": 0, "logprobs": logprobs, "finish_reason": reason}],
            }),
            Kind::Chat => json!({
                "id": id, "object": "chat.completion.chunk", "created": now_secs(),
                "model": self.config.model_id,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
            }),
        };
        let text_delta = |text: &str| match kind {
            Kind::Completion => Value::from(text),
            Kind::Chat => json!({"content": text}),
        };
        let cancel = |e: std::io::Error| {
            job.cancel();
            (499, format!("client gone: {e}"))
        };
        match kind {
            Kind::Chat => events.send(&chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                None,
            )),
            Kind::Completion if params.echo => {
                events.send(&chunk(Value::from(params.prompt_text.as_str()), None, None))
            }
            Kind::Completion => Ok(()),
        }
        .map_err(cancel)?;
        let (mut text, mut tokens) = job.buffers();
        let mut utf8 = Utf8Stream::new();
        let mut offset = if params.echo {
            params.prompt_text.len()
        } else {
            0
        };
        let finish = loop {
            let done = job.take(&mut text, &mut tokens);
            let piece = match done {
                Some(_) => {
                    let mut s = utf8.push(&text).to_owned();
                    s.push_str(utf8.finish());
                    s
                }
                None => utf8.push(&text).to_owned(),
            };
            if !piece.is_empty() || !tokens.is_empty() {
                let logprobs = params
                    .spec
                    .logprobs
                    .map(|_| self.logprobs(kind, &tokens, offset));
                offset += piece.len();
                events
                    .send(&chunk(text_delta(&piece), logprobs, None))
                    .map_err(cancel)?;
            }
            if let Some(done) = done {
                break done;
            }
        };
        let finish = match finish {
            Ok(f) => f,
            Err(e) => {
                let error = ApiError::status(500, "server_error", e.clone());
                let _ = events.send(&error.body()).and_then(|_| events.done());
                return Err((500, e));
            }
        };
        let reason = api::finish_reason(finish.reason);
        let last_delta = match kind {
            Kind::Completion => Value::from(""),
            Kind::Chat => json!({}),
        };
        events
            .send(&chunk(last_delta, None, Some(reason)))
            .map_err(cancel)?;
        if params.include_usage {
            let object = match kind {
                Kind::Completion => "text_completion",
                Kind::Chat => "chat.completion.chunk",
            };
            let usage = json!({"id": id, "object": object, "created": now_secs(),
                               "model": self.config.model_id, "choices": [],
                               "usage": api::usage(&finish)});
            events.send(&usage).map_err(cancel)?;
        }
        events.done().map_err(cancel)?;
        Ok(finish)
    }

    fn logprobs(&self, kind: Kind, tokens: &[TokenRecord], offset: usize) -> Value {
        match kind {
            Kind::Completion => api::completion_logprobs(self.model, None, tokens, offset),
            Kind::Chat => api::chat_logprobs(self.model, tokens),
        }
    }
}

/// A `text/event-stream` response written chunk by chunk (HTTP/1.1 chunked encoding), each
/// event flushed as soon as it is written.
struct EventStream {
    writer: Box<dyn Write + Send>,
}

impl EventStream {
    /// Writes the response head (by tiny_http, for HTTP/1.1 with chunked encoding) and takes
    /// over the connection.
    fn start(request: Request) -> std::io::Result<Self> {
        let version = request.http_version().clone();
        // Without the client's TE preferences tiny_http picks chunked encoding for HTTP/1.1.
        let headers: Vec<Header> = request
            .headers()
            .iter()
            .filter(|h| !h.field.equiv("TE"))
            .cloned()
            .collect();
        let mut head = Vec::new();
        Response::new(
            StatusCode(200),
            vec![
                header("Content-Type", "text/event-stream"),
                header("Cache-Control", "no-cache"),
            ],
            std::io::empty(),
            None,
            None,
        )
        .raw_print(&mut head, version, &headers, true, None)?;
        let mut writer = request.into_writer();
        writer.write_all(&head)?;
        writer.flush()?;
        Ok(EventStream { writer })
    }

    /// Sends one event holding `value`.
    fn send(&mut self, value: &Value) -> std::io::Result<()> {
        self.chunk(format!("data: {value}\n\n").as_bytes())
    }

    fn chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        write!(self.writer, "{:x}\r\n", data.len())?;
        self.writer.write_all(data)?;
        self.writer.write_all(b"\r\n")?;
        self.writer.flush()
    }

    /// Sends `data: [DONE]` and ends the response.
    fn done(&mut self) -> std::io::Result<()> {
        self.chunk(b"data: [DONE]\n\n")?;
        self.writer.write_all(b"0\r\n\r\n")?;
        self.writer.flush()
    }
}
