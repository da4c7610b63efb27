//! `tether.Reconnector`: the retry state machine (`crate::retry_state`) driven from Python.
//!
//! Two forms share one state machine and one reporting path (`crate::reconnect::report`):
//! * step-wise, for loops that mix policy and connection body: `failed(exc)` / `backoff(exc)` /
//!   `connected()` / `closed()` / `attempt`;
//! * `run(connect)`: defined by the Python subclass `tether._reconnect.Reconnector` (the public
//!   class) as a coroutine made of the `_`-prefixed steps below, on the caller's event loop, so
//!   `connect()` runs as a plain asyncio task (no thread hop, cancellation is asyncio's). This class
//!   only answers the steps: it never calls back into the Python that drives it.
//!
//! Every call happens on the event loop thread; the state lock is never held while logging or
//! emitting (a logging handler may call back into the Reconnector).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};
use tokio::sync::broadcast;

use crate::reconnect::{report, Event, Events};
use crate::redact::redact_url;
use crate::retry_state::{target, Config};
use crate::retry_state::{Decision, RetryState};

use super::backoff::{Policy, PyBackoff};
use super::convert::{describe, loss_name, type_name};
use super::errors::Class;
use super::events::EventStream;
use super::logging::LoggerRoute;
use super::options::{param, Count, Seconds, SecondsOrZero};

struct Inner {
    st: RetryState,
    running: bool,
    /// A step-wise episode is under way (something happened since the last give-up).
    stepping: bool,
    /// Episodes (runs, step-wise give-ups) that ended; `events()` after one returns an ended stream.
    ended: u32,
}

/// Retry policy for a connection loop, as ``run(connect)`` or step by step. One state machine decides.
///
/// Only time spent connected counts: the retry counter (``attempt``) and the backoff sequence reset once a connection
/// stayed up ``stable_after`` seconds after ``connected()`` was called; an attempt that never called ``connected()``
/// never counts, however long it took. The first ``quiet_attempts`` retries of an outage wait ``uniform(0,
/// quiet_jitter)`` seconds (a fleet dropped together comes back spread over that window, shrunk to the time left
/// before the policy's ``deadline``; 0 retries immediately) and log at DEBUG; backed-off retries log WARNING with
/// ``retry_count``/``max_retry``/``error``/``delay_s``/``strategy`` in ``extra``; recovery logs INFO once, when the
/// link has been stable after an outage that logged a WARNING (a flapping link's handshakes stay at DEBUG). Giving up
/// logs ERROR and raises ``tether.GaveUp`` (``.attempts``, ``.last_error``, ``.reason``, ``.elapsed``) chained from
/// the last error. Exceptions in ``fatal`` are not retried. ``name`` is what the loop connects to, as its messages
/// name it ("failed to connect to {name}"); unnamed (None), they name no target. ``logger``: a logger name or
/// ``logging.Logger`` that receives this object's records instead of ``tether.reconnect`` (same ``extra`` fields; its
/// level joins the Rust-side filter).
#[pyclass(name = "Reconnector", module = "tether._native", frozen, subclass)]
pub struct PyReconnector {
    cfg: Config,
    fatal: Py<PyTuple>,
    /// Created by the first `events()`: until someone listens, events cost nothing (not even the buffer).
    tx: OnceLock<broadcast::Sender<Event>>,
    inner: Mutex<Inner>,
    /// Where its reports are counted (`tether.metrics`); None: not measured.
    metrics: Option<Arc<crate::metrics::Loop>>,
    /// Its `logger=`, kept while it lives.
    _logger: Option<LoggerRoute>,
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

fn now() -> Instant {
    Instant::now()
}

/// Events a listener may fall behind by before it loses some (it is told how many).
const EVENTS_CAPACITY: usize = 1024;

impl PyReconnector {
    /// The sink for this object's events: nowhere until `events()` was called once.
    fn sink(&self) -> Events {
        self.tx.get().map_or_else(Events::none, |tx| Events::new(tx.clone())).measured(self.metrics.clone())
    }

    /// " 'name'" in messages about this object, nothing when it is unnamed.
    fn shown(&self) -> String {
        self.name().map(|n| format!(" {n:?}")).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The step-wise methods that schedule retries belong to whoever drives the loop.
    fn check_not_running(&self, what: &str) -> PyResult<()> {
        if self.lock().running {
            return Err(PyRuntimeError::new_err(format!(
                "Reconnector{}: {what}() cannot be used while run() is driving the loop",
                self.shown()
            )));
        }
        Ok(())
    }

    /// One failure through the state machine: report it, return the delay or raise `tether.GaveUp`.
    fn fail(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let exc = match exc {
            None => None,
            Some(e) if e.is_none() => None,
            Some(e) if e.is_instance_of::<pyo3::exceptions::PyBaseException>() => Some(e.clone()),
            Some(e) => {
                return Err(PyTypeError::new_err(format!("exc must be an exception or None, not {}", type_name(e))))
            }
        };
        let fatal = match &exc {
            Some(e) => e.is_instance(self.fatal.bind(py))?,
            None => false,
        };
        let (text, loss) = match &exc {
            Some(e) => {
                let err = PyErr::from_value(e.clone());
                (describe(py, &err), loss_name(py, &err))
            }
            None => ("unspecified error".to_string(), String::new()),
        };
        let (decision, end_episode) = {
            let mut inner = self.lock();
            let d = inner.st.failed(now(), fatal);
            let gave_up = matches!(d, Decision::GiveUp { .. });
            let end = gave_up && !inner.running;
            inner.stepping = !inner.running && !gave_up;
            if end {
                inner.ended += 1;
            }
            (d, end)
        };
        report::failure_as(&self.cfg, &self.sink(), &decision, &text, &loss);
        match decision {
            Decision::Retry { delay, .. } => Ok(delay.as_secs_f64()),
            Decision::GiveUp { reason, attempts, elapsed, .. } => {
                if end_episode {
                    self.sink().emit(Event::Closed);
                }
                let g = crate::retry_state::GaveUp {
                    name: self.cfg.name.clone(),
                    attempts,
                    elapsed,
                    reason,
                    last_error: (),
                    last_error_text: text,
                };
                let kwargs = PyDict::new(py);
                kwargs.set_item("attempts", attempts)?;
                kwargs.set_item("last_error", exc.as_ref())?;
                kwargs.set_item("elapsed", elapsed.as_secs_f64())?;
                kwargs.set_item("reason", reason.as_str())?;
                kwargs.set_item("name", self.cfg.name.as_str())?;
                let err = Class::GaveUp.err(py, &g.message(), Some(&kwargs));
                err.set_cause(py, exc.map(PyErr::from_value));
                Err(err)
            }
        }
    }
}

#[pymethods]
impl PyReconnector {
    #[new]
    #[pyo3(signature = (policy=None, *, stable_after=None, quiet_attempts=None, quiet_jitter=None, fatal=None,
                        name=None, logger=None, attempt_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        policy: Option<Policy<param::Policy>>,
        stable_after: Option<SecondsOrZero<param::StableAfter>>,
        quiet_attempts: Option<Count<param::QuietAttempts>>,
        quiet_jitter: Option<SecondsOrZero<param::QuietJitter>>,
        fatal: Option<&Bound<'_, PyAny>>,
        name: Option<&str>,
        logger: Option<&Bound<'_, PyAny>>,
        attempt_timeout: Option<Seconds<param::AttemptTimeout>>,
    ) -> PyResult<Self> {
        let d = Config::default();
        if name == Some("") {
            return Err(super::errors::value_error("name must not be empty (None leaves it unnamed)"));
        }
        let logger = LoggerRoute::of(py, logger)?;
        let cfg = Config {
            // unnamed (None): the messages name no target
            name: name.map(redact_url).unwrap_or_default(),
            policy: policy.map_or(d.policy, |p| p.0),
            stable_after: stable_after.map_or(d.stable_after, |s| s.0),
            quiet_attempts: quiet_attempts.map_or(d.quiet_attempts, |n| n.0),
            quiet_jitter: quiet_jitter.map_or(d.quiet_jitter, |s| s.0),
            attempt_timeout: attempt_timeout.map(|s| s.0).or(d.attempt_timeout),
            logger: logger.as_ref().map(LoggerRoute::key),
            ..d
        };
        // an unnamed loop is measured under "reconnector": a metric series needs a name
        let metrics = crate::metrics::labels(&[("name", &redact_url(name.unwrap_or("reconnector")))])
            .map(crate::metrics::Loop::new);
        if let Some(m) = &metrics {
            // its state is the one its reports keep (a connection reports its own)
            crate::metrics::observe(Arc::downgrade(m) as std::sync::Weak<dyn crate::metrics::Source>);
        }
        let fatal = fatal_tuple(py, fatal)?.unbind();
        super::logging::sync(py);
        Ok(PyReconnector {
            tx: OnceLock::new(),
            fatal,
            inner: Mutex::new(Inner { st: RetryState::new(&cfg), running: false, stepping: false, ended: 0 }),
            cfg,
            metrics,
            _logger: logger,
        })
    }

    /// Step-wise: an attempt, or a live connection, failed with ``exc``; returns the seconds to wait before the next
    /// attempt and logs the retry. Raises ``tether.GaveUp`` (``__cause__`` = exc) when ``exc`` is fatal or the
    /// policy's attempts/deadline are exhausted; the state then starts over. RuntimeError while ``run()`` is running.
    #[pyo3(signature = (exc=None))]
    fn failed(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        self.check_not_running("failed")?;
        self.fail(py, exc)
    }

    /// ``await r.backoff(exc)`` = ``await asyncio.sleep(r.failed(exc))``; cancellable.
    #[pyo3(signature = (exc=None))]
    fn backoff<'py>(&self, py: Python<'py>, exc: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        self.check_not_running("backoff")?;
        let delay = self.fail(py, exc)?;
        py.import("asyncio")?.call_method1("sleep", (delay,))
    }

    /// This attempt succeeded: the stability clock starts. False if it was already marked.
    fn connected(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let me = slf.get();
        let up = {
            let mut inner = me.lock();
            let up = inner.st.connected(now());
            if up.is_some() && !inner.running {
                inner.stepping = true;
            }
            up
        };
        let Some(up) = up else { return Ok(false) };
        report::up(&me.cfg, &me.sink(), &up);
        // Report the recovery once the link is stable, if it still is then. Without a running loop
        // (a synchronous caller) the next step reports it instead.
        let asyncio = slf.py().import("asyncio")?;
        if let Ok(lp) = asyncio.call_method0("get_running_loop") {
            // a hair late rather than early: the loop's clock and Instant may differ by their resolution
            let wait = me.cfg.stable_after.as_secs_f64() + 0.001;
            lp.call_method1("call_later", (wait, slf.getattr("_settle")?))?;
        }
        Ok(true)
    }

    /// The connected period ended without an error; reports ``ConnectionLost("closed")``, logs nothing. A
    /// ``failed()`` after it counts as the loss of that connection.
    fn closed(&self) {
        let was_up = self.lock().st.closed(now());
        if was_up {
            report::closed(&self.sink());
        }
    }

    /// Retries since the last stable connection (0 = none).
    #[getter]
    fn attempt(&self) -> u32 {
        self.lock().st.attempt(now())
    }

    /// Events of the current run or step-wise episode (the step-wise form has no ``Connecting``), or, before the first
    /// one, of the next, from this call on (it subscribes now, not at the first ``__anext__``); ends when ``run``
    /// returns or the episode gives up. Taken after one ended and before the next began, it is already ended.
    fn events(&self) -> EventStream {
        let inner = self.lock();
        if !inner.running && !inner.stepping && inner.ended > 0 {
            return EventStream::ended();
        }
        let rx = self.tx.get_or_init(|| broadcast::channel(EVENTS_CAPACITY).0).subscribe();
        EventStream::new(rx, self.cfg.logger.clone())
    }

    fn _settle(&self) {
        let settled = self.lock().st.settle(now());
        if let Some(s) = settled {
            report::settled(&self.cfg, &s);
        }
    }

    // ---- the steps `Reconnector.run` (tether._reconnect) drives ----

    fn _begin_run(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut inner = self.lock();
            if inner.running {
                return Err(PyRuntimeError::new_err(format!("Reconnector{} is already running", self.shown())));
            }
            inner.running = true;
            inner.stepping = false;
            inner.st = RetryState::new(&self.cfg);
        }
        super::logging::sync(py);
        Ok(())
    }

    fn _end_run(&self) {
        let settled = {
            let mut inner = self.lock();
            inner.running = false;
            inner.ended += 1;
            // the link is no longer watched: stable by now, its recovery is told; else never (the
            // timer `connected()` set finds nothing to settle)
            let settled = inner.st.settle(now());
            inner.st = RetryState::new(&self.cfg);
            settled
        };
        if let Some(s) = settled {
            report::settled(&self.cfg, &s);
        }
        if let Some(m) = &self.metrics {
            m.ended();
        }
        self.sink().emit(Event::Closed);
    }

    /// Begin an attempt: (its number, seconds it has to connect or None).
    fn _start(&self) -> (u32, Option<f64>) {
        let begun = now();
        let s = self.lock().st.start(begun);
        report::started(&self.sink(), &s);
        (s.number, s.deadline.map(|d| d.saturating_duration_since(begun).as_secs_f64()))
    }

    /// Whether attempt `number` is still in flight without having called `connected()`.
    fn _stalled(&self, number: u32) -> bool {
        self.lock().st.stalled(number)
    }

    fn _failed(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<f64> {
        self.fail(py, Some(exc))
    }

    /// A cancelled `connect()` did not finish within the grace period: say so, it is no longer awaited.
    fn _abandoned(&self, number: u32, grace: f64) {
        let (name, logger) = (self.cfg.name.as_str(), self.cfg.logger.as_deref());
        let of = target("of", name);
        tracing::warn!(target: "tether::reconnect", logger, name, attempt = number, grace_s = grace,
            "connect(){of} (attempt {number}) did not finish within {grace}s of being cancelled; \
             it is no longer awaited");
    }

    /// What the loop connects to, as its messages name it (redacted); None when unnamed.
    #[getter]
    fn name(&self) -> Option<&str> {
        Some(self.cfg.name.as_str()).filter(|n| !n.is_empty())
    }
    /// The retry policy.
    #[getter]
    fn policy(&self) -> PyBackoff {
        PyBackoff { inner: self.cfg.policy.clone() }
    }
    /// Seconds a connection stays up after ``connected()`` before the retry counter resets.
    #[getter]
    fn stable_after(&self) -> f64 {
        self.cfg.stable_after.as_secs_f64()
    }
    /// Retries per outage that wait ``uniform(0, quiet_jitter)`` and log at DEBUG.
    #[getter]
    fn quiet_attempts(&self) -> u32 {
        self.cfg.quiet_attempts
    }
    /// The window, in seconds, of the quiet retries' random wait.
    #[getter]
    fn quiet_jitter(&self) -> f64 {
        self.cfg.quiet_jitter.as_secs_f64()
    }
    /// Seconds an attempt has to reach ``connected()``; None: no bound.
    #[getter]
    fn attempt_timeout(&self) -> Option<f64> {
        self.cfg.attempt_timeout.map(|t| t.as_secs_f64())
    }
    /// True while ``run()`` drives the loop.
    #[getter]
    fn running(&self) -> bool {
        self.lock().running
    }

    fn __repr__(&self) -> String {
        format!(
            "Reconnector(name={}, stable_after={}, quiet_attempts={}, quiet_jitter={})",
            self.name().map_or_else(|| "None".to_string(), |n| format!("{n:?}")),
            self.cfg.stable_after.as_secs_f64(),
            self.cfg.quiet_attempts,
            self.cfg.quiet_jitter.as_secs_f64()
        )
    }
}

/// The defaults `help(tether.Reconnector)` shows, from `Config::default()` (their one source).
fn show_defaults(cls: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = cls.py();
    let d = Config::default();
    let secs = |t: std::time::Duration| t.as_secs_f64().into_pyobject(py).map(|o| o.into_any());
    super::signature::show_defaults(
        cls,
        vec![
            ("policy", PyBackoff { inner: d.policy.clone() }.into_pyobject(py)?.into_any()),
            ("stable_after", secs(d.stable_after)?),
            ("quiet_attempts", d.quiet_attempts.into_pyobject(py)?.into_any()),
            ("quiet_jitter", secs(d.quiet_jitter)?),
            ("fatal", fatal_tuple(py, None)?.into_any()),
            ("attempt_timeout", d.attempt_timeout.map(|t| t.as_secs_f64()).into_pyobject(py)?),
        ],
    )
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReconnector>()?;
    show_defaults(&m.getattr("Reconnector")?)
}
