//! The tokio runtime behind every awaitable tether returns, fork-aware.
//!
//! Frameworks fork worker processes (livekit-agents' job processes, gunicorn-style servers). A tokio
//! runtime does not survive `fork()`: its worker threads exist only in the parent, so a child that
//! awaited anything on the inherited runtime would hang forever. This runtime is keyed by process id
//! and rebuilt lazily in a child; the parent's copy is leaked there (dropping it would try to join
//! threads that do not exist). Nothing is built at import: the first awaitable builds it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime as TokioRuntime;

use super::completer;
use super::parked::Parked;

static RUNTIME: Mutex<Option<(u32, &'static TokioRuntime)>> = Mutex::new(None);

/// This process's id. glibc makes every `getpid()` a system call, and each awaitable asks twice (is
/// this still the process the runtime and the loop's completer were made in?); cached, and forgotten in
/// a forked child.
#[cfg(target_os = "linux")]
pub fn pid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static PID: AtomicU32 = AtomicU32::new(0);
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    unsafe extern "C" fn forget() {
        PID.store(0, Relaxed);
    }
    let cached = PID.load(Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: registers a handler that only does an atomic store, which is async-signal-safe as a
    // handler run in the child of fork() must be.
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forget));
    });
    let pid = std::process::id();
    PID.store(pid, Relaxed);
    pid
}

#[cfg(not(target_os = "linux"))]
pub fn pid() -> u32 {
    std::process::id()
}

/// The runtime of this process, built on first use (again after a fork).
pub fn get() -> &'static TokioRuntime {
    let pid = pid();
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return rt;
        }
    }
    // One worker: it serves one asyncio loop's connections, and a second only added wake-ups (a task
    // woken from the loop thread also woke the idle worker to steal it): paced-stream CPU per message
    // 106 -> 80 us, flood and echo unchanged (`make bench`, issue 11).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(1)
        .thread_name("tether-rt")
        .build()
        .expect("tether: cannot start the tokio runtime");
    let rt: &'static TokioRuntime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    rt
}

/// An awaitable for `fut`, completed on the calling loop's thread (see `completer`); cancelling it
/// drops `fut`. The first poll happens right here: a future ready at once (a buffered message, a free
/// slot) is returned already done, and a pending one reaches tokio only when woken (see `parked`).
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let (event_loop, completer) = completer::for_running_loop(py)?;
    let py_fut = event_loop.call_method0(intern!(py, "create_future"))?;
    let parked = Parked::new(completer.runtime());
    let waker = Waker::from(parked.clone());
    let mut fut = Box::pin(AssertUnwindSafe(fut).catch_unwind());
    let first = {
        // tokio timers and spawns need the runtime's context even off its threads
        let _rt = completer.runtime().enter();
        fut.as_mut().poll(&mut Context::from_waker(&waker))
    };
    match first {
        Poll::Ready(r) => completer::complete(&py_fut, r.unwrap_or_else(|p| Err(completer::panicked(p)))),
        Poll::Pending => {
            let fut = fut.map(|r| r.unwrap_or_else(|p| Err(completer::panicked(p))));
            completer.watch(&py_fut, parked, fut)?
        }
    }
    Ok(py_fut)
}

/// The running event loop and contextvars of the calling task.
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    TaskLocals::with_running_loop(py)?.copy_context(py)
}
