//! The tokio runtime behind every awaitable tether returns, fork-aware.
//!
//! Frameworks fork worker processes (livekit-agents' job processes, gunicorn-style servers). A tokio
//! runtime does not survive `fork()`: its worker threads exist only in the parent, so a child that
//! awaited anything on the inherited runtime would hang forever. This runtime is keyed by process id
//! and rebuilt lazily in a child; the parent's copy is leaked there (dropping it would try to join
//! threads that do not exist). Nothing is built at import: the first awaitable builds it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{ContextExt, Runtime};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime as TokioRuntime;

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

tokio::task_local! {
    static LOCALS: std::cell::OnceCell<TaskLocals>;
}

pub struct TetherRuntime;

impl Runtime for TetherRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        get().spawn(fut)
    }

    /// pyo3-async-runtimes completes Python futures here (attach + set_result): gated so nothing
    /// attaches once the interpreter is shutting down.
    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        // `f` attaches itself; running it inside the gate (a nested attach) keeps the whole of it
        // within the section `_at_exit` waits for
        get().spawn_blocking(move || {
            let _ = super::with_python(|_py| f());
        })
    }
}

impl ContextExt for TetherRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        LOCALS.try_with(|c| c.get().cloned()).ok().flatten()
    }
}

/// `future_into_py` on tether's runtime: dropping the returned Python future cancels `fut`.
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<TetherRuntime, _, T>(py, fut)
}

/// The running event loop and contextvars of the calling task.
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    pyo3_async_runtimes::generic::get_current_locals::<TetherRuntime>(py)
}
