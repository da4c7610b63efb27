//! The tokio runtime behind every awaitable tether returns, fork-aware.
//!
//! Frameworks fork worker processes (livekit-agents' job processes, gunicorn-style servers). A tokio
//! runtime does not survive `fork()`: its worker threads exist only in the parent, so a child that
//! awaited anything on the inherited runtime would hang forever. This runtime is keyed by process id
//! and rebuilt lazily in a child; the parent's copy is leaked there (dropping it would try to join
//! threads that do not exist). Nothing is built at import: the first awaitable builds it.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime as TokioRuntime;

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

thread_local! {
    /// The runtime this thread last asked for, and its process: every awaitable's first step asks.
    static LAST: std::cell::Cell<Option<(u32, &'static TokioRuntime)>> = const { std::cell::Cell::new(None) };
}

/// The runtime of this process, built on first use (again after a fork).
pub fn get() -> &'static TokioRuntime {
    let pid = pid();
    if let Some((owner, rt)) = LAST.get() {
        if owner == pid {
            return rt;
        }
    }
    let rt = shared(pid);
    LAST.set(Some((pid, rt)));
    rt
}

fn shared(pid: u32) -> &'static TokioRuntime {
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return rt;
        }
    }
    // One worker: it serves one asyncio loop's connections, and a second only added wake-ups (a task
    // woken from the loop thread also woke the idle worker to steal it): paced-stream CPU per message
    // 106 -> 80 us, flood and echo unchanged (`make bench`).
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

/// The running event loop and contextvars of the calling task.
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    TaskLocals::with_running_loop(py)?.copy_context(py)
}
