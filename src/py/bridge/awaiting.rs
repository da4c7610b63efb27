//! Awaiting a Python awaitable from a Rust future, with cancellation both ways.
//!
//! `pyo3_async_runtimes::into_future` does not cancel the Python task when the Rust future is dropped,
//! which would leave a user coroutine (a `dispatch`, a pool's `spawn`) running after the awaitable
//! that awaited it was cancelled. Here the Python side runs as an `asyncio.Task` created on the loop
//! thread; dropping the Rust future cancels it, through the loop's completer queue, so the tokio
//! thread that drops it never takes the GIL.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::asyncio::CancelledError;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use tokio::sync::oneshot;

use super::completer::{self, Completer};

#[pyclass(module = "tether._native")]
pub struct TaskSlot {
    inner: Arc<Mutex<SlotState>>,
}

struct SlotState {
    cancelled: bool,
    task: Option<Py<PyAny>>,
    /// The completer of the task's loop, set with `task`: the way to cancel it without the GIL.
    completer: Option<Arc<Completer>>,
    tx: Option<oneshot::Sender<PyResult<Py<PyAny>>>>,
}

#[pymethods]
impl TaskSlot {
    /// Runs on the event loop thread (via call_soon_threadsafe).
    fn start(&self, py: Python<'_>, awaitable: Bound<'_, PyAny>) -> PyResult<()> {
        let cancelled = self.inner.lock().unwrap_or_else(|p| p.into_inner()).cancelled;
        if cancelled {
            if let Ok(close) = awaitable.getattr("close") {
                let _ = close.call0();
            }
            return Ok(());
        }
        let task = match py.import("asyncio")?.call_method1("ensure_future", (awaitable,)) {
            Ok(t) => t,
            Err(e) => {
                let tx = self.inner.lock().unwrap_or_else(|p| p.into_inner()).tx.take();
                if let Some(tx) = tx {
                    let _ = tx.send(Err(e));
                }
                return Ok(());
            }
        };
        let me = Py::new(py, TaskSlot { inner: self.inner.clone() })?;
        task.call_method1("add_done_callback", (me.getattr(py, "done")?,))?;
        let (_, completer) = completer::for_running_loop(py)?;
        let cancel_now = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            // the Rust side may have given up since the check above
            if !st.cancelled {
                st.task = Some(task.clone().unbind());
                st.completer = Some(completer);
            }
            st.cancelled
        };
        if cancel_now {
            task.call_method0("cancel")?;
        }
        Ok(())
    }

    fn done(&self, task: Bound<'_, PyAny>) -> PyResult<()> {
        let tx = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.task = None;
            st.completer = None;
            st.tx.take()
        };
        let Some(tx) = tx else { return Ok(()) };
        let res = if task.call_method0("cancelled")?.is_truthy()? {
            Err(CancelledError::new_err(()))
        } else {
            let exc = task.call_method0("exception")?;
            if exc.is_none() {
                Ok(task.call_method0("result")?.unbind())
            } else {
                Err(PyErr::from_value(exc))
            }
        };
        let _ = tx.send(res);
        Ok(())
    }
}

/// Cancels the Python task when the Rust side stops waiting.
struct CancelOnDrop {
    inner: Arc<Mutex<SlotState>>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (task, completer) = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.cancelled = true;
            (st.task.take(), st.completer.take())
        };
        if let (Some(task), Some(completer)) = (task, completer) {
            completer.push(Box::new(move |py, _| {
                let _ = task.bind(py).call_method0("cancel");
            }));
        }
    }
}

/// Schedule `awaitable` on the locals' event loop and await it from Rust.
pub fn await_py(
    py: Python<'_>,
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl std::future::Future<Output = PyResult<Py<PyAny>>> + Send + 'static> {
    let (tx, rx) = oneshot::channel();
    let inner = Arc::new(Mutex::new(SlotState { cancelled: false, task: None, completer: None, tx: Some(tx) }));
    let slot = Py::new(py, TaskSlot { inner: inner.clone() })?;
    let event_loop = locals.event_loop(py);
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("context", locals.context(py))?;
    event_loop.call_method("call_soon_threadsafe", (slot.getattr(py, "start")?, awaitable), Some(&kwargs))?;
    let mut guard = CancelOnDrop { inner, armed: true };
    Ok(async move {
        let out = rx.await;
        guard.armed = false;
        drop(guard);
        match out {
            Ok(r) => r,
            Err(_) => Err(CancelledError::new_err(())),
        }
    })
}
