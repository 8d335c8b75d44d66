//! The one error type of the gpt2q library.
//!
//! Every fallible library call returns [`Result`]. Each variant is a *kind* of failure the CLI maps to
//! its own exit code (see `README.md`): bad user input, a bad model file, I/O, or a numeric fault at run
//! time. Messages name the thing that is wrong (file, tensor, flag) and what was expected.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in gpt2q.
#[derive(Debug)]
pub enum Error {
    /// Reading or writing a file failed.
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A `.g2q` file (or a checkpoint being converted) is malformed, damaged or unsupported.
    Format(String),
    /// A request the library cannot honour: a bad prompt, flag value or parameter.
    InvalidInput(String),
    /// The model produced a non-finite value (a damaged weight or an overflow).
    Numeric(String),
}

/// `Result` with gpt2q's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A malformed-file error with the given message.
    pub fn format(msg: impl Into<String>) -> Self {
        Error::Format(msg.into())
    }

    /// A bad-input error with the given message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::Format(msg) | Error::InvalidInput(msg) | Error::Numeric(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
