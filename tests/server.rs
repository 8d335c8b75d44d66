//! `gpt2q serve` driven over HTTP on an ephemeral loopback port: the OpenAI endpoints, streaming,
//! agreement with `gpt2q run` and the scoring path, the queue, the API key, disconnects and every
//! class of bad request.
#![cfg(feature = "server")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{gpt2q_command, reference};
use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::perplexity::nll;
use gpt2q::session::Session;
use serde_json::{json, Value};

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gpt2-q8.g2q")
}

/// A running server, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    /// The memory plan the startup log gave, in MiB.
    plan_mib: f64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Self::start_with_key(extra, None)
    }

    /// Starts with `$GPT2Q_API_KEY` set to `key` (unset without one).
    fn start_with_key(extra: &[&str], key: Option<&str>) -> Server {
        let mut command = gpt2q_command();
        match key {
            Some(k) => command.env("GPT2Q_API_KEY", k),
            None => command.env_remove("GPT2Q_API_KEY"),
        };
        let mut child = command
            .args([
                "serve",
                "-m",
                model_path().to_str().unwrap(),
                "--port",
                "0",
                "-q",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut plan_mib = f64::NAN;
        let addr = loop {
            let line = lines.next().expect("the server said it is ready").unwrap();
            if let Some(rest) = line.split("memory plan ").nth(1) {
                plan_mib = rest.split(' ').next().unwrap().parse().unwrap();
            }
            if let Some(rest) = line.split("ready on http://").nth(1) {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            plan_mib,
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .write_all(&request_bytes(method, path, headers, body))
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        Reply::parse(&raw)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, &[], body.to_string().as_bytes())
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    fn metric(&self, name: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("gpt2q_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }

    fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(name) != value {
            assert!(Instant::now() < deadline, "{name} never became {value}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += "\r\n";
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = headers[9..12].parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if headers.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of an event stream.
    fn events(&self) -> Vec<String> {
        String::from_utf8(self.body.clone())
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line + 2..line + 2 + size]);
        body = &body[line + 2 + size + 2..];
    }
}

fn text_of(reply: &Value) -> String {
    let choice = &reply["choices"][0];
    choice["text"]
        .as_str()
        .or(choice["message"]["content"].as_str())
        .unwrap()
        .to_owned()
}

/// The text of a streamed completion or chat, and its finish reason.
fn streamed(reply: &Reply) -> (String, String) {
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finish = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        let choice = &v["choices"][0];
        let delta = choice["text"]
            .as_str()
            .or(choice["delta"]["content"].as_str());
        text += delta.unwrap_or("");
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (text, finish)
}

/// Nats by which a server's log-probability may differ from a scoring session's. The server runs
/// generated (and echoed prompt) tokens one at a time and scoring runs them as a batch; the
/// matrix kernels for one token and for a batch sum in different orders, which moves these
/// logprobs of the tiny q8 model by up to about 4e-3 nats.
const LOGPROB_TOLERANCE: f64 = 1e-2;

fn fixture_prompts() -> Vec<String> {
    reference()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn greedy_completions_equal_gpt2q_run_streamed_or_not() {
    let server = Server::start(&["--parallel", "2"]);
    for prompt in fixture_prompts() {
        let run = gpt2q_command()
            .args(["run", "-m", model_path().to_str().unwrap(), "-p", &prompt])
            .args(["-n", "12", "--greedy", "-q"])
            .output()
            .unwrap();
        assert!(run.status.success());
        let expected = String::from_utf8(run.stdout).unwrap();
        let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "echo": true});
        let reply = server.post("/v1/completions", &body);
        assert_eq!(reply.status, 200);
        let v = reply.json();
        assert_eq!(format!("{}\n", text_of(&v)), expected, "prompt {prompt:?}");
        assert_eq!(v["object"], "text_completion");
        let usage = &v["usage"];
        assert_eq!(
            usage["total_tokens"],
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
        let mut body = body;
        body["stream"] = json!(true);
        let reply = server.post("/v1/completions", &body);
        assert!(reply.headers.contains("text/event-stream"));
        let (text, finish) = streamed(&reply);
        assert_eq!(format!("{text}\n"), expected);
        assert_eq!(finish, v["choices"][0]["finish_reason"].as_str().unwrap());
    }
}

#[test]
fn stop_max_tokens_and_seed_reproduce() {
    let server = Server::start(&[]);
    let complete = |extra: Value| {
        let mut body =
            json!({"prompt": "The quick brown fox", "max_tokens": 24, "ignore_eos": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let reply = server.post("/v1/completions", &body);
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    };
    let full = complete(json!({"temperature": 0}));
    assert_eq!(full["choices"][0]["finish_reason"], "length");
    assert_eq!(full["usage"]["completion_tokens"], 24);
    let text = text_of(&full);
    // A stop string taken from the middle of the greedy text cuts it there.
    let cut = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[cut..].chars().take(3).collect();
    let before = &text[..text.find(&stop).unwrap()];
    let stopped = complete(json!({"temperature": 0, "stop": ["zzzz", stop]}));
    assert_eq!(text_of(&stopped), before);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let short = complete(json!({"temperature": 0, "max_tokens": 5}));
    assert_eq!(short["usage"]["completion_tokens"], 5);
    assert!(text.starts_with(&text_of(&short)));
    let sampled = |seed: u64| text_of(&complete(json!({"temperature": 1.0, "seed": seed})));
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(sampled(7), sampled(8));
}

#[test]
fn chat_streams_and_reuses_the_conversation_prefix() {
    let server = Server::start(&["--parallel", "2"]);
    let first = json!({"messages": [{"role": "user", "content": "Hello, how are you?"}],
                       "max_tokens": 10, "temperature": 0});
    let reply = server.post("/v1/chat/completions", &first).json();
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["choices"][0]["message"]["role"], "assistant");
    let answer = text_of(&reply);
    let reason = reply["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason == "stop" || reason == "length", "{reason}");
    let mut stream = first.clone();
    stream["stream"] = json!(true);
    let (text, finish) = streamed(&server.post("/v1/chat/completions", &stream));
    assert_eq!((text, finish), (answer.clone(), reason));
    let prompt_tokens = reply["usage"]["prompt_tokens"].as_u64().unwrap();
    let next = json!({"messages": [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "What is your name?"}],
        "max_tokens": 4, "temperature": 0});
    let reply = server.post("/v1/chat/completions", &next).json();
    let cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= prompt_tokens,
        "{cached} < {prompt_tokens}: {reply}"
    );
    assert!(server.metric("prompt_tokens_reused_total") >= cached as f64);
}

#[test]
fn logprobs_agree_with_the_scoring_path() {
    let server = Server::start(&[]);
    let body = json!({"messages": [{"role": "user", "content": "The capital of France is"}],
                      "max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 3,
                      "ignore_eos": true});
    let reply = server.post("/v1/chat/completions", &body).json();
    let content = reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 6);
    let file = ModelFile::open(&model_path()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let by_bytes: std::collections::HashMap<Vec<u8>, u32> = (0..model.hparams.n_vocab)
        .map(|id| (model.tokenizer.token_bytes(id).unwrap().to_vec(), id))
        .collect();
    let mut ids = model
        .tokenizer
        .encode("The capital of France is<|endoftext|>");
    let prompt_len = ids.len();
    for entry in &content {
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        ids.push(by_bytes[&bytes]);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0]["token"], entry["token"],
            "greedy picks the most likely"
        );
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    let mut session = Session::for_scoring(&model, ids.len()).unwrap();
    let logits = session.forward_batch(&ids).unwrap().to_vec();
    let v = model.hparams.n_vocab as usize;
    for (j, entry) in content.iter().enumerate() {
        let pos = prompt_len - 1 + j;
        let expected = -nll(&logits[pos * v..(pos + 1) * v], ids[pos + 1]);
        let got = entry["logprob"].as_f64().unwrap();
        assert!(
            (got - expected).abs() < LOGPROB_TOLERANCE,
            "token {j}: {got} vs {expected}"
        );
    }
}

#[test]
fn echoed_prompt_logprobs_agree_with_the_scoring_path() {
    let server = Server::start(&[]);
    let prompt = "The quick brown fox jumps over the lazy dog";
    let body = json!({"prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1});
    let reply = server.post("/v1/completions", &body).json();
    assert_eq!(text_of(&reply), prompt);
    let lp = &reply["choices"][0]["logprobs"];
    let file = ModelFile::open(&model_path()).unwrap();
    let model = Model::load(&file, false).unwrap();
    let ids = model.tokenizer.encode(prompt);
    let got = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(got.len(), ids.len());
    assert!(got[0].is_null());
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[..3], [0, 3, 9], "\"The\", \" quick\", \" brown\"");
    let mut session = Session::for_scoring(&model, ids.len()).unwrap();
    let logits = session.forward_batch(&ids).unwrap().to_vec();
    let v = model.hparams.n_vocab as usize;
    for t in 1..ids.len() {
        let expected = -nll(&logits[(t - 1) * v..t * v], ids[t]);
        let got = got[t].as_f64().unwrap();
        assert!(
            (got - expected).abs() < LOGPROB_TOLERANCE,
            "token {t}: {got} vs {expected}"
        );
    }
}

#[test]
fn models_health_and_metrics() {
    let server = Server::start(&["--alias", "tiny"]);
    assert_eq!(server.get("/health").json()["status"], "ok");
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(server.get("/v1/models/tiny").json()["id"], "tiny");
    assert_eq!(server.get("/v1/models/gpt-4").status, 404);
    let reply = server.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "Hi", "max_tokens": 3}),
    );
    assert_eq!(reply.status, 200);
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    for name in [
        "requests_total{endpoint=\"completions\"} 1",
        "slots_busy 0",
        "queue_length 0",
    ] {
        assert!(
            metrics.contains(&format!("gpt2q_{name}")),
            "{name} in {metrics}"
        );
    }
    assert!(server.metric("tokens_generated_total") >= 1.0);
}

/// Starts a long streamed generation and returns the connection after its first event.
fn start_long_stream(server: &Server) -> TcpStream {
    let body = json!({"prompt": "Once upon a time", "max_tokens": 100000, "ignore_eos": true,
                      "stream": true});
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .write_all(&request_bytes(
            "POST",
            "/v1/completions",
            &[],
            body.to_string().as_bytes(),
        ))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

#[test]
fn a_client_that_disconnects_frees_its_slot() {
    let server = Server::start(&[
        "--parallel",
        "1",
        "--max-tokens-cap",
        "100000",
        "--ctx",
        "64",
    ]);
    let stream = start_long_stream(&server);
    assert_eq!(server.metric("slots_busy"), 1.0);
    drop(stream);
    server.wait_for_metric("slots_busy", 0.0);
    let reply = server.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(reply.status, 200);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "1",
        "--max-tokens-cap",
        "100000",
    ]);
    let running = start_long_stream(&server);
    let addr = server.addr.clone();
    // Waits in the queue until the server is killed.
    let waiting = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
        s.write_all(&request_bytes(
            "POST",
            "/v1/completions",
            &[],
            body.as_bytes(),
        ))
        .unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    server.wait_for_metric("queue_length", 1.0);
    let reply = server.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 1}));
    assert_eq!(reply.status, 429);
    assert!(
        reply.headers.contains("retry-after: 1"),
        "{}",
        reply.headers
    );
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    assert_eq!(server.metric("requests_rejected_total"), 1.0);
    drop(running);
    waiting.join().unwrap();
}

#[test]
fn the_api_key_is_enforced_except_for_health() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    let post = |headers: &[(&str, &str)]| {
        server.request("POST", "/v1/completions", headers, body.as_bytes())
    };
    assert_eq!(post(&[]).status, 401);
    assert_eq!(post(&[("Authorization", "Bearer wrong")]).status, 401);
    let denied = post(&[("Authorization", "s3cret")]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["code"], "invalid_api_key");
    assert_eq!(server.get("/v1/models").status, 401);
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(post(&[("Authorization", "Bearer s3cret")]).status, 200);
    drop(server);
    let server = Server::start_with_key(&[], Some("from-env"));
    assert_eq!(server.get("/v1/models").status, 401);
    let ok = server.request(
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer from-env")],
        b"",
    );
    assert_eq!(ok.status, 200);
}

#[test]
fn every_bad_request_gets_its_4xx_and_the_server_goes_on() {
    let server = Server::start(&["--max-body", "4K", "--ctx", "32"]);
    let long_prompt = "word ".repeat(40);
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("POST", "/v1/completions", b"{\"prompt\": ".to_vec(), 400),
        ("POST", "/v1/completions", b"not json".to_vec(), 400),
        ("POST", "/v1/completions", b"".to_vec(), 400),
        ("POST", "/v1/completions", br#"{"prompt": 5}"#.to_vec(), 400),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": "9"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            b"{\"prompt\": \"a\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "model": "gpt-4"}"#.to_vec(),
            404,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": -1}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "max_tokens": 1e300}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "seed": 99999999999999999999999}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "temperature": 9}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "top_p": -0.5}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "stop": ["1","2","3","4","5"]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": "a", "n": 3}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": [1, 99999999]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt": [-1]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/completions",
            json!({"prompt": long_prompt}).to_string().into_bytes(),
            400,
        ),
        ("POST", "/v1/completions", vec![b' '; 5000], 413),
        (
            "POST",
            "/v1/chat/completions",
            br#"{"messages": []}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            br#"{"messages": [{"role": "robot", "content": "x"}]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/v1/chat/completions",
            br#"{"messages": [{"role": "user"}], "logprobs": 3}"#.to_vec(),
            400,
        ),
        ("GET", "/v1/completions", Vec::new(), 405),
        ("GET", "/v1/nothing", Vec::new(), 404),
    ];
    for (method, path, body, status) in cases {
        let reply = server.request(method, path, &[], &body);
        let shown = String::from_utf8_lossy(&body);
        assert_eq!(reply.status, status, "{method} {path} {shown}");
        let error = &reply.json()["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{shown}"
        );
        assert!(error["type"].is_string(), "{shown}");
        let good = server.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
        assert_eq!(good.status, 200, "after {shown}");
    }
    let truncated = json!({"prompt": long_prompt, "max_tokens": 2, "truncate_prompt": true});
    let reply = server.post("/v1/completions", &truncated).json();
    assert_eq!(reply["usage"]["prompt_tokens"], 32);
}

#[test]
fn generation_past_the_context_shifts_as_gpt2q_run_does() {
    let server = Server::start(&["--ctx", "32"]);
    let body = json!({"prompt": "The sea", "max_tokens": 80, "temperature": 0, "echo": true,
                      "ignore_eos": true});
    let reply = server.post("/v1/completions", &body).json();
    assert_eq!(reply["usage"]["completion_tokens"], 80);
    let run = gpt2q_command()
        .args(["run", "-m", model_path().to_str().unwrap(), "-p", "The sea"])
        .args(["-n", "80", "--ctx", "32", "--greedy", "--ignore-eos", "-q"])
        .output()
        .unwrap();
    assert_eq!(
        format!("{}\n", text_of(&reply)),
        String::from_utf8(run.stdout).unwrap()
    );
}

#[test]
fn peak_rss_stays_within_the_memory_plan() {
    if common::emulated() {
        return; // the emulator's own memory would be measured
    }
    let server = Server::start(&["--parallel", "2", "--ctx", "256"]);
    let body = json!({"prompt": "Hello", "max_tokens": 300, "ignore_eos": true});
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| assert_eq!(server.post("/v1/completions", &body).status, 200));
        }
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let peak = kib / 1024.0;
    eprintln!("peak RSS {peak:.1} MiB, plan {:.1} MiB", server.plan_mib);
    assert!(
        peak <= server.plan_mib + 16.0,
        "peak RSS {peak:.1} MiB over the plan {:.1} MiB + 16",
        server.plan_mib
    );
}

#[test]
fn a_plan_over_the_memory_limit_is_refused() {
    let o = gpt2q_command()
        .args(["serve", "-m", model_path().to_str().unwrap(), "--port", "0"])
        .args([
            "--parallel",
            "4",
            "--ctx",
            "512",
            "--kv",
            "f32",
            "--mem-limit",
            "20M",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--parallel 4") && err.contains("over --mem-limit"),
        "{err}"
    );
}
