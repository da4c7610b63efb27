//! `tether.Heartbeat`: an in-band heartbeat for `tether.connect(heartbeat=...)`. A fixed message and a
//! missing `is_reply` never touch Python; a message factory is called once per heartbeat, `is_reply` once
//! per batch of messages received while a heartbeat is unanswered (`py::ws::hooks`, `ws::heartbeat`).

use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::ws::protocol::Message;

use super::convert::message_from_py;
use super::options::{param, Seconds};

/// In-band heartbeat for ``tether.connect(heartbeat=...)``.
///
/// ``message`` (str, bytes-like, or a zero-argument callable returning one, called on the event loop) is sent every
/// ``interval`` seconds while connected. When no reply arrives within ``timeout`` (default: ``interval``) after a
/// heartbeat went out, the connection is lost ("heartbeat timeout") and reconnects. A reply is an inbound message for
/// which ``is_reply(msg)`` is true; any inbound message when ``is_reply`` is None. ``is_reply`` runs on the event
/// loop, only on messages received while a heartbeat is unanswered, in batches; replies are still delivered to the
/// application. Both must be plain functions (an async one is a TypeError). A factory or predicate that raises, or
/// returns an awaitable, ends the connection (``GaveUp``, not retried). While the application is not reading and the
/// inbound buffer is full, a missing reply is not a loss (replies cannot be read).
#[pyclass(name = "Heartbeat", module = "tether._native", frozen)]
pub struct PyHeartbeat {
    message: Py<PyAny>,
    fixed: Option<Message>,
    interval: f64,
    is_reply: Option<Py<PyAny>>,
    timeout: f64,
}

#[pymethods]
impl PyHeartbeat {
    #[new]
    #[pyo3(signature = (message, interval, is_reply=None, timeout=None))]
    fn new(
        message: &Bound<'_, PyAny>,
        interval: Seconds<param::Interval>,
        is_reply: Option<&Bound<'_, PyAny>>,
        timeout: Option<Seconds<param::Timeout>>,
    ) -> PyResult<Self> {
        let fixed = if message.is_callable() {
            refuse_async(message, "the heartbeat message factory")?;
            None
        } else {
            Some(message_from_py(message).map_err(|_| {
                PyTypeError::new_err(
                    "heartbeat message must be str, bytes-like, or a zero-argument callable returning one",
                )
            })?)
        };
        let interval = interval.0.as_secs_f64();
        let timeout = timeout.map_or(interval, |t| t.0.as_secs_f64());
        let is_reply = match is_reply {
            Some(f) if !f.is_none() => {
                if !f.is_callable() {
                    return Err(PyTypeError::new_err("is_reply must be a callable (message) -> bool, or None"));
                }
                refuse_async(f, "is_reply")?;
                Some(f.clone().unbind())
            }
            _ => None,
        };
        Ok(PyHeartbeat { message: message.clone().unbind(), fixed, interval, is_reply, timeout })
    }

    /// What is sent every ``interval``: the message, or its factory.
    #[getter]
    fn message(&self, py: Python<'_>) -> Py<PyAny> {
        self.message.clone_ref(py)
    }

    /// Seconds between heartbeats.
    #[getter]
    fn interval(&self) -> f64 {
        self.interval
    }

    /// The predicate that recognises a reply; None: any inbound message is one.
    #[getter]
    fn is_reply(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.is_reply.as_ref().map(|f| f.clone_ref(py))
    }

    /// Seconds to wait for the reply (the interval unless given).
    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        // the payload may carry a session token: shown by kind only
        let message = match &self.fixed {
            Some(Message::Text(t)) => format!("<text, {} bytes>", t.len()),
            Some(m) => format!("<binary, {} bytes>", crate::ws::protocol::size_of(m)),
            None => self.message.bind(py).repr().map(|r| r.to_string()).unwrap_or_default(),
        };
        let is_reply = self.is_reply.as_ref().map(|f| f.bind(py).repr().map(|r| r.to_string()).unwrap_or_default());
        format!(
            "Heartbeat(message={message}, interval={}, is_reply={}, timeout={})",
            self.interval,
            is_reply.as_deref().unwrap_or("None"),
            self.timeout
        )
    }
}

/// Both run synchronously on the event loop, once per heartbeat or batch: a coroutine returned by an
/// async function would be truthy (every message a reply) or not a message. Refused here; one returned
/// by a plain callable is refused when it is called (`_hooks`).
fn refuse_async(f: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    let is_async = f.py().import("inspect")?.getattr("iscoroutinefunction")?.call1((f,))?.is_truthy()?;
    if is_async {
        return Err(PyTypeError::new_err(format!("{what} must be a plain function, not an async one")));
    }
    Ok(())
}

/// `heartbeat=` of a connection: its callables are called on the connection's loop (`py::ws::hooks`).
pub fn beat_spec(py: Python<'_>, heartbeat: Option<&Bound<'_, PyAny>>) -> PyResult<Option<super::ws::BeatSpec>> {
    let Some(hb) = heartbeat.filter(|h| !h.is_none()) else { return Ok(None) };
    let hb = hb.cast::<PyHeartbeat>().map_err(|_| PyTypeError::new_err("heartbeat must be a tether.Heartbeat"))?.get();
    Ok(Some(super::ws::BeatSpec {
        interval: Duration::from_secs_f64(hb.interval),
        timeout: Duration::from_secs_f64(hb.timeout),
        fixed: hb.fixed.clone(),
        factory: hb.message.clone_ref(py),
        is_reply: hb.is_reply.as_ref().map(|f| f.clone_ref(py)),
    }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHeartbeat>()
}
