//! Awaiting a Python awaitable from a Rust future, with cancellation both ways.
//!
//! `pyo3_async_runtimes::into_future` does not cancel the Python task when the Rust future is dropped,
//! which would leave a user coroutine (a `dispatch`, a pool's `spawn`) running after the awaitable
//! that awaited it was cancelled. Here the Python side runs as an `asyncio.Task` created on the loop
//! thread; dropping the Rust future cancels it, through the loop's completer queue, so the tokio
//! thread that drops it never takes the GIL.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
    /// The completer of the task's loop, set when the task starts: the way to cancel it (while `task`
    /// is set) or to hand back a result that came as the Rust side stopped waiting, without the GIL.
    completer: Option<Arc<Completer>>,
    tx: Option<oneshot::Sender<PyResult<Py<PyAny>>>>,
    /// What to do with a result nobody awaits any more (see `await_py_or`).
    orphan: Option<Orphan>,
}

/// Takes a task's result that came as its Rust awaiter went away (a pool's spawn() that returned its
/// process as the pool closed): runs on the loop thread.
pub type Orphan = Box<dyn FnOnce(Python<'_>, Py<PyAny>) + Send>;

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
            }
            st.completer = Some(completer);
            st.cancelled
        };
        if cancel_now {
            task.call_method0("cancel")?;
        }
        Ok(())
    }

    fn done(&self, py: Python<'_>, task: Bound<'_, PyAny>) -> PyResult<()> {
        let tx = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.task = None;
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
        // the awaiter went away (and closed the channel): the result is nobody's but the orphan's
        if let Err(Ok(obj)) = tx.send(res) {
            let orphan = self.inner.lock().unwrap_or_else(|p| p.into_inner()).orphan.take();
            if let Some(f) = orphan {
                f(py, obj);
            }
        }
        Ok(())
    }
}

/// The Rust side of `await_py`: the task's outcome. Dropped before it (the awaiting Rust work stopped),
/// it cancels the task; a result that arrives anyway, or arrived unread, goes to the orphan handler.
struct PyAwait {
    inner: Arc<Mutex<SlotState>>,
    rx: Option<oneshot::Receiver<PyResult<Py<PyAny>>>>,
}

impl Future for PyAwait {
    type Output = PyResult<Py<PyAny>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(rx) = self.rx.as_mut() else { return Poll::Ready(Err(CancelledError::new_err(()))) };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(out) => {
                self.rx = None;
                Poll::Ready(out.unwrap_or_else(|_| Err(CancelledError::new_err(()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for PyAwait {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // from here a `done` finds the channel closed and hands its result to the orphan handler
        rx.close();
        let unread = rx.try_recv().ok().and_then(Result::ok);
        let (task, completer, orphan) = {
            let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            st.cancelled = true;
            let orphan = unread.and_then(|obj| Some((obj, st.completer.clone()?, st.orphan.take()?)));
            (st.task.take(), st.completer.clone(), orphan)
        };
        if let (Some(task), Some(completer)) = (task, completer) {
            completer.push(Box::new(move |py, _| {
                let _ = task.bind(py).call_method0("cancel");
            }));
        }
        if let Some((obj, completer, f)) = orphan {
            completer.push(Box::new(move |py, _| f(py, obj)));
        }
    }
}

/// Schedule `awaitable` on the locals' event loop and await it from Rust.
pub fn await_py(
    py: Python<'_>,
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send + 'static> {
    await_py_or(py, locals, awaitable, None)
}

/// `await_py`, with `orphan` taking the result if the Rust side stops waiting (drops the future) as or
/// after it came: cancelling a task that is already done does not stop its result, which would be
/// dropped otherwise.
pub fn await_py_or(
    py: Python<'_>,
    locals: &TaskLocals,
    awaitable: Bound<'_, PyAny>,
    orphan: Option<Orphan>,
) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send + 'static> {
    let (tx, rx) = oneshot::channel();
    let inner = Arc::new(Mutex::new(SlotState { cancelled: false, task: None, completer: None, tx: Some(tx), orphan }));
    let slot = Py::new(py, TaskSlot { inner: inner.clone() })?;
    let event_loop = locals.event_loop(py);
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("context", locals.context(py))?;
    event_loop.call_method("call_soon_threadsafe", (slot.getattr(py, "start")?, awaitable), Some(&kwargs))?;
    Ok(PyAwait { inner, rx: Some(rx) })
}
