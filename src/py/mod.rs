//! PyO3 bindings: thin wrappers over the core modules. Nothing here starts a thread or a runtime at
//! import: the tokio runtime is built lazily on first use. How a Rust future becomes an awaitable (and
//! a Python awaitable a Rust future) is `bridge`, whose module doc is the contract every async method
//! relies on: which thread runs what, which lock is held when, what cancellation does.
//!
//! Calls go one way: from Python into these bindings. The Python front ends that own a native object
//! (`tether.Connection` and `tether.Handshake` over a connection, `Reconnector.run` over the
//! Reconnector's steps) call into it, and it calls back only the callables it was handed (the
//! application's, as the front ends pass them on). A `tether.*` module is imported from here only
//! where Python implements the behaviour itself:
//! - `tether._logging` (`logging`): the Rust-side filter follows Python's `logging` configuration,
//!   which the application changes from Python at any time, and the records of an object built with
//!   `logger=` go to the `logging.Logger` registered there;
//! - `tether._wire` (`ws::link`): the connection's asyncio protocol, which must be a subclass of
//!   `asyncio.BufferedProtocol` for the transport to read into a buffer it provides, and a
//!   `#[pyclass]` cannot subclass a Python class.

use pyo3::prelude::*;

mod backoff;
mod bridge;
mod callables;
mod chaos;
mod connection;
mod convert;
mod errors;
mod events;
mod heartbeat;
pub(crate) mod logging;
mod metrics;
mod options;
mod pool_events;
mod procpool;
mod readiness;
mod reconnect;
mod record;
mod served;
mod signal_server;
mod signature;
pub(crate) mod watchdog;
mod ws;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();

    errors::register(m)?;
    bridge::coroutine::register(m)?;
    backoff::register(m)?;
    reconnect::register(m)?;
    events::register(m)?;
    watchdog::register(m)?;
    procpool::register(m)?;
    pool_events::register(m)?;
    readiness::register(m)?;
    chaos::register(m)?;
    signal_server::register(m)?;
    connection::register(m)?;
    ws::register(m)?;
    heartbeat::register(m)?;
    metrics::register(m)?;
    m.add_function(wrap_pyfunction!(logging::_set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(redact, m)?)?;
    m.add_function(wrap_pyfunction!(_at_exit, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

static PYTHON_ALIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// False once the interpreter started shutting down (atexit): from then on no tokio thread may attach
/// to Python (on 3.11 a thread that takes the GIL during finalization is killed mid-flight).
pub fn python_alive() -> bool {
    PYTHON_ALIVE.load(std::sync::atomic::Ordering::SeqCst)
}

static ATTACHING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Attach to Python from a Rust thread unless the interpreter is shutting down. Every attach from a
/// tokio thread goes through here, so `_at_exit` can wait for the ones in progress: on 3.11 a thread
/// that takes the GIL during finalization is terminated by Python, which a Rust thread cannot survive.
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    use std::sync::atomic::Ordering::SeqCst;
    #[cfg(unix)]
    {
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        /// A forked child has none of its parent's threads: the attaches they had in progress are not
        /// its own (its exit waited two seconds for them). Only an atomic store: async-signal-safe.
        unsafe extern "C" fn forget_attaches() {
            ATTACHING.store(0, SeqCst);
        }
        // SAFETY: registers a handler that only does an atomic store (see above)
        AT_FORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(forget_attaches));
        });
    }
    ATTACHING.fetch_add(1, SeqCst);
    // the gate itself: the one place allowed to attach from a Rust thread (clippy.toml forbids it elsewhere)
    #[allow(clippy::disallowed_methods)]
    let r = if python_alive() { Python::try_attach(f) } else { None };
    ATTACHING.fetch_sub(1, SeqCst);
    r
}

/// `with_python` for a call that returns a `Result`: the interpreter shutting down is an error too, made
/// by `gone` from the one text that says so.
pub fn try_with_python<R, E>(
    gone: impl FnOnce(&'static str) -> E,
    f: impl for<'py> FnOnce(Python<'py>) -> Result<R, E>,
) -> Result<R, E> {
    with_python(f).unwrap_or_else(|| Err(gone(SHUTTING_DOWN)))
}

pub const SHUTTING_DOWN: &str = "the Python interpreter is shutting down";

/// Registered with `atexit` by the package: close the gate, then let the attaches in progress finish
/// (with the GIL released so they can), for at most two seconds.
#[pyfunction]
fn _at_exit(py: Python<'_>) {
    use std::sync::atomic::Ordering::SeqCst;
    // pools nobody closed: their processes must not outlive the program (before the gate closes:
    // killing a Python-spawned process calls its kill())
    crate::procpool::kill_all_at_exit();
    PYTHON_ALIVE.store(false, SeqCst);
    py.detach(|| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while ATTACHING.load(SeqCst) > 0 && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    });
}

/// Redact tokens in a URL or message, exactly as tether does for its own logs.
#[pyfunction]
fn redact(text: &str) -> String {
    crate::redact::redact_url(text)
}
