//! Conversions shared by the bindings: Python exceptions to the (redacted) text tether reports, and
//! WebSocket messages to and from Python objects.

use crate::ws::protocol::Message;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyString};

use crate::redact::redact_url;

/// The name of `v`'s type, as an error message names what it got instead of what it wanted.
pub fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
}

/// `Type: message` of a Python exception, redacted, as tether's logs, events and errors show it.
pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let ty = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let msg = err.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let text = if msg.is_empty() { ty } else { format!("{ty}: {msg}") };
    redact_url(&text)
}

/// The name of the builtin exception class the loss metric's `reason` knows that `err` derives from
/// (`TimeoutError`, `ConnectionResetError`, ...), or its own type's: an aiohttp
/// `ClientConnectionResetError` is a reset. `describe` keeps the real name for what is told.
pub fn loss_name(py: Python<'_>, err: &PyErr) -> String {
    use pyo3::exceptions::{
        PyBrokenPipeError, PyConnectionAbortedError, PyConnectionResetError, PyEOFError, PyTimeoutError,
    };
    let known = [
        (py.get_type::<PyTimeoutError>(), "TimeoutError"),
        (py.get_type::<PyConnectionResetError>(), "ConnectionResetError"),
        (py.get_type::<PyConnectionAbortedError>(), "ConnectionAbortedError"),
        (py.get_type::<PyBrokenPipeError>(), "BrokenPipeError"),
        (py.get_type::<PyEOFError>(), "EOFError"),
    ];
    let found = known.iter().find(|(ty, _)| err.is_instance(py, ty)).map(|(_, name)| (*name).to_string());
    found.unwrap_or_else(|| err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into()))
}

/// `what (caused by X: msg)`: spawners re-raise with `from real_error` when a framework swallowed
/// the real error, so the chain is part of the failure cause.
pub fn describe_chain(py: Python<'_>, e: &PyErr) -> String {
    let mut text = describe(py, e);
    let mut cur = e.value(py).clone().into_any();
    for _ in 0..3 {
        let next = match cur.getattr("__cause__") {
            Ok(c) if !c.is_none() => c,
            _ => match (cur.getattr("__context__"), cur.getattr("__suppress_context__")) {
                (Ok(c), Ok(s)) if !c.is_none() && !s.is_truthy().unwrap_or(false) => c,
                _ => break,
            },
        };
        text.push_str(&format!(" (caused by {})", describe(py, &PyErr::from_value(next.clone()))));
        cur = next;
    }
    text
}

/// A text message is a str, anything else bytes.
pub fn message_to_py(py: Python<'_>, m: &Message) -> Py<PyAny> {
    match m {
        Message::Text(_) => PyString::new(py, m.to_text().unwrap_or_default()).into_any().unbind(),
        Message::Binary(b) | Message::Ping(b) => PyBytes::new(py, b).into_any().unbind(),
    }
}

/// str -> text frame, bytes-like -> binary frame; TypeError otherwise.
pub fn message_from_py(data: &Bound<'_, PyAny>) -> PyResult<Message> {
    // str and bytes are immutable: the message keeps the object instead of a copy of its bytes
    if let Ok(s) = data.cast::<PyString>() {
        return Ok(Message::text_in(PyBackedStr::try_from(s.clone())?));
    }
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(Message::binary_in(PyBackedBytes::from(b.clone())));
    }
    if data.is_instance_of::<pyo3::types::PyByteArray>()
        || data.hasattr("__buffer__").unwrap_or(false)
        || data.get_type().name().map(|n| n == "memoryview").unwrap_or(false)
    {
        let b: Vec<u8> = data.py().import("builtins")?.getattr("bytes")?.call1((data,))?.extract()?;
        return Ok(Message::binary(b));
    }
    Err(PyTypeError::new_err(format!(
        "data must be str (text frame) or bytes-like (binary frame), not {}",
        type_name(data)
    )))
}
