//! `tether.Backoff`: a validated, immutable retry policy.

use pyo3::prelude::*;
use pyo3::types::PyAny;

use crate::backoff::{Backoff, Delays, Jitter};

use super::errors::value_error;

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

fn seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!("{name} must be a number of seconds, not bool")));
    }
    v.extract::<f64>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "{name} must be a number of seconds, not {}",
            v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
        ))
    })
}

pub fn opt_seconds(name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => seconds(name, v).map(Some),
    }
}

/// Positive, finite seconds for timeouts and intervals; `ValueError` otherwise.
pub fn positive_seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    let s = seconds(name, v)?;
    if !s.is_finite() || s <= 0.0 || s > crate::backoff::MAX_SECONDS {
        return Err(value_error(format!("{name} must be a finite number of seconds in (0, 86400], got {s}")));
    }
    Ok(s)
}

pub fn non_negative_seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    let s = seconds(name, v)?;
    if !s.is_finite() || !(0.0..=crate::backoff::MAX_SECONDS).contains(&s) {
        return Err(value_error(format!("{name} must be a finite number of seconds in [0, 86400], got {s}")));
    }
    Ok(s)
}

pub fn count(name: &str, v: &Bound<'_, PyAny>) -> PyResult<u32> {
    if v.is_instance_of::<pyo3::types::PyBool>() || !v.is_instance_of::<pyo3::types::PyInt>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!("{name} must be an int")));
    }
    let n: i64 = v.extract().map_err(|_| value_error(format!("{name} is out of range")))?;
    if !(0..=1_000_000).contains(&n) {
        return Err(value_error(format!("{name} must be between 0 and 1000000, got {n}")));
    }
    Ok(n as u32)
}

#[pymethods]
impl PyBackoff {
    #[new]
    #[pyo3(signature = (initial=None, factor=None, max_delay=None, jitter="full", max_attempts=None, deadline=None, seed=None))]
    fn new(
        initial: Option<&Bound<'_, PyAny>>,
        factor: Option<&Bound<'_, PyAny>>,
        max_delay: Option<&Bound<'_, PyAny>>,
        jitter: &str,
        max_attempts: Option<&Bound<'_, PyAny>>,
        deadline: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let d = Backoff::default();
        let mut b = Backoff {
            initial: opt_seconds("initial", initial)?.unwrap_or(d.initial),
            factor: opt_seconds("factor", factor)?.unwrap_or(d.factor),
            max_delay: d.max_delay,
            jitter: Jitter::parse(jitter).map_err(|e| value_error(e.0))?,
            max_attempts: match max_attempts {
                Some(v) if !v.is_none() => Some(count("max_attempts", v)?),
                _ => None,
            },
            deadline: opt_seconds("deadline", deadline)?,
            seed: match seed {
                Some(v) if !v.is_none() => {
                    if !v.is_instance_of::<pyo3::types::PyInt>() || v.is_instance_of::<pyo3::types::PyBool>() {
                        return Err(pyo3::exceptions::PyTypeError::new_err("seed must be an int or None"));
                    }
                    // any Python int: keep the low 64 bits
                    let masked = v.call_method1("__and__", (u64::MAX,))?;
                    Some(masked.extract::<u64>()?)
                }
                _ => None,
            },
        };
        // max_delay defaults to 7 s, but never below an explicitly larger initial delay
        b.max_delay = match opt_seconds("max_delay", max_delay)? {
            Some(m) => m,
            None => d.max_delay.max(b.initial),
        };
        b.validate().map_err(|e| value_error(e.0))?;
        Ok(PyBackoff { inner: b })
    }

    /// The constructor's signature with the defaults that take effect (`Backoff::default()`), for
    /// `help()`; the binding's own takes None for each, so that None also means "the default".
    #[classattr]
    #[pyo3(name = "__signature__")]
    fn signature(py: Python<'_>) -> PyResult<Py<PyAny>> {
        use super::signature::Kind::PositionalOrKeyword as P;
        let d = Backoff::default();
        super::signature::signature(
            py,
            vec![
                ("initial", P, d.initial.into_pyobject(py)?.into_any()),
                ("factor", P, d.factor.into_pyobject(py)?.into_any()),
                ("max_delay", P, d.max_delay.into_pyobject(py)?.into_any()),
                ("jitter", P, d.jitter.as_str().into_pyobject(py)?.into_any()),
                ("max_attempts", P, d.max_attempts.into_pyobject(py)?.into_any()),
                ("deadline", P, d.deadline.into_pyobject(py)?.into_any()),
                ("seed", P, d.seed.into_pyobject(py)?.into_any()),
            ],
        )
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
