//! `gpt2q serve`: an OpenAI-compatible HTTP server. One model is loaded once and shared
//! read-only by `--parallel` slots, each a [`gpt2q::session::Session`] with its own KV cache;
//! requests beyond the slots wait in a bounded queue (`--queue`), and beyond that get 429.
//!
//! The pieces: [`api`] (request and response bodies), [`http`] (routing, auth, streaming),
//! [`slots`] (the slot threads over [`gpt2q::slots`]: the queue, prefix reuse), [`metrics`]
//! (Prometheus counters).

mod api;
mod http;
mod metrics;
mod slots;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gpt2q::chat::ChatTemplate;
use gpt2q::model::Model;
use gpt2q::session::{self, Session};
use gpt2q::{Error, Result};

use super::options::{unescape, ContextArgs};
use super::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    /// Address to listen on. The default answers only this machine; 0.0.0.0 answers the network
    /// (set --api-key then).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generated at the same time, each in its own slot with its own KV cache of --ctx.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Requests that may wait for a free slot; more get 429 Too Many Requests.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on every request but /health (default:
    /// $GPT2Q_API_KEY, which, unlike a flag, other users cannot read with ps).
    #[arg(long)]
    api_key: Option<String>,
    /// Most tokens one request may generate (larger max_tokens are lowered to it).
    #[arg(long, default_value_t = 512)]
    max_tokens_cap: usize,
    /// Largest request body (e.g. 1M; K, M, G are powers of 1024).
    #[arg(long, default_value = "1M", value_parser = super::info::parse_bytes)]
    max_body: usize,
    /// How chat messages are written, with {user} for a user's text (escapes \n, \t, \\), e.g.
    /// "User: {user}\nBot:". Default: DialoGPT's, each turn followed by <|endoftext|>.
    #[arg(long)]
    template: Option<String>,
    /// Text that ends a reply with --template (escapes allowed), e.g. "\n".
    #[arg(long, requires = "template")]
    stop: Option<String>,
    /// The model's id in the API (default: the file name without .g2q).
    #[arg(long)]
    alias: Option<String>,
    /// Log nothing per request.
    #[arg(short, long)]
    quiet: bool,
}

/// Handler threads at most; connections beyond them get 503 at once.
const MAX_HANDLERS: usize = 256;

fn template(args: &Args) -> Result<ChatTemplate> {
    match &args.template {
        Some(t) => {
            let stop = args
                .stop
                .as_deref()
                .map(|s| unescape("--stop", s))
                .transpose()?;
            ChatTemplate::new(&unescape("--template", t)?, stop.as_deref())
        }
        None => Ok(ChatTemplate::dialogpt()),
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The API key: --api-key, else $GPT2Q_API_KEY; an empty key is refused.
fn api_key(args: &Args) -> Result<Option<String>> {
    let key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("GPT2Q_API_KEY").ok());
    match key {
        Some(k) if k.trim().is_empty() => Err(Error::invalid("the API key is empty")),
        k => Ok(k),
    }
}

/// True for addresses only this machine can reach.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn run(args: Args) -> Result<()> {
    let template = template(&args)?;
    let api_key = api_key(&args)?;
    if args.max_tokens_cap == 0 {
        return Err(Error::invalid("--max-tokens-cap must be at least 1"));
    }
    if args.parallel == 0 {
        return Err(Error::invalid("--parallel must be at least 1"));
    }
    let address = format!("{}:{}", args.host, args.port);
    let server = tiny_http::Server::http(&address).map_err(|e| {
        Error::io(
            Path::new(&address),
            std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, e.to_string()),
        )
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .map_or(address, |a| a.to_string());
    eprintln!("gpt2q serve: listening on http://{bound} (loading the model)");
    if api_key.is_none() && !is_loopback(&args.host) {
        eprintln!(
            "gpt2q serve: warning: {} is reachable from other machines and no --api-key is set",
            args.host
        );
    }
    let file = std::thread::scope(|s| {
        let loading = s.spawn(|| args.model.open());
        // Answer while the model loads, so a health check sees "loading" rather than nothing.
        while !loading.is_finished() {
            if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(20)) {
                answer_loading(request);
            }
        }
        loading
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("loading the model failed")))
    })?;
    let model = Model::load(&file, args.model.verify)?;
    let c = &args.context;
    let plan = session::plan_slots(
        &model.hparams,
        file.bytes().len(),
        c.ctx,
        c.kv,
        c.mem_limit,
        args.parallel,
    )?;
    let ctx = plan.config.ctx;
    let sessions = (0..args.parallel)
        .map(|_| Session::with_config(&model, plan.config))
        .collect::<Result<Vec<_>>>()?;
    let model_id = args.alias.clone().unwrap_or_else(|| {
        file.path()
            .file_stem()
            .map_or("gpt2q".into(), |s| s.to_string_lossy().into_owned())
    });
    let m = &plan.memory;
    eprintln!(
        "gpt2q serve: model {model_id}, {} slot{} of ctx {ctx} (KV {}), queue {}; memory plan {:.1} MiB \
         (weights {:.1} + KV caches {:.1} + scratch {:.1})",
        args.parallel,
        if args.parallel == 1 { "" } else { "s" },
        c.kv,
        args.queue,
        mib(m.total()),
        mib(m.weights),
        mib(m.kv_cache),
        mib(m.scratch)
    );
    let config = http::Config {
        model_id,
        api_key,
        max_body: args.max_body,
        max_tokens_cap: args.max_tokens_cap,
        ctx,
        slots: args.parallel,
        queue: args.queue,
        keep: c.keep.unwrap_or(0),
        template,
        log: !args.quiet,
    };
    let scheduler = gpt2q::slots::Scheduler::new(args.parallel, args.queue);
    let metrics = metrics::Metrics::default();
    let api = http::Server::new(&model, &scheduler, &metrics, &config);
    let handlers = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (i, session) in sessions.into_iter().enumerate() {
            let (scheduler, metrics) = (&scheduler, &metrics);
            s.spawn(move || slots::run_slot(i, session, scheduler, metrics));
        }
        eprintln!("gpt2q serve: ready on http://{bound}");
        for request in server.incoming_requests() {
            if handlers.fetch_add(1, Ordering::SeqCst) >= MAX_HANDLERS {
                handlers.fetch_sub(1, Ordering::SeqCst);
                let body =
                    api::ApiError::status(503, "server_error", "too many connections").body();
                let _ = request.respond(
                    tiny_http::Response::from_string(body.to_string()).with_status_code(503),
                );
                continue;
            }
            let (api, handlers) = (&api, &handlers);
            s.spawn(move || {
                api.handle(request);
                handlers.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(())
}

/// 503 `{"status": "loading"}` for /health (and every other request) while the model loads.
fn answer_loading(request: tiny_http::Request) {
    let body = if request.url() == "/health" {
        serde_json::json!({"status": "loading"})
    } else {
        api::ApiError::status(503, "server_error", "the model is loading").body()
    };
    let response = tiny_http::Response::from_string(body.to_string())
        .with_status_code(503)
        .with_header(
            tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                .expect("valid header"),
        );
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "192.168.1.5", "::", "example.org"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
