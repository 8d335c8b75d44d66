//! Owned forms of the library's borrowing types, so a Python object can hold them: a model file
//! with the [`Model`] borrowing it, and a [`Session`] with the model it borrows. `self_cell` builds
//! each pair behind one heap allocation and drops the borrower first; no `unsafe` here.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use gpt2q::mmap::ModelFile;
use gpt2q::model::Model;
use gpt2q::session::{Session, SessionConfig};
use gpt2q::Result;
use self_cell::self_cell;

self_cell!(
    /// A model file and the [`Model`] whose weights are views of it.
    pub struct LoadedModel {
        owner: ModelFile,
        #[covariant]
        dependent: Model,
    }
);

impl LoadedModel {
    /// Reads (or with `mmap` maps) the file at `path` and loads the model, checking every
    /// tensor's checksum if `verify`.
    pub fn open(path: &Path, mmap: bool, verify: bool) -> Result<Self> {
        let file = ModelFile::open_or_load(path, mmap)?;
        LoadedModel::try_new(file, |file| Model::load(file, verify))
    }

    /// The model.
    pub fn model(&self) -> &Model<'_> {
        self.borrow_dependent()
    }

    /// The size of the model file in bytes.
    pub fn file_size(&self) -> usize {
        self.borrow_owner().bytes().len()
    }
}

self_cell!(
    /// A [`Session`] together with (a share of) the model it runs.
    pub struct OwnedSession {
        owner: Arc<LoadedModel>,
        #[covariant]
        dependent: Session,
    }
);

impl OwnedSession {
    /// A session sized by `config` over `model`.
    pub fn sized(model: Arc<LoadedModel>, config: SessionConfig) -> Result<Self> {
        OwnedSession::try_new(model, |m| {
            Session::with_config(m.borrow_dependent(), config)
        })
    }

    /// Runs `f` with the session.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Session<'_>) -> R) -> R {
        self.with_dependent_mut(|_, session| f(session))
    }
}

/// One reusable session of a fixed sizing: a call takes it (or makes a new one if another call
/// has it) and gives it back, so repeated calls do not reallocate the KV cache and scratch.
pub struct SessionSlot {
    model: Arc<LoadedModel>,
    config: SessionConfig,
    idle: Mutex<Option<OwnedSession>>,
}

impl SessionSlot {
    /// An empty slot for sessions sized by `config`.
    pub fn new(model: Arc<LoadedModel>, config: SessionConfig) -> Self {
        SessionSlot {
            model,
            config,
            idle: Mutex::new(None),
        }
    }

    /// The sizing of the slot's sessions.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// The idle session, or a new one.
    pub fn take(&self) -> Result<OwnedSession> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match idle {
            Some(s) => Ok(s),
            None => OwnedSession::sized(self.model.clone(), self.config),
        }
    }

    /// Keeps `session` for the next call (dropping it if another one was put back first).
    pub fn give_back(&self, session: OwnedSession) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none() {
            *idle = Some(session);
        }
    }
}
