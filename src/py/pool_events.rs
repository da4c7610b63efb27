//! The `ProcPool.events()` classes (`tether._procpool`), made from the pool's core events.

use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use super::record::record;
use crate::procpool::PoolEvent;

record! {
    /// A process became ready (``proc`` describes it) after ``took`` seconds.
    PySpawned as "Spawned" in "tether._procpool" {
        /// The process, described.
        proc: String,
        /// Seconds its spawn took.
        took: f64,
    }
}

record! {
    /// A spawn failed with ``cause``, the ``consecutive``-th in a row; the next waits ``retry_in`` seconds.
    PySpawnFailed as "SpawnFailed" in "tether._procpool" {
        /// Why it failed.
        cause: String,
        /// Failures in a row, this one included.
        consecutive: u32,
        /// Seconds until the next spawn.
        retry_in: f64,
    }
}

record! {
    /// A process was removed from the pool; ``reason`` says why (e.g. it died while idle).
    PyEvicted as "Evicted" in "tether._procpool" {
        /// The process, described.
        proc: String,
        /// Why it was removed.
        reason: String,
    }
}

record! {
    /// An acquire raised ``PoolExhausted`` after ``attempts`` attempts; ``failures`` are their causes.
    PyExhausted as "Exhausted" in "tether._procpool" {
        /// Attempts the acquire made.
        attempts: u32,
        /// Their causes, in order (a new list on each access).
        failures: Vec<String>,
    }
}

record! {
    /// The pool became unhealthy (spawn failures in a row) or healthy again (a spawn succeeded).
    PyHealthChanged as "HealthChanged" in "tether._procpool" {
        /// Whether the pool can produce processes now.
        healthy: bool,
    }
}

record! {
    /// The pool closed; its event stream ends.
    PyPoolClosed as "PoolClosed" in "tether._procpool" {}
}

pub fn to_py(py: Python<'_>, e: &PoolEvent) -> PyResult<Py<PyAny>> {
    match e {
        PoolEvent::Spawned { proc, took } => PySpawned { proc: proc.clone(), took: took.as_secs_f64() }.into_py_any(py),
        PoolEvent::SpawnFailed { cause, consecutive, retry_in } => {
            PySpawnFailed { cause: cause.clone(), consecutive: *consecutive, retry_in: retry_in.as_secs_f64() }
                .into_py_any(py)
        }
        PoolEvent::Evicted { proc, reason } => PyEvicted { proc: proc.clone(), reason: reason.clone() }.into_py_any(py),
        PoolEvent::Exhausted { attempts, failures } => {
            PyExhausted { attempts: *attempts, failures: failures.clone() }.into_py_any(py)
        }
        PoolEvent::Health { healthy } => PyHealthChanged { healthy: *healthy }.into_py_any(py),
        PoolEvent::Closed => PyPoolClosed {}.into_py_any(py),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySpawned>()?;
    m.add_class::<PySpawnFailed>()?;
    m.add_class::<PyEvicted>()?;
    m.add_class::<PyExhausted>()?;
    m.add_class::<PyHealthChanged>()?;
    m.add_class::<PyPoolClosed>()
}
