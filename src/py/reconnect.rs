//! `tether.Reconnector`: the core reconnect loop driving a Python coroutine factory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};
use tokio::sync::broadcast;

use crate::reconnect::{self as core, Attempt, Config, Event, Events};
use crate::redact::redact_url;

use super::backoff::{count, non_negative_seconds, PyBackoff};
use super::bridge::await_py;
use super::errors::tether_error;
use super::events::EventStream;

#[derive(Default)]
struct RunState {
    current: Option<Attempt>,
    running: bool,
    finished_runs: u32,
}

#[pyclass(name = "Reconnector", module = "tether._native", frozen)]
pub struct PyReconnector {
    cfg: Config,
    fatal: Py<PyTuple>,
    events: broadcast::Sender<Event>,
    state: Arc<Mutex<RunState>>,
}

/// A failed attempt: the Python error, plus whether tether itself decided it cannot be retried.
pub struct PyFail {
    pub err: PyErr,
    pub force_fatal: bool,
}

/// Exception classes from `fatal=`: a class or a tuple of classes, each a BaseException subclass.
pub fn fatal_tuple<'py>(py: Python<'py>, fatal: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyTuple>> {
    let items: Vec<Bound<'py, PyAny>> = match fatal {
        None => vec![],
        Some(f) if f.is_none() => vec![],
        Some(f) if f.is_instance_of::<PyType>() => vec![f.clone()],
        Some(f) => f
            .try_iter()
            .map_err(|_| PyTypeError::new_err("fatal must be an exception class or a tuple of exception classes"))?
            .collect::<PyResult<_>>()?,
    };
    let base = py.get_type::<pyo3::exceptions::PyBaseException>();
    for it in &items {
        let ok = it.cast::<PyType>().map(|t| t.is_subclass(&base).unwrap_or(false)).unwrap_or(false);
        if !ok {
            return Err(PyTypeError::new_err(format!("fatal entries must be exception classes, got {}", it.repr()?)));
        }
    }
    PyTuple::new(py, items)
}

/// BaseExceptions that are not Exceptions (CancelledError, KeyboardInterrupt, SystemExit) always propagate.
pub fn is_control_flow(py: Python<'_>, err: &PyErr) -> bool {
    !err.is_instance_of::<pyo3::exceptions::PyException>(py)
}

pub fn describe(py: Python<'_>, err: &PyErr) -> String {
    let ty = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let msg = err.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let text = if msg.is_empty() { ty } else { format!("{ty}: {msg}") };
    redact_url(&text)
}

/// Turn the core's give-up into the Python exception to raise.
pub fn gave_up_error(py: Python<'_>, g: core::GaveUp<PyFail>) -> PyErr {
    let message = g.message();
    let last = g.last_error.err;
    // Control flow (cancellation, interrupts) and tether's own usage errors propagate unwrapped.
    if g.last_error.force_fatal || is_control_flow(py, &last) {
        return last;
    }
    let kwargs = PyDict::new(py);
    let _ = kwargs.set_item("attempts", g.attempts);
    let _ = kwargs.set_item("last_error", last.value(py));
    let _ = kwargs.set_item("elapsed", g.elapsed.as_secs_f64());
    let _ = kwargs.set_item("reason", g.reason.as_str());
    let _ = kwargs.set_item("name", g.name.as_str());
    let err = tether_error(py, "GaveUp", &message, Some(&kwargs));
    err.set_cause(py, Some(last));
    err
}

struct RunGuard {
    state: Arc<Mutex<RunState>>,
    events: broadcast::Sender<Event>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            st.current = None;
            st.finished_runs += 1;
        }
        let _ = self.events.send(Event::Closed);
    }
}

#[pymethods]
impl PyReconnector {
    #[new]
    #[pyo3(signature = (policy=None, *, stable_after=None, quiet_attempts=None, fatal=None, name="connection", attempt_timeout=None))]
    fn new(
        py: Python<'_>,
        policy: Option<&Bound<'_, PyAny>>,
        stable_after: Option<&Bound<'_, PyAny>>,
        quiet_attempts: Option<&Bound<'_, PyAny>>,
        fatal: Option<&Bound<'_, PyAny>>,
        name: &str,
        attempt_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let policy = match policy {
            None => PyBackoff { inner: Default::default() },
            Some(p) if p.is_none() => PyBackoff { inner: Default::default() },
            Some(p) => PyBackoff::from_any(p)?,
        };
        let stable_after = match stable_after {
            Some(v) if !v.is_none() => non_negative_seconds("stable_after", v)?,
            _ => 10.0,
        };
        let quiet_attempts = match quiet_attempts {
            Some(v) if !v.is_none() => count("quiet_attempts", v)?,
            _ => 1,
        };
        super::logging::sync(py);
        if name.is_empty() {
            return Err(super::errors::value_error("name must not be empty"));
        }
        let (events, _) = broadcast::channel(4096);
        Ok(PyReconnector {
            cfg: Config {
                name: redact_url(name),
                policy: policy.inner,
                stable_after: Duration::from_secs_f64(stable_after),
                quiet_attempts,
                attempt_timeout: match attempt_timeout {
                    Some(v) if !v.is_none() => {
                        Some(Duration::from_secs_f64(super::backoff::positive_seconds("attempt_timeout", v)?))
                    }
                    _ => None,
                },
                ..Config::default()
            },
            fatal: fatal_tuple(py, fatal)?.unbind(),
            events,
            state: Arc::new(Mutex::new(RunState::default())),
        })
    }

    /// Run `connect()` until it returns; retry failures per the policy. Returns what `connect` returned.
    fn run<'py>(&self, py: Python<'py>, connect: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !connect.is_callable() {
            return Err(PyTypeError::new_err("connect must be an async callable (a coroutine function)"));
        }
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.running {
                return Err(PyRuntimeError::new_err(format!("Reconnector {:?} is already running", self.cfg.name)));
            }
            st.running = true;
        }
        super::logging::sync(py);
        let guard = RunGuard { state: self.state.clone(), events: self.events.clone() };
        let locals = super::runtime::get_current_locals(py)?;
        let connect = connect.unbind();
        let fatal = self.fatal.clone_ref(py);
        let cfg = self.cfg.clone();
        let events = Events::new(self.events.clone());
        let state = self.state.clone();
        super::runtime::future_into_py(py, async move {
            let _guard = guard;
            let res = core::run(
                &cfg,
                &events,
                |attempt: Attempt| {
                    state.lock().unwrap_or_else(|p| p.into_inner()).current = Some(attempt);
                    let started = Python::attach(|py| -> Result<_, PyFail> {
                        let aw = connect.call0(py).map_err(|err| PyFail { err, force_fatal: false })?;
                        let aw = aw.into_bound(py);
                        let awaitable = py
                            .import("inspect")
                            .and_then(|m| m.call_method1("isawaitable", (&aw,)))
                            .and_then(|b| b.is_truthy())
                            .unwrap_or(false);
                        if !awaitable {
                            return Err(PyFail {
                                err: PyTypeError::new_err(format!(
                                    "connect must return an awaitable; it returned {}",
                                    aw.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                                )),
                                force_fatal: true,
                            });
                        }
                        await_py(py, &locals, aw).map_err(|err| PyFail { err, force_fatal: true })
                    });
                    async move {
                        match started {
                            Ok(fut) => fut.await.map_err(|err| PyFail { err, force_fatal: false }),
                            Err(e) => Err(e),
                        }
                    }
                },
                |f: &PyFail| {
                    f.force_fatal
                        || Python::attach(|py| {
                            is_control_flow(py, &f.err) || f.err.value(py).is_instance(fatal.bind(py)).unwrap_or(false)
                        })
                },
                |f: &PyFail| Python::attach(|py| describe(py, &f.err)),
                |n, t| PyFail {
                    err: Python::attach(|py| {
                        let kw = PyDict::new(py);
                        let _ = kw.set_item("timeout", t.as_secs_f64());
                        let _ = kw.set_item("what", "attempt");
                        tether_error(py, "TimeoutError", &format!(
                            "attempt {n} made no progress within {:.1}s (connect() did not call connected()); abandoned", t.as_secs_f64()), Some(&kw))
                    }),
                    force_fatal: false,
                },
            )
            .await;
            match res {
                Ok(v) => Ok(v),
                Err(g) => Err(Python::attach(|py| gave_up_error(py, g))),
            }
        })
    }

    /// Call from inside `connect` once the handshake succeeded; the stability clock starts now.
    /// Returns False when no attempt is running.
    fn connected(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &st.current {
            Some(a) => {
                a.connected();
                true
            }
            None => false,
        }
    }

    /// `async for ev in r.events()`: events of the current (or next) run; ends when that run ends.
    fn events(&self) -> EventStream {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.running && st.finished_runs > 0 {
            return EventStream::ended();
        }
        EventStream::new(self.events.subscribe())
    }

    #[getter]
    fn name(&self) -> &str {
        &self.cfg.name
    }
    #[getter]
    fn policy(&self) -> PyBackoff {
        PyBackoff { inner: self.cfg.policy.clone() }
    }
    #[getter]
    fn stable_after(&self) -> f64 {
        self.cfg.stable_after.as_secs_f64()
    }
    #[getter]
    fn quiet_attempts(&self) -> u32 {
        self.cfg.quiet_attempts
    }
    #[getter]
    fn running(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).running
    }

    fn __repr__(&self) -> String {
        format!(
            "Reconnector(name={:?}, stable_after={}, quiet_attempts={})",
            self.cfg.name,
            self.cfg.stable_after.as_secs_f64(),
            self.cfg.quiet_attempts
        )
    }
}
