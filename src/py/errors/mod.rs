//! The exceptions tether raises: the classes, made once in Rust (`classes`), and what each error of the
//! core becomes.
//!
//! Building an exception needs the GIL, which the Rust future of an async method does not hold. So
//! its error is an `Error`, and `From<Error> for PyErr` only defers the building: the exception is made
//! when Python raises it or asks for it, on the loop thread that delivers the result. A future returns
//! `Result<T, Error>` and needs no wrapper of its own to carry a failure to Python.

mod classes;

use pyo3::exceptions::{PyBaseException, PyException};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::PyErrArguments;

use crate::procpool::{AcquireError, RequestError};
use crate::readiness::NotReady;

pub use classes::{failed_message, register, Class};

/// A failure of a native async method's Rust work.
pub enum Error {
    /// `ProcPool.acquire` or `ProcPool.warm` did not produce what was asked.
    Acquire(AcquireError),
    /// `WorkerProc.request` got no reply.
    Request(RequestError),
    /// `ReadinessGate.dispatch`: a stage was not reached; the dispatch call's last error, if any.
    NotReady(NotReady<PyErr>),
}

impl From<AcquireError> for Error {
    fn from(e: AcquireError) -> Self {
        Error::Acquire(e)
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        Error::Request(e)
    }
}

impl From<NotReady<PyErr>> for Error {
    fn from(e: NotReady<PyErr>) -> Self {
        Error::NotReady(e)
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        // the exception the arguments make is an instance of BaseException, so Python raises it as it is
        PyErr::new::<PyBaseException, _>(Deferred(e))
    }
}

/// An `Error` whose exception is made when the `PyErr` is first raised or looked at.
struct Deferred(Error);

impl PyErrArguments for Deferred {
    fn arguments(self, py: Python<'_>) -> Py<PyAny> {
        let made = match self.0 {
            Error::Acquire(e) => acquire_error(py, &e),
            Error::Request(e) => request_error(py, &e),
            Error::NotReady(e) => not_ready(py, e),
        };
        made.into_value(py).into_any()
    }
}

/// A dict of keyword arguments; a failure to make it is the error raised instead.
fn kwargs<'py>(
    py: Python<'py>,
    fill: impl FnOnce(&Bound<'py, PyDict>) -> PyResult<()>,
) -> PyResult<Bound<'py, PyDict>> {
    let kw = PyDict::new(py);
    fill(&kw)?;
    Ok(kw)
}

fn acquire_error(py: Python<'_>, e: &AcquireError) -> PyErr {
    let (class, message, kw) = match e {
        AcquireError::Exhausted { attempts, failures } | AcquireError::Unhealthy { attempts, failures, .. } => (
            Class::PoolExhausted,
            e.message(),
            kwargs(py, |kw| {
                kw.set_item("attempts", *attempts)?;
                kw.set_item("failures", failures)
            }),
        ),
        AcquireError::TimedOut { timeout, .. } => (
            Class::TimeoutError,
            format!("ProcPool.acquire: {}", e.message()),
            kwargs(py, |kw| {
                kw.set_item("timeout", timeout.as_secs_f64())?;
                kw.set_item("what", "ProcPool.acquire")
            }),
        ),
        AcquireError::WarmFailed { attempts, failures, .. } => (
            Class::PoolExhausted,
            format!("ProcPool.warm: {}", e.message()),
            kwargs(py, |kw| {
                kw.set_item("attempts", *attempts)?;
                kw.set_item("failures", failures)
            }),
        ),
        AcquireError::Closed => (Class::PoolExhausted, "ProcPool: the pool is closed".to_string(), Ok(PyDict::new(py))),
    };
    match kw {
        Ok(kw) => class.err(py, &message, Some(&kw)),
        Err(e) => e,
    }
}

fn request_error(py: Python<'_>, e: &RequestError) -> PyErr {
    match e {
        RequestError::TimedOut { pid, timeout } => {
            let message = format!(
                "worker pid {pid} did not answer within {:.1}s; it was killed (a late reply would answer the next request)",
                timeout.as_secs_f64()
            );
            match kwargs(py, |kw| kw.set_item("timeout", timeout.as_secs_f64())) {
                Ok(kw) => Class::TimeoutError.err(py, &message, Some(&kw)),
                Err(e) => e,
            }
        }
        RequestError::Failed(why) => Class::TetherError.err(py, why, None),
    }
}

fn not_ready(py: Python<'_>, mut nr: NotReady<PyErr>) -> PyErr {
    match nr.cause.take() {
        // cancellation and interrupts inside dispatch propagate as they are
        Some(c) if !c.is_instance_of::<PyException>(py) => c,
        Some(c) => {
            let err = not_ready_error(py, &nr);
            err.set_cause(py, Some(c));
            err
        }
        None => not_ready_error(py, &nr),
    }
}

fn not_ready_error(py: Python<'_>, nr: &NotReady<PyErr>) -> PyErr {
    let kw = kwargs(py, |kw| {
        kw.set_item("job_id", nr.job_id.as_str())?;
        kw.set_item("stage", nr.stage.as_str())?;
        kw.set_item("elapsed", nr.elapsed.as_secs_f64())?;
        let reached = PyDict::new(py);
        for (s, t) in &nr.reached {
            reached.set_item(s, t.as_secs_f64())?;
        }
        kw.set_item("reached", reached)?;
        kw.set_item("attempts", nr.attempts)
    });
    match kw {
        Ok(kw) => Class::NotReady.err(py, &nr.message, Some(&kw)),
        Err(e) => e,
    }
}

pub fn value_error(msg: impl Into<String>) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(msg.into())
}
