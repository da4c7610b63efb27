//! Core events -> `tether.events` objects, and the async iterator behind every `events()`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
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
///
/// Cancellation-safe: `wait()` moves the next event into a buffer (within one poll, so it is never lost
/// half way) and `try_next()` hands it to Python on the loop thread. `__anext__` is the Python coroutine
/// `tether.events._anext`, so an iteration cancelled while waiting loses no event.
#[pyclass(module = "tether._native")]
pub struct EventStream {
    rx: Arc<Mutex<Option<broadcast::Receiver<Event>>>>,
    buffer: Arc<std::sync::Mutex<VecDeque<Event>>>,
    ended: Arc<AtomicBool>,
}

impl EventStream {
    pub fn new(rx: broadcast::Receiver<Event>) -> Self {
        EventStream {
            rx: Arc::new(Mutex::new(Some(rx))),
            buffer: Arc::new(std::sync::Mutex::new(VecDeque::new())),
            ended: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn ended() -> Self {
        let s = EventStream::new(broadcast::channel(1).1);
        s.ended.store(true, Ordering::SeqCst);
        s
    }
}

#[pymethods]
impl EventStream {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("tether.events")?.getattr("_anext")?.call1((slf,))
    }

    /// The next buffered event, None if there is none yet; StopAsyncIteration once the stream ended.
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let ev = self.buffer.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        match ev {
            Some(ev) => to_py(py, &ev).map(Some),
            None if self.ended.load(Ordering::SeqCst) => Err(PyStopAsyncIteration::new_err(())),
            None => Ok(None),
        }
    }

    /// Resolves once `try_next` has something to return.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (rx, buffer, ended) = (self.rx.clone(), self.buffer.clone(), self.ended.clone());
        super::runtime::future_into_py(py, async move {
            if !buffer.lock().unwrap_or_else(|p| p.into_inner()).is_empty() || ended.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut guard = rx.lock().await;
            loop {
                let Some(r) = guard.as_mut() else {
                    ended.store(true, Ordering::SeqCst);
                    return Ok(());
                };
                match r.recv().await {
                    Ok(Event::Closed) | Err(broadcast::error::RecvError::Closed) => {
                        *guard = None;
                        ended.store(true, Ordering::SeqCst);
                        return Ok(());
                    }
                    Ok(ev) => {
                        buffer.lock().unwrap_or_else(|p| p.into_inner()).push_back(ev);
                        return Ok(());
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(target: "tether::events", dropped = n, "events() consumer fell behind; {n} events were dropped");
                    }
                }
            }
        })
    }
}
