//! PyO3 bindings: thin wrappers over the core modules. Nothing here starts a thread or a runtime at
//! import: the tokio runtime is built lazily on first use.

use pyo3::prelude::*;

mod backoff;
mod bridge;
mod chaos;
mod connection;
mod errors;
mod events;
pub(crate) mod logging;
mod procpool;
mod readiness;
mod reconnect;
pub(crate) mod runtime;
mod signal_server;
pub(crate) mod watchdog;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::install();

    m.add_class::<backoff::PyBackoff>()?;
    m.add_class::<backoff::DelayIter>()?;
    m.add_class::<reconnect::PyReconnector>()?;
    m.add_class::<events::EventStream>()?;
    m.add_class::<bridge::TaskSlot>()?;
    watchdog::register(m)?;
    procpool::register(m)?;
    readiness::register(m)?;
    chaos::register(m)?;
    signal_server::register(m)?;
    connection::register(m)?;
    m.add_function(wrap_pyfunction!(logging::_set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_log_level_rank, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_emit_test_log, m)?)?;
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

/// Registered with `atexit` by the package.
#[pyfunction]
fn _at_exit() {
    PYTHON_ALIVE.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Redact tokens in a URL or message, exactly as tether does for its own logs.
#[pyfunction]
fn redact(text: &str) -> String {
    crate::redact::redact_url(text)
}
