//! gpt2q's errors as Python exceptions, with the command line's messages: `ValueError` for bad
//! arguments, [`ModelError`] for a damaged or unsupported model file (and non-finite values it
//! produces), `OSError` (`FileNotFoundError`, `PermissionError`) for I/O.

use std::io::ErrorKind;

use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;

pyo3::create_exception!(
    gpt2q,
    ModelError,
    PyException,
    "A model file is damaged, truncated or unsupported, or its weights produce non-finite values."
);

/// The Python exception for a library error.
pub fn to_py(e: gpt2q::Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        gpt2q::Error::InvalidInput(_) => PyValueError::new_err(msg),
        gpt2q::Error::Format(_) | gpt2q::Error::Numeric(_) => ModelError::new_err(msg),
        gpt2q::Error::Io { source, .. } => match source.kind() {
            ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
    }
}
