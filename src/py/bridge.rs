//! Awaiting a Python awaitable from a Rust future, with cancellation both ways.
//!
//! `pyo3_async_runtimes::into_future` does not cancel the Python task when the Rust future is dropped,
//! which would leave user coroutines running after `Reconnector.run()` was cancelled. Here the Python
//! side runs as an `asyncio.Task` created on the loop thread; dropping the Rust future cancels it.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use tokio::sync::oneshot;

#[pyclass(module = "tether._native")]
pub struct TaskSlot {
    inner: Arc<Mutex<SlotState>>,
}

struct SlotState {
    cancelled: bool,
    task: Option<Py<PyAny>>,
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
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).task = Some(task.unbind());
        Ok(())
    }

    fn done(&self, task: Bound<'_, PyAny>) -> PyResult<()> {
        let tx = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.task = None;
            st.tx.take()
        };
        let Some(tx) = tx else { return Ok(()) };
        let res = if task.call_method0("cancelled")?.is_truthy()? {
            let py = task.py();
            Err(PyErr::from_value(py.import("asyncio")?.getattr("CancelledError")?.call0()?))
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
    event_loop: Py<PyAny>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let task = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.cancelled = true;
            st.task.take()
        };
        if let Some(task) = task {
            let _ = super::with_python(|py| {
                let lp = self.event_loop.bind(py);
                if let Ok(cancel) = task.getattr(py, "cancel") {
                    // The loop may already be closed; then there is nothing left to cancel.
                    let _ = lp.call_method1("call_soon_threadsafe", (cancel,));
                }
            });
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
    let inner = Arc::new(Mutex::new(SlotState { cancelled: false, task: None, tx: Some(tx) }));
    let slot = Py::new(py, TaskSlot { inner: inner.clone() })?;
    let event_loop = locals.event_loop(py);
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("context", locals.context(py))?;
    event_loop.call_method("call_soon_threadsafe", (slot.getattr(py, "start")?, awaitable), Some(&kwargs))?;
    let mut guard = CancelOnDrop { inner, event_loop: event_loop.unbind(), armed: true };
    Ok(async move {
        let out = rx.await;
        guard.armed = false;
        drop(guard);
        match out {
            Ok(r) => r,
            Err(_) => {
                Python::attach(|py| Err(PyErr::from_value(py.import("asyncio")?.getattr("CancelledError")?.call0()?)))
            }
        }
    })
}
