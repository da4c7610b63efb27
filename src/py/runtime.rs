//! The tokio runtime behind every awaitable tether returns, fork-aware.
//!
//! Frameworks fork worker processes (livekit-agents' job processes, gunicorn-style servers). A tokio
//! runtime does not survive `fork()`: its worker threads exist only in the parent, so a child that
//! awaited anything on the inherited runtime would hang forever. This runtime is keyed by process id
//! and rebuilt lazily in a child; the parent's copy is leaked there (dropping it would try to join
//! threads that do not exist). Nothing is built at import: the first awaitable builds it.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_util::task::noop_waker_ref;
use futures_util::FutureExt;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3_async_runtimes::err::RustPanic;
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime as TokioRuntime;

use super::completer;

static RUNTIME: Mutex<Option<(u32, &'static TokioRuntime)>> = Mutex::new(None);

/// The runtime of this process, built on first use (again after a fork).
pub fn get() -> &'static TokioRuntime {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return rt;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("tether-rt")
        .build()
        .expect("tether: cannot start the tokio runtime");
    let rt: &'static TokioRuntime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    rt
}

/// An awaitable for `fut`, completed on the calling loop's thread (see `completer`); cancelling it
/// aborts `fut`. A future that is ready on its first poll (a buffered message, a free slot) is polled
/// right here and returned already done, without touching tokio's threads.
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let (event_loop, completer) = completer::for_running_loop(py)?;
    let py_fut = event_loop.call_method0(intern!(py, "create_future"))?;
    let mut fut = Box::pin(fut);
    let first = {
        // tokio timers and spawns need the runtime's context even off its threads
        let _rt = completer.runtime().enter();
        let mut cx = Context::from_waker(noop_waker_ref());
        catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)))
    };
    match first {
        Ok(Poll::Ready(r)) => completer::complete(&py_fut, r),
        Err(panic) => completer::complete::<T>(&py_fut, Err(panicked(panic))),
        Ok(Poll::Pending) => {
            let c = completer.clone();
            completer::watch(py, &completer, &py_fut, |id| {
                completer
                    .runtime()
                    .spawn(async move {
                        let r = AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|p| Err(panicked(p)));
                        c.deliver(id, r);
                    })
                    .abort_handle()
            })?;
        }
    }
    Ok(py_fut)
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown error".into());
    RustPanic::new_err(format!("rust future panicked: {msg}"))
}

/// The running event loop and contextvars of the calling task.
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    TaskLocals::with_running_loop(py)?.copy_context(py)
}
