//! `tether.ReadinessGate` bindings.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::readiness::{DispatchError, Gate, Mark, Spec};
use crate::redact::redact_url;

use super::backoff::Policy;
use super::bridge::await_py;
use super::convert::describe;
use super::errors::{value_error, Error};
use super::logging::LoggerRoute;
use super::options::{param, positive_seconds};

/// Staged dispatch readiness. ``dispatch(job_id, attempt)`` is awaited; its return marks the first stage. Each
/// further stage must be ``mark``ed within its timeout, measured from the previous stage (the first from the start of
/// the first dispatch call, which it also bounds). A raising dispatch call is retried with ``policy`` (default
/// Backoff(0.2, 2, jitter="none", max_attempts=3): 200/400/800 ms) within the first stage's timeout, which ends the
/// retries of a policy without ``max_attempts`` too; a stage timeout raises ``tether.NotReady`` (or re-dispatches
/// when ``redispatch=True``). Returns {stage: seconds since the dispatch call started}. Stages default to
/// ("dispatched", "joined", "ready"), their timeouts to 10 s each. A plain (non-async) ``dispatch`` is a TypeError at
/// once; marks made during a failed attempt are cleared before the retry. ``NotReady`` is the failure's one report
/// (its log record is DEBUG); retries log WARNING. ``name``: the ``name`` attribute of the gate's metrics
/// (``tether.metrics``).
#[pyclass(name = "ReadinessGate", module = "tether._native", frozen)]
pub struct PyReadinessGate {
    gate: Arc<Gate>,
    /// Its `logger=`, kept while it lives.
    _logger: Option<LoggerRoute>,
}

fn parse_stages(v: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Arc<str>>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(Spec::DEFAULT_STAGES.iter().map(|&s| s.into()).collect());
    };
    if v.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err("stages must be a sequence of stage names, not a str"));
    }
    let mut out: Vec<Arc<str>> = vec![];
    for s in v.try_iter().map_err(|_| PyTypeError::new_err("stages must be a sequence of str"))? {
        let s: String = s?.extract().map_err(|_| PyTypeError::new_err("stage names must be str"))?;
        if s.is_empty() {
            return Err(value_error("stage names must not be empty"));
        }
        if out.iter().any(|o| **o == *s) {
            return Err(value_error(format!("duplicate stage {s:?}")));
        }
        out.push(s.as_str().into());
    }
    if out.is_empty() {
        return Err(value_error("stages must name at least one stage"));
    }
    Ok(out)
}

fn parse_timeouts(v: Option<&Bound<'_, PyAny>>, stages: &[Arc<str>]) -> PyResult<Vec<Duration>> {
    let mut out = vec![Spec::DEFAULT_STAGE_TIMEOUT; stages.len()];
    let Some(v) = v.filter(|v| !v.is_none()) else { return Ok(out) };
    if let Ok(d) = v.cast::<PyDict>() {
        for (k, t) in d.iter() {
            let k: String = k.extract().map_err(|_| PyTypeError::new_err("timeouts keys must be stage names"))?;
            let Some(i) = stages.iter().position(|s| **s == *k) else {
                return Err(value_error(format!(
                    "timeouts names unknown stage {k:?}; stages are {:?}",
                    stages.iter().map(|s| &**s).collect::<Vec<_>>()
                )));
            };
            out[i] = positive_seconds(&format!("timeouts[{k:?}]"), &t)?;
        }
        return Ok(out);
    }
    let t = positive_seconds("timeouts", v)?;
    Ok(vec![t; stages.len()])
}

/// The stages reached and when, as the dict `dispatch` returns (in stage order).
struct Timings(Vec<(String, Duration)>);

impl<'py> IntoPyObject<'py> for Timings {
    type Target = PyDict;
    type Output = Bound<'py, PyDict>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, t) in self.0 {
            d.set_item(s, t.as_secs_f64())?;
        }
        Ok(d)
    }
}

/// A cancellation or an interrupt raised in the dispatch call (a BaseException that is no Exception)
/// propagates as it is, at once: retrying would swallow it.
impl DispatchError for PyErr {
    fn is_final(&self) -> bool {
        super::with_python(|py| !self.is_instance_of::<pyo3::exceptions::PyException>(py)).unwrap_or(false)
    }
}

#[pymethods]
impl PyReadinessGate {
    #[new]
    #[pyo3(signature = (*, logger=None, name="readiness"))]
    fn new(py: Python<'_>, logger: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Self> {
        let logger = LoggerRoute::of(py, logger)?;
        super::logging::sync(py);
        let gate = Arc::new(Gate::named(&redact_url(name), logger.as_ref().map(LoggerRoute::key)));
        Ok(PyReadinessGate { gate, _logger: logger })
    }

    /// Dispatch `job_id` with `await dispatch(job_id, attempt)` and wait until every stage is marked.
    /// Returns {stage: seconds since the dispatch call started}. Raises tether.NotReady.
    #[pyo3(signature = (job_id, dispatch, *, stages=None, timeouts=None, policy=None, redispatch=false))]
    #[allow(clippy::too_many_arguments)]
    fn dispatch<'py>(
        &self,
        py: Python<'py>,
        job_id: &Bound<'py, PyAny>,
        dispatch: Bound<'py, PyAny>,
        stages: Option<&Bound<'py, PyAny>>,
        timeouts: Option<&Bound<'py, PyAny>>,
        policy: Option<Policy<param::Policy>>,
        redispatch: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        super::logging::sync(py);
        let job_id: String = job_id.extract().map_err(|_| PyTypeError::new_err("job_id must be a str"))?;
        if job_id.is_empty() {
            return Err(value_error("job_id must not be empty"));
        }
        super::callables::require_async(py, "dispatch (an async callable (job_id, attempt) -> None)", &dispatch)?;
        let stages = parse_stages(stages)?;
        let timeouts = parse_timeouts(timeouts, &stages)?;
        let policy = policy.map_or_else(Spec::default_policy, |p| p.0);
        let spec = Spec { stages, timeouts, policy, redispatch };
        let gate = self.gate.clone();
        let dispatch = dispatch.unbind();
        // `dispatch` runs on the loop that drives this, known at its first step
        super::bridge::coroutine::deferred(py, "ReadinessGate.dispatch", move |py| {
            let locals = super::bridge::runtime::get_current_locals(py)?;
            Ok(async move {
                let res = gate
                    .dispatch(
                        &job_id,
                        &spec,
                        |attempt| {
                            let started = super::try_with_python(PyRuntimeError::new_err, |py| -> PyResult<_> {
                                let aw = dispatch.call1(py, (job_id.as_str(), attempt))?.into_bound(py);
                                if !super::callables::is_awaitable(&aw)? {
                                    return Err(PyTypeError::new_err(
                                        "dispatch must return an awaitable (use an async def)",
                                    ));
                                }
                                await_py(py, &locals, aw)
                            });
                            async move {
                                match started {
                                    Ok(f) => f.await.map(|_| ()),
                                    Err(e) => Err(e),
                                }
                            }
                        },
                        |e: &PyErr| super::with_python(|py| describe(py, e)).unwrap_or_default(),
                    )
                    .await;
                res.map(Timings).map_err(Error::from)
            })
        })
    }

    /// Record that `job_id` reached `stage` (implies earlier stages). True if that advanced the job;
    /// False for duplicates and for unknown or finished jobs (counted in `unknown_marks`).
    fn mark(&self, job_id: &str, stage: &str) -> PyResult<bool> {
        match self.gate.mark(job_id, stage) {
            Ok(Mark::Advanced) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(value_error(e.0)),
        }
    }

    /// Job ids currently being dispatched.
    fn pending(&self) -> Vec<String> {
        self.gate.pending()
    }

    /// {stage: reached?} for a job in flight, None otherwise.
    fn status<'py>(&self, py: Python<'py>, job_id: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(st) = self.gate.status(job_id) else { return Ok(None) };
        let d = PyDict::new(py);
        for (s, r) in st {
            d.set_item(s, r)?;
        }
        Ok(Some(d))
    }

    /// Marks for jobs unknown or already finished, which were ignored (a count, for diagnosis).
    #[getter]
    fn unknown_marks(&self) -> u64 {
        self.gate.unknown_marks()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReadinessGate>()
}
