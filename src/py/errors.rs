//! Raising the Python exception hierarchy (defined in `tether/_errors.py`) from Rust.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

/// A class of `tether._errors`, imported on first use and cached. Not `pyo3::import_exception!`: its
/// type object panics when the import fails (e.g. while the interpreter tears modules down), and a
/// panic must not cross the FFI; here a failed import becomes the raised error instead.
pub struct ErrorClass {
    name: &'static str,
    class: PyOnceLock<Py<PyType>>,
}

impl ErrorClass {
    const fn new(name: &'static str) -> Self {
        ErrorClass { name, class: PyOnceLock::new() }
    }

    /// `tether.<Class>(message, **kwargs)` as a `PyErr`.
    pub fn err(&self, py: Python<'_>, message: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyErr {
        let made = self.class.import(py, "tether._errors", self.name).and_then(|cls| cls.call((message,), kwargs));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    }
}

pub static TETHER_ERROR: ErrorClass = ErrorClass::new("TetherError");
pub static GAVE_UP: ErrorClass = ErrorClass::new("GaveUp");
pub static POOL_EXHAUSTED: ErrorClass = ErrorClass::new("PoolExhausted");
pub static NOT_READY: ErrorClass = ErrorClass::new("NotReady");
pub static CONNECTION_CLOSED: ErrorClass = ErrorClass::new("ConnectionClosed");
pub static CONNECT_FAILED: ErrorClass = ErrorClass::new("ConnectFailed");
pub static SEND_BUFFER_FULL: ErrorClass = ErrorClass::new("SendBufferFull");
pub static SEND_FAILED: ErrorClass = ErrorClass::new("SendFailed");
pub static TIMEOUT_ERROR: ErrorClass = ErrorClass::new("TimeoutError");

/// `tether.FailedMessage(seq, message, reason, code, losses)`: one item of `SendFailed.failures`.
pub fn failed_message<'py>(
    py: Python<'py>,
    seq: u64,
    message: Py<PyAny>,
    reason: &str,
    code: Option<u16>,
    losses: Option<u32>,
) -> PyResult<Bound<'py, PyAny>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    CLASS.import(py, "tether._errors", "FailedMessage")?.call1((seq, message, reason, code, losses))
}

pub fn value_error(msg: impl Into<String>) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(msg.into())
}
