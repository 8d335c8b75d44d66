//! Running the model off the Python thread: work runs on the model's thread pool (or a chat's
//! thread) and sends its results through a channel; the Python thread waits for them with the
//! GIL released, checking for signals every few milliseconds, so Ctrl-C (KeyboardInterrupt)
//! cancels the work at its next token and other Python threads run meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// How often a waiting Python thread checks for signals.
const POLL: Duration = Duration::from_millis(20);

/// A message from the work: one result item, or the end with its outcome.
pub enum Msg<P> {
    /// One item (a piece of text, a text's score).
    Item(P),
    /// The work ended.
    Done(gpt2q::Result<()>),
}

/// The worker's end: sends items, reads the cancel flag.
pub struct Emitter<P> {
    tx: Sender<Msg<P>>,
    cancel: Arc<AtomicBool>,
}

impl<P> Emitter<P> {
    /// Sends `item`; false if the work should stop (cancelled, or nobody is listening).
    pub fn emit(&self, item: P) -> bool {
        !self.cancelled() && self.tx.send(Msg::Item(item)).is_ok()
    }

    /// True once the Python side cancelled or went away.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Reports the end of the work.
    pub fn done(self, outcome: gpt2q::Result<()>) {
        let _ = self.tx.send(Msg::Done(outcome));
    }
}

/// The Python side's end of a piece of work. Dropping it cancels the work.
pub struct Job<P> {
    rx: Mutex<Receiver<Msg<P>>>,
    cancel: Arc<AtomicBool>,
}

impl<P: Send + 'static> Job<P> {
    /// A job and the emitter its worker reports through.
    pub fn channel() -> (Job<P>, Emitter<P>) {
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            rx: Mutex::new(rx),
            cancel: cancel.clone(),
        };
        (job, Emitter { tx, cancel })
    }

    /// Runs `work` on `pool`. A panic in it ends the job with a `RuntimeError` (the pool's
    /// panic handler keeps the process alive).
    pub fn spawn(
        pool: &rayon::ThreadPool,
        work: impl FnOnce(&Emitter<P>) -> gpt2q::Result<()> + Send + 'static,
    ) -> Job<P> {
        let (job, emitter) = Job::channel();
        pool.spawn(move || {
            let outcome = work(&emitter);
            emitter.done(outcome);
        });
        job
    }

    /// Asks the work to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The next message, waiting with the GIL released. A pending signal's exception (Ctrl-C's
    /// KeyboardInterrupt) cancels the work and is returned.
    pub fn next(&self, py: Python<'_>) -> PyResult<Msg<P>> {
        loop {
            let received = py.detach(|| {
                self.rx
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv_timeout(POLL)
            });
            // Checked after every message too: a fast stream may never let the wait time out.
            if let Err(e) = py.check_signals() {
                self.cancel();
                return Err(e);
            }
            match received {
                Ok(msg) => return Ok(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err(
                        "gpt2q: the worker stopped without a result (a bug: please report it)",
                    ))
                }
            }
        }
    }

    /// Cancels the work and waits (GIL released) until it has stopped, so that its session is
    /// free for the next call.
    pub fn cancel_and_wait(&self, py: Python<'_>) {
        self.cancel();
        py.detach(|| {
            let rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
            while let Ok(msg) = rx.recv() {
                if let Msg::Done(_) = msg {
                    break;
                }
            }
        });
    }

    /// Runs the job to its end, handing each item to `on_item`. On an exception (from a signal
    /// or `on_item`) the work is cancelled and waited for before the exception is returned.
    pub fn collect(
        &self,
        py: Python<'_>,
        mut on_item: impl FnMut(Python<'_>, P) -> PyResult<()>,
    ) -> PyResult<()> {
        loop {
            let step = match self.next(py) {
                Ok(Msg::Item(item)) => on_item(py, item),
                Ok(Msg::Done(outcome)) => return outcome.map_err(to_py),
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                self.cancel_and_wait(py);
                return Err(e);
            }
        }
    }
}

impl<P> Drop for Job<P> {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// An iterator over generated text, as whole UTF-8 characters, in the pieces the model produces
/// them (`generate(..., stream=True)`, `Chat.send(..., stream=True)`). Breaking out of the loop
/// (or dropping the iterator) stops the generation at its next token.
#[pyclass(module = "gpt2q", frozen)]
pub struct TextStream {
    job: Job<String>,
    finished: AtomicBool,
}

impl TextStream {
    /// A stream over `job`'s text pieces.
    pub fn new(job: Job<String>) -> Self {
        TextStream {
            job,
            finished: AtomicBool::new(false),
        }
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        if self.finished.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let msg = self.job.next(py).inspect_err(|_| {
            self.finished.store(true, Ordering::Relaxed);
        })?;
        match msg {
            Msg::Item(text) => Ok(Some(text)),
            Msg::Done(outcome) => {
                self.finished.store(true, Ordering::Relaxed);
                outcome.map(|_| None).map_err(to_py)
            }
        }
    }

    /// Stops the generation at its next token; the iterator then ends.
    fn close(&self) {
        self.job.cancel();
        self.finished.store(true, Ordering::Relaxed);
    }
}
