//! `gpt2q.Model`: a loaded model file with its thread pool and reusable sessions; tokenizing,
//! generation, scoring and logits over the library's public API.

use std::path::PathBuf;
use std::sync::Arc;

use gpt2q::generate::{reserve_len, ContextPolicy, Event, Generator, StopRules, StopText};
use gpt2q::kv_cache::KvType;
use gpt2q::sampler::Sampler;
use gpt2q::score::{logits, Scorer};
use gpt2q::session::{self, SessionConfig, SessionPlan};
use gpt2q::task::Task;
use gpt2q::tokenizer::Utf8Stream;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList, PyString};

use crate::chat::{Chat, ChatArgs};
use crate::errors::to_py;
use crate::job::{Job, TextStream};
use crate::options::{stop_strings, Sampling};
use crate::owned::{LoadedModel, SessionSlot};

/// Tokens generated when neither `max_tokens` nor a task says how many (as `gpt2q run`).
const DEFAULT_MAX_TOKENS: usize = 128;

/// A GPT-2 model loaded from a `.g2q` file.
#[pyclass(module = "gpt2q", frozen)]
pub struct Model {
    loaded: Arc<LoadedModel>,
    pool: Arc<rayon::ThreadPool>,
    path: PathBuf,
    threads: usize,
    /// The generation sessions' sizing and the memory they take.
    plan: SessionPlan,
    generation: Arc<SessionSlot>,
    /// Scoring sessions (every position's logits kept) of the last window asked for.
    scoring: std::sync::Mutex<Arc<SessionSlot>>,
}

impl Model {
    fn model(&self) -> &gpt2q::model::Model<'_> {
        self.loaded.model()
    }

    fn eos(&self) -> u32 {
        self.model().hparams.eos_id
    }

    /// The slot of scoring sessions with room for `window` positions.
    fn scoring_slot(&self, window: usize) -> PyResult<Arc<SessionSlot>> {
        let n_ctx = self.model().hparams.n_ctx as usize;
        if window < 2 || window > n_ctx {
            return Err(PyValueError::new_err(format!(
                "window must be in 2..={n_ctx} for this model, got {window}"
            )));
        }
        let mut slot = self
            .scoring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.config().ctx != window {
            let config = SessionConfig {
                all_logits: true,
                ..SessionConfig::new(window)
            };
            *slot = Arc::new(SessionSlot::new(self.loaded.clone(), config));
        }
        Ok(slot.clone())
    }
}

/// Generation arguments fixed before the work starts.
struct GenerationJob {
    ids: Vec<u32>,
    rules: StopRules,
    stop: Option<StopText>,
    sampler: Sampler,
}

fn run_generation(
    slot: &SessionSlot,
    job: GenerationJob,
    emitter: &crate::job::Emitter<String>,
) -> gpt2q::Result<()> {
    let GenerationJob {
        ids,
        rules,
        mut stop,
        mut sampler,
    } = job;
    let mut owned = slot.take()?;
    let outcome = owned.with(|session| {
        let mut history = Vec::with_capacity(reserve_len(ids.len(), rules.max_new_tokens));
        history.extend_from_slice(&ids);
        let mut generator =
            Generator::new(session, &mut sampler, history, ContextPolicy::default());
        let mut utf8 = Utf8Stream::new();
        generator.generate(rules, stop.as_mut(), |event| {
            if emitter.cancelled() {
                return std::ops::ControlFlow::Break(());
            }
            if let Event::Text(bytes) = event {
                let text = utf8.push(bytes);
                if !text.is_empty() && !emitter.emit(text.to_owned()) {
                    return std::ops::ControlFlow::Break(());
                }
            }
            std::ops::ControlFlow::Continue(())
        })?;
        let tail = utf8.finish();
        if !tail.is_empty() {
            emitter.emit(tail.to_owned());
        }
        Ok(())
    });
    slot.give_back(owned);
    outcome
}

#[pymethods]
impl Model {
    /// Loads the `.g2q` model file at `path`.
    ///
    /// `ctx`: the context of generation sessions (default: the model's maximum); `kv`: how the
    /// KV cache stores keys and values (`"f32"`, `"f16"` or `"q8"`); `threads`: worker threads
    /// of this model's pool (default: one per core); `mmap`: map the file instead of reading it
    /// into memory (shared with other processes, slower decoding); `verify`: check every
    /// tensor's checksum first.
    #[new]
    #[pyo3(signature = (path, ctx = None, kv = "f16", threads = None, mmap = false, verify = false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        ctx: Option<usize>,
        kv: &str,
        threads: Option<usize>,
        mmap: bool,
        verify: bool,
    ) -> PyResult<Self> {
        let kv: KvType = kv.parse().map_err(to_py)?;
        let threads = match threads {
            Some(0) => return Err(PyValueError::new_err("threads must be at least 1")),
            Some(n) => n,
            None => gpt2q::machine::cores(),
        };
        let loaded = py
            .detach(|| LoadedModel::open(&path, mmap, verify))
            .map_err(to_py)?;
        let plan = session::plan(&loaded.model().hparams, loaded.file_size(), ctx, kv, None)
            .map_err(to_py)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gpt2q-{i}"))
            // A panic ends its job with a RuntimeError (its channel closes), not the process.
            .panic_handler(|_| {})
            .build()
            .map_err(|e| PyValueError::new_err(format!("cannot start {threads} threads: {e}")))?;
        let loaded = Arc::new(loaded);
        let scoring_config = SessionConfig {
            all_logits: true,
            ..SessionConfig::new(plan.config.ctx)
        };
        Ok(Model {
            generation: Arc::new(SessionSlot::new(loaded.clone(), plan.config)),
            scoring: std::sync::Mutex::new(Arc::new(SessionSlot::new(
                loaded.clone(),
                scoring_config,
            ))),
            loaded,
            pool: Arc::new(pool),
            path,
            threads,
            plan,
        })
    }

    /// Hyper-parameters, quantisation, file size and the memory plan of a generation session,
    /// as a dict.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let model = self.model();
        let hp = &model.hparams;
        let info = PyDict::new(py);
        info.set_item("path", &self.path)?;
        info.set_item("file_size", self.loaded.file_size())?;
        info.set_item("n_vocab", hp.n_vocab)?;
        info.set_item("n_ctx", hp.n_ctx)?;
        info.set_item("n_embd", hp.n_embd)?;
        info.set_item("n_head", hp.n_head)?;
        info.set_item("n_layer", hp.n_layer)?;
        info.set_item("n_inner", hp.n_inner)?;
        info.set_item("eos_id", hp.eos_id)?;
        info.set_item("quant", model.meta("quant"))?;
        info.set_item("ctx", self.plan.config.ctx)?;
        info.set_item("kv", self.plan.config.kv.to_string())?;
        info.set_item("threads", self.threads)?;
        let memory = PyDict::new(py);
        memory.set_item("weights", self.plan.memory.weights)?;
        memory.set_item("kv_cache", self.plan.memory.kv_cache)?;
        memory.set_item("scratch", self.plan.memory.scratch)?;
        memory.set_item("total", self.plan.memory.total())?;
        info.set_item("memory", memory)?;
        let metadata = PyDict::new(py);
        for (k, v) in &model.metadata {
            metadata.set_item(k, v)?;
        }
        info.set_item("metadata", metadata)?;
        Ok(info)
    }

    /// The token ids of `text` (`<|endoftext|>` in the text becomes its id).
    fn tokenize(&self, py: Python<'_>, text: &str) -> Vec<u32> {
        py.detach(|| self.model().tokenizer.encode(text))
    }

    /// The text of token ids (invalid UTF-8 across tokens becomes U+FFFD).
    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        self.model().tokenizer.decode(&ids).map_err(to_py)
    }

    /// Generates text after `prompt` and returns it (without the prompt), or with
    /// `stream=True` an iterator over its pieces as they are generated (whole UTF-8
    /// characters). Sampling as `gpt2q run`: `temperature=0` is greedy; `seed` makes a run
    /// repeatable (default: from the clock). Generation ends after `max_tokens` tokens (default
    /// 128, or the task's), at `<|endoftext|>` unless `ignore_eos`, or before the first of the
    /// `stop` strings (never returned). `task` ("summarize", "translate" or "qa") wraps the
    /// prompt in the GPT-2 paper's zero-shot prompt and uses its decoding, as `gpt2q run
    /// --task`. When the context fills, it shifts (the oldest half is dropped and the rest
    /// re-run). Ctrl-C stops it with KeyboardInterrupt.
    #[pyo3(signature = (
        prompt, max_tokens = None, temperature = None, top_k = None, top_p = 0.95, min_p = 0.05,
        repeat_penalty = 1.0, repeat_last_n = 64, seed = None, stop = None, stream = false,
        task = None, ignore_eos = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        repeat_last_n: usize,
        seed: Option<u64>,
        stop: Option<&Bound<'_, PyAny>>,
        stream: bool,
        task: Option<&str>,
        ignore_eos: bool,
    ) -> PyResult<Py<PyAny>> {
        let task: Option<Task> = task.map(str::parse).transpose().map_err(to_py)?;
        let preset = task.map(Task::defaults);
        let sampling = Sampling {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
        };
        let config = sampling.config(preset).map_err(to_py)?;
        let stops = match stop_strings(stop)? {
            Some(list) => Some(list),
            None => preset.and_then(|p| p.stop).map(|s| vec![s.to_owned()]),
        };
        let stop = stops
            .as_deref()
            .map(StopText::any)
            .transpose()
            .map_err(to_py)?;
        let prompt = task.map_or_else(|| prompt.to_owned(), |t| t.prompt(prompt));
        let mut ids = py.detach(|| self.model().tokenizer.encode(&prompt));
        if ids.is_empty() {
            ids.push(self.eos());
        }
        let ctx = self.plan.config.ctx;
        if ids.len() > ctx {
            return Err(PyValueError::new_err(format!(
                "the prompt is {} tokens, more than the context of {ctx}",
                ids.len()
            )));
        }
        let job = GenerationJob {
            ids,
            rules: StopRules {
                max_new_tokens: max_tokens
                    .or(preset.map(|p| p.max_new_tokens))
                    .unwrap_or(DEFAULT_MAX_TOKENS),
                stop_token: (!ignore_eos).then_some(self.eos()),
            },
            stop,
            sampler: Sampler::new(config, self.model().hparams.n_vocab as usize).map_err(to_py)?,
        };
        let slot = self.generation.clone();
        let job = Job::spawn(&self.pool, move |emitter| {
            run_generation(&slot, job, emitter)
        });
        if stream {
            return Ok(Py::new(py, TextStream::new(job))?.into_any());
        }
        let mut text = String::new();
        job.collect(py, |_, piece| {
            text.push_str(&piece);
            Ok(())
        })?;
        Ok(PyString::new(py, &text).into_any().unbind())
    }

    /// Scores a text, or each text of a list, under the model: a dict (or a list of dicts)
    /// with `text`, `tokens` (its token ids), `logprobs` (each token's log-probability in
    /// nats, the first token's scored after `<|endoftext|>`, as GPT-2 saw the start of a
    /// document), `sum_logprob` and `perplexity` (`exp(-mean logprob)`; None for an empty
    /// text). A text longer than `window` tokens (default: the model's context;
    /// `<|endoftext|>` counts) is scored in windows advancing by `stride` (default: half the
    /// window) as `gpt2q perplexity --stride` cuts them, plus a last window ending at its last
    /// token. Each text runs as one batched pass per window. The same numbers as `gpt2q score`.
    #[pyo3(signature = (texts, window = None, stride = None))]
    fn score(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        window: Option<usize>,
        stride: Option<usize>,
    ) -> PyResult<Py<PyAny>> {
        let single = texts.is_instance_of::<PyString>();
        let list: Vec<String> = if single {
            vec![texts.extract()?]
        } else {
            texts
                .extract()
                .map_err(|_| PyTypeError::new_err("texts must be a string or a list of strings"))?
        };
        let window = window.unwrap_or(self.plan.config.ctx);
        let slot = self.scoring_slot(window)?;
        let stride = stride.unwrap_or(window / 2);
        let job = Job::spawn(&self.pool, move |emitter| {
            let mut owned = slot.take()?;
            let outcome = owned.with(|session| {
                let mut scorer = Scorer::new(session, window, stride)?;
                for text in list {
                    let score = scorer.score(&text)?;
                    if !emitter.emit((text, score)) {
                        break;
                    }
                }
                Ok(())
            });
            slot.give_back(owned);
            outcome
        });
        let results = PyList::empty(py);
        job.collect(py, |py, (text, score)| {
            let d = PyDict::new(py);
            d.set_item("text", text)?;
            d.set_item("sum_logprob", score.sum_logprob())?;
            d.set_item("perplexity", score.perplexity())?;
            d.set_item("tokens", score.tokens)?;
            d.set_item("logprobs", score.logprobs)?;
            results.append(d)
        })?;
        if single {
            return Ok(results.get_item(0)?.unbind());
        }
        Ok(results.into_any().unbind())
    }

    /// The logits for token ids run from an empty context, as a NumPy `float32` array of shape
    /// `(len(ids), n_vocab)`, or `(n_vocab,)` for the last position only with `last_only`.
    /// Needs NumPy.
    #[pyo3(signature = (ids, last_only = false))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<u32>,
        last_only: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let numpy = py.import("numpy")?;
        let n_vocab = self.model().hparams.n_vocab as usize;
        let rows = if last_only { 1 } else { ids.len() };
        let slot = self.scoring_slot(self.plan.config.ctx)?;
        let job = Job::spawn(&self.pool, move |emitter| {
            let mut owned = slot.take()?;
            let outcome = owned.with(|session| logits(session, &ids, last_only));
            slot.give_back(owned);
            let values = outcome?;
            let mut bytes = Vec::with_capacity(values.len() * 4);
            for v in values {
                bytes.extend_from_slice(&v.to_ne_bytes());
            }
            emitter.emit(bytes);
            Ok(())
        });
        let mut bytes = Vec::new();
        job.collect(py, |_, b| {
            bytes = b;
            Ok(())
        })?;
        let buffer = PyByteArray::new(py, &bytes);
        drop(bytes);
        let array = numpy.call_method1("frombuffer", (buffer, "float32"))?;
        if last_only {
            Ok(array)
        } else {
            array.call_method1("reshape", (rows, n_vocab))
        }
    }

    /// A conversation keeping the KV cache between turns (see `Chat`). `template`: how a user
    /// turn is written, with `{user}` for the text (e.g. `"User: {user}\nBot:"`); default
    /// DialoGPT's convention, every turn ending with `<|endoftext|>`. `stop`: text that ends a
    /// reply (with a template). `system`: text run once at the start and kept when the context
    /// shifts. `max_tokens`: the most tokens in one reply. Sampling as in `generate`.
    #[pyo3(signature = (
        system = "", template = None, stop = None, max_tokens = 64, temperature = None,
        top_k = None, top_p = 0.95, min_p = 0.05, repeat_penalty = 1.0, repeat_last_n = 64,
        seed = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        system: &str,
        template: Option<&str>,
        stop: Option<&str>,
        max_tokens: usize,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: f32,
        min_p: f32,
        repeat_penalty: f32,
        repeat_last_n: usize,
        seed: Option<u64>,
    ) -> PyResult<Chat> {
        let sampling = Sampling {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            seed,
        };
        let args = ChatArgs {
            system: system.to_owned(),
            template: template.map(str::to_owned),
            stop: stop.map(str::to_owned),
            max_tokens,
            sampler: sampling.config(None).map_err(to_py)?,
            session: self.plan.config,
        };
        Chat::start(py, self.loaded.clone(), self.pool.clone(), args)
    }

    fn __repr__(&self) -> String {
        let hp = &self.model().hparams;
        format!(
            "gpt2q.Model({:?}, n_layer={}, n_embd={}, ctx={}, quant={})",
            self.path.display().to_string(),
            hp.n_layer,
            hp.n_embd,
            self.plan.config.ctx,
            self.model().meta("quant").unwrap_or("?")
        )
    }
}
