//! `gpt2q.Chat`: a conversation over one session whose KV cache is kept between turns.
//!
//! The library's [`gpt2q::chat::Chat`] borrows its session and sampler, so it lives on a thread
//! of its own that owns them (plus a share of the model) and answers one turn at a time; each
//! turn runs on the model's thread pool. The Python object holds the thread's command channel:
//! dropping it ends the thread, which frees the session.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use gpt2q::chat::{Chat as Conversation, ChatConfig, ChatTemplate};
use gpt2q::sampler::{Sampler, SamplerConfig};
use gpt2q::session::{Session, SessionConfig};
use gpt2q::tokenizer::Utf8Stream;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::to_py;
use crate::job::{Emitter, Job, TextStream};
use crate::owned::LoadedModel;

/// How a chat is set up (from `Model.chat`).
pub struct ChatArgs {
    pub system: String,
    pub template: Option<String>,
    pub stop: Option<String>,
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub session: SessionConfig,
}

/// One user turn for the chat thread.
struct Turn {
    text: String,
    emitter: Emitter<String>,
}

/// A conversation with the model; make one with `Model.chat()`.
#[pyclass(module = "gpt2q", frozen)]
pub struct Chat {
    turns: Mutex<Option<Sender<Turn>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set when the object goes away: a reply in progress stops at its next token.
    closing: Arc<AtomicBool>,
}

impl Drop for Chat {
    /// Ends the chat thread and waits for it (at most a token's time; it never takes the GIL),
    /// so the session is freed with the object.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        let turns = self.turns.get_mut().unwrap_or_else(PoisonError::into_inner);
        drop(turns.take());
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(thread) = thread.take() {
            // A panic on the chat thread has already been reported by the panic hook.
            let _ = thread.join();
        }
    }
}

impl Chat {
    /// Starts the chat thread and runs the system prompt; errors (a bad template, a system
    /// prompt too long for the context) are raised here.
    pub fn start(
        py: Python<'_>,
        model: Arc<LoadedModel>,
        pool: Arc<rayon::ThreadPool>,
        args: ChatArgs,
    ) -> PyResult<Chat> {
        if args.max_tokens == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "max_tokens must be at least 1",
            ));
        }
        let template = match &args.template {
            Some(t) => ChatTemplate::new(t, args.stop.as_deref()).map_err(to_py)?,
            None => ChatTemplate::dialogpt(),
        };
        let config = ChatConfig {
            template,
            system: args.system,
            max_reply_tokens: args.max_tokens,
            keep: None,
        };
        let (turns, inbox) = mpsc::channel::<Turn>();
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let (ready, started) = Job::<String>::channel();
        let thread = std::thread::Builder::new()
            .name("gpt2q-chat".into())
            .spawn(move || {
                let model = model.model();
                let setup = || -> gpt2q::Result<(Session<'_>, Sampler)> {
                    let session = Session::with_config(model, args.session)?;
                    let sampler = Sampler::new(args.sampler, model.hparams.n_vocab as usize)?;
                    Ok((session, sampler))
                };
                let (mut session, mut sampler) = match setup() {
                    Ok(s) => s,
                    Err(e) => return started.done(Err(e)),
                };
                let chat = pool.install(|| Conversation::new(&mut session, &mut sampler, config));
                let mut chat = match chat {
                    Ok(c) => {
                        started.done(Ok(()));
                        c
                    }
                    Err(e) => return started.done(Err(e)),
                };
                for turn in inbox {
                    let outcome =
                        pool.install(|| reply(&mut chat, &turn.text, &turn.emitter, &stop));
                    turn.emitter.done(outcome);
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the chat thread: {e}")))?;
        ready.collect(py, |_, _| Ok(()))?;
        Ok(Chat {
            turns: Mutex::new(Some(turns)),
            thread: Mutex::new(Some(thread)),
            closing,
        })
    }
}

/// One turn, its reply's text sent piece by piece.
fn reply(
    chat: &mut Conversation<'_, '_>,
    text: &str,
    emitter: &Emitter<String>,
    closing: &AtomicBool,
) -> gpt2q::Result<()> {
    let mut utf8 = Utf8Stream::new();
    chat.turn(text, |bytes| {
        let piece = utf8.push(bytes);
        let stop = emitter.cancelled() || closing.load(Ordering::Relaxed);
        if stop || (!piece.is_empty() && !emitter.emit(piece.to_owned())) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    let tail = utf8.finish();
    if !tail.is_empty() {
        emitter.emit(tail.to_owned());
    }
    Ok(())
}

#[pymethods]
impl Chat {
    /// Sends the user's `text` and returns the model's reply, or with `stream=True` an
    /// iterator over its pieces. The conversation so far stays in the KV cache: only the new
    /// tokens run. A reply ends at `<|endoftext|>`, the template's stop string or
    /// `max_tokens`; Ctrl-C (or leaving a stream early) ends it where it is, and the next turn
    /// starts cleanly.
    #[pyo3(signature = (text, stream = false))]
    fn send(&self, py: Python<'_>, text: &str, stream: bool) -> PyResult<Py<PyAny>> {
        let (job, emitter) = Job::channel();
        let turn = Turn {
            text: text.to_owned(),
            emitter,
        };
        let sent = match &*self.turns.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(turns) => turns.send(turn).is_ok(),
            None => false,
        };
        if !sent {
            return Err(PyRuntimeError::new_err("the chat has ended"));
        }
        if stream {
            return Ok(Py::new(py, TextStream::new(job))?.into_any());
        }
        let mut reply = String::new();
        job.collect(py, |_, piece| {
            reply.push_str(&piece);
            Ok(())
        })?;
        Ok(PyString::new(py, &reply).into_any().unbind())
    }
}
