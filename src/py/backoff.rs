//! `tether.Backoff`: a validated, immutable retry policy.

use std::marker::PhantomData;

use pyo3::prelude::*;

use crate::backoff::{Backoff, Delays};

use super::convert::type_name;
use super::errors::value_error;
use super::options::{param, Count, JitterMode, Number, Param};

/// Retry delay policy. ``max_attempts`` counts retries: ``delays()`` yields one delay per retry.
///
/// initial/max_delay/deadline are seconds (finite, 0..86400; deadline > 0); factor >= 1; jitter: "full" uniform(0, d)
/// | "equal" d/2 + uniform(0, d/2) | "decorrelated" uniform(initial, 3*prev) | "none". ``deadline`` caps the sum of
/// delays and, in loops, the wall-clock length of an outage (a retry whose delay would reach the deadline is not
/// made: the loop gives up at that failure). ``seed`` makes the jitter reproducible. ValueError/TypeError on
/// nonsense. Every argument left out, or None, takes the default shown by ``help()``; ``max_delay`` is never below an
/// ``initial`` given larger.
#[pyclass(name = "Backoff", module = "tether._native", frozen)]
#[derive(Clone)]
pub struct PyBackoff {
    pub inner: Backoff,
}

/// An option that takes a `tether.Backoff` (`policy=`, `respawn=`).
pub struct Policy<P>(pub Backoff, PhantomData<P>);

impl<'a, 'py, P: Param> FromPyObject<'a, 'py> for Policy<P> {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        v.cast::<PyBackoff>().map(|b| Policy(b.get().inner.clone(), PhantomData)).map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "{} must be a tether.Backoff, not {}",
                P::NAME,
                type_name(&v)
            ))
        })
    }
}

#[pymethods]
impl PyBackoff {
    #[new]
    #[pyo3(signature = (initial=None, factor=None, max_delay=None, jitter=None, max_attempts=None, deadline=None,
        seed=None))]
    fn new(
        initial: Option<Number<param::Initial>>,
        factor: Option<Number<param::Factor>>,
        max_delay: Option<Number<param::MaxDelay>>,
        jitter: Option<JitterMode>,
        max_attempts: Option<Count<param::MaxAttempts>>,
        deadline: Option<Number<param::Deadline>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let d = Backoff::default();
        let initial = initial.map_or(d.initial, |n| n.0);
        let b = Backoff {
            initial,
            factor: factor.map_or(d.factor, |n| n.0),
            // never below an explicitly larger initial delay
            max_delay: max_delay.map_or(d.max_delay.max(initial), |n| n.0),
            jitter: jitter.map_or(d.jitter, |j| j.0),
            max_attempts: max_attempts.map(|n| n.0).or(d.max_attempts),
            deadline: deadline.map(|n| n.0).or(d.deadline),
            seed: match seed {
                Some(v) if !v.is_none() => {
                    if !v.is_instance_of::<pyo3::types::PyInt>() || v.is_instance_of::<pyo3::types::PyBool>() {
                        return Err(pyo3::exceptions::PyTypeError::new_err("seed must be an int or None"));
                    }
                    // any Python int: keep the low 64 bits
                    let masked = v.call_method1("__and__", (u64::MAX,))?;
                    Some(masked.extract::<u64>()?)
                }
                _ => d.seed,
            },
        };
        b.validate().map_err(|e| value_error(e.0))?;
        Ok(PyBackoff { inner: b })
    }

    /// A fresh iterator of delays (seconds, as floats) for one retry episode.
    fn delays(&self) -> DelayIter {
        DelayIter { it: std::sync::Mutex::new(self.inner.delays()) }
    }

    /// The first delay, in seconds, before jitter.
    #[getter]
    fn initial(&self) -> f64 {
        self.inner.initial
    }
    /// How much each delay grows over the one before (at least 1).
    #[getter]
    fn factor(&self) -> f64 {
        self.inner.factor
    }
    /// The largest delay, in seconds, before jitter.
    #[getter]
    fn max_delay(&self) -> f64 {
        self.inner.max_delay
    }
    /// "full", "equal", "decorrelated" or "none".
    #[getter]
    fn jitter(&self) -> &'static str {
        self.inner.jitter.as_str()
    }
    /// Retries allowed in one outage; None: no limit.
    #[getter]
    fn max_attempts(&self) -> Option<u32> {
        self.inner.max_attempts
    }
    /// Seconds one outage may last (and its delays add up to); None: no limit.
    #[getter]
    fn deadline(&self) -> Option<f64> {
        self.inner.deadline
    }
    /// The seed of the jitter; None: a random one.
    #[getter]
    fn seed(&self) -> Option<u64> {
        self.inner.seed
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyBackoff>().map(|o| o.get().inner == self.inner).unwrap_or(false)
    }

    fn __repr__(&self) -> String {
        let b = &self.inner;
        format!(
            "Backoff(initial={}, factor={}, max_delay={}, jitter={:?}, max_attempts={}, deadline={}, seed={})",
            b.initial,
            b.factor,
            b.max_delay,
            b.jitter.as_str(),
            b.max_attempts.map(|m| m.to_string()).unwrap_or("None".into()),
            b.deadline.map(|m| m.to_string()).unwrap_or("None".into()),
            b.seed.map(|m| m.to_string()).unwrap_or("None".into()),
        )
    }
}

/// The delays of one retry episode, in seconds (``Backoff.delays()``).
#[pyclass(module = "tether._native")]
pub struct DelayIter {
    it: std::sync::Mutex<Delays>,
}

#[pymethods]
impl DelayIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __next__(&self) -> Option<f64> {
        self.it.lock().unwrap_or_else(|p| p.into_inner()).next().map(|d| d.as_secs_f64())
    }
}

/// The defaults `help(tether.Backoff)` shows, from `Backoff::default()` (their one source).
fn show_defaults(cls: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = cls.py();
    let d = Backoff::default();
    super::signature::show_defaults(
        cls,
        vec![
            ("initial", d.initial.into_pyobject(py)?.into_any()),
            ("factor", d.factor.into_pyobject(py)?.into_any()),
            ("max_delay", d.max_delay.into_pyobject(py)?.into_any()),
            ("jitter", d.jitter.as_str().into_pyobject(py)?.into_any()),
            ("max_attempts", d.max_attempts.into_pyobject(py)?),
            ("deadline", d.deadline.into_pyobject(py)?),
            ("seed", d.seed.into_pyobject(py)?),
        ],
    )
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBackoff>()?;
    m.add_class::<DelayIter>()?;
    show_defaults(&m.getattr("Backoff")?)
}
