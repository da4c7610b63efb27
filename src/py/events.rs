//! Core events -> `tether.events` objects, and the async iterator behind every `events()`.

use std::sync::Arc;

use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use tokio::sync::{broadcast, Mutex};

use crate::reconnect::Event;

pub fn to_py(py: Python<'_>, ev: &Event) -> PyResult<Py<PyAny>> {
    let m = py.import("tether.events")?;
    let obj = match ev {
        Event::Connecting { attempt, strategy } => m.getattr("Connecting")?.call1((*attempt, &**strategy))?,
        Event::Connected { attempt } => m.getattr("Connected")?.call1((*attempt,))?,
        Event::ConnectionLost { reason } => m.getattr("ConnectionLost")?.call1((reason.as_str(),))?,
        Event::Reconnecting { attempt, delay, strategy } => {
            m.getattr("Reconnecting")?.call1((*attempt, delay.as_secs_f64(), &**strategy))?
        }
        Event::Reconnected { downtime, attempts } => m.getattr("Reconnected")?.call1((downtime.as_secs_f64(), *attempts))?,
        Event::GaveUp { error, attempts } => m.getattr("GaveUp")?.call1((error.as_str(), *attempts))?,
        Event::Closed => m.getattr("Closed")?.call0()?,
    };
    Ok(obj.unbind())
}

/// `async for ev in x.events()`: ends after `Closed` (not yielded) or when the source is gone.
#[pyclass(module = "tether._native")]
pub struct EventStream {
    rx: Arc<Mutex<Option<broadcast::Receiver<Event>>>>,
}

impl EventStream {
    pub fn new(rx: broadcast::Receiver<Event>) -> Self {
        EventStream { rx: Arc::new(Mutex::new(Some(rx))) }
    }

    pub fn ended() -> Self {
        EventStream { rx: Arc::new(Mutex::new(None)) }
    }
}

#[pymethods]
impl EventStream {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let rx = self.rx.clone();
        super::runtime::future_into_py(py, async move {
            let mut guard = rx.lock().await;
            loop {
                let Some(r) = guard.as_mut() else {
                    return Err(PyStopAsyncIteration::new_err(()));
                };
                match r.recv().await {
                    Ok(Event::Closed) | Err(broadcast::error::RecvError::Closed) => {
                        *guard = None;
                    }
                    Ok(ev) => return Python::attach(|py| to_py(py, &ev)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(target: "tether::events", dropped = n, "events() consumer fell behind; {n} events were dropped");
                    }
                }
            }
        })
    }
}
