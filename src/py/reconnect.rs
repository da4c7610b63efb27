//! `tether.Reconnector`: the retry state machine (`crate::retry_state`) driven from Python.
//!
//! Two forms share one state machine and one reporting path (`crate::reconnect::report`):
//! * step-wise, for loops that mix policy and connection body: `failed(exc)` / `backoff(exc)` /
//!   `connected()` / `closed()` / `attempt`;
//! * `run(connect)`: the coroutine `tether._reconnect.run`, built from the same steps on the caller's
//!   event loop, so `connect()` runs as a plain asyncio task (no thread hop, cancellation is asyncio's).
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

use super::args::Arg;
use super::backoff::PyBackoff;
use super::convert::describe;
use super::errors::Class;
use super::events::EventStream;

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
#[pyclass(name = "Reconnector", module = "tether._native", frozen)]
pub struct PyReconnector {
    cfg: Config,
    fatal: Py<PyTuple>,
    /// Created by the first `events()`: until someone listens, events cost nothing (not even the buffer).
    tx: OnceLock<broadcast::Sender<Event>>,
    inner: Mutex<Inner>,
    /// Where its reports are counted (`tether.metrics`); None: not measured.
    metrics: Option<Arc<crate::metrics::Loop>>,
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
                return Err(PyTypeError::new_err(format!(
                    "exc must be an exception or None, not {}",
                    e.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                )))
            }
        };
        let fatal = match &exc {
            Some(e) => e.is_instance(self.fatal.bind(py))?,
            None => false,
        };
        let text = match &exc {
            Some(e) => describe(py, &PyErr::from_value(e.clone())),
            None => "unspecified error".to_string(),
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
        report::failure(&self.cfg, &self.sink(), &decision, &text);
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
        policy: Option<&Bound<'_, PyAny>>,
        stable_after: Option<&Bound<'_, PyAny>>,
        quiet_attempts: Option<&Bound<'_, PyAny>>,
        quiet_jitter: Option<&Bound<'_, PyAny>>,
        fatal: Option<&Bound<'_, PyAny>>,
        name: Option<&str>,
        logger: Option<&Bound<'_, PyAny>>,
        attempt_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let d = Config::default();
        let policy = Arg::new("policy", policy).policy(&d.policy)?;
        if name == Some("") {
            return Err(super::errors::value_error("name must not be empty (None leaves it unnamed)"));
        }
        let cfg = Config {
            // unnamed (None): the messages name no target
            name: name.map(redact_url).unwrap_or_default(),
            policy,
            stable_after: Arg::new("stable_after", stable_after).seconds_or_zero(d.stable_after)?,
            quiet_attempts: Arg::new("quiet_attempts", quiet_attempts).count(d.quiet_attempts)?,
            quiet_jitter: Arg::new("quiet_jitter", quiet_jitter).seconds_or_zero(d.quiet_jitter)?,
            attempt_timeout: Arg::new("attempt_timeout", attempt_timeout).opt_seconds()?.or(d.attempt_timeout),
            logger: super::logging::logger_key(py, logger)?,
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
        })
    }

    /// The constructor's signature with the defaults that take effect (`Config::default()`), for
    /// `help()`; the binding's own takes None for each, so that None also means "the default".
    #[classattr]
    #[pyo3(name = "__signature__")]
    fn signature(py: Python<'_>) -> PyResult<Py<PyAny>> {
        use super::signature::Kind::{KeywordOnly as K, PositionalOrKeyword as P};
        let d = Config::default();
        let secs = |t: std::time::Duration| t.as_secs_f64().into_pyobject(py).map(|o| o.into_any());
        super::signature::signature(
            py,
            vec![
                ("policy", P, PyBackoff { inner: d.policy.clone() }.into_pyobject(py)?.into_any()),
                ("stable_after", K, secs(d.stable_after)?),
                ("quiet_attempts", K, d.quiet_attempts.into_pyobject(py)?.into_any()),
                ("quiet_jitter", K, secs(d.quiet_jitter)?),
                ("fatal", K, fatal_tuple(py, None)?.into_any()),
                ("name", K, py.None().into_bound(py)),
                ("logger", K, py.None().into_bound(py)),
                ("attempt_timeout", K, d.attempt_timeout.map(|t| t.as_secs_f64()).into_pyobject(py)?.into_any()),
            ],
        )
    }

    /// ``await r.run(connect)``: call ``connect()`` until it returns (its value is returned); each call is one
    /// attempt, raising means it failed or the connection was lost. Call ``r.connected()`` inside once the handshake
    /// succeeded. ``attempt_timeout``: an attempt that has not called ``connected()`` within it is cancelled at that
    /// moment and counts as a failure (``tether.TimeoutError``). Cancelling ``run`` cancels ``connect`` and returns
    /// once it has finished its cleanup (at most ``tether._reconnect.CANCEL_GRACE`` = 5 s later, then it is abandoned
    /// with a WARNING). RuntimeError if already running; TypeError if connect is not callable.
    fn run<'py>(slf: &Bound<'py, Self>, connect: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !connect.is_callable() {
            return Err(PyTypeError::new_err("connect must be an async callable (a coroutine function)"));
        }
        slf.py().import("tether._reconnect")?.getattr("run")?.call1((slf, connect))
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

    /// Events of the current (or next) run or step-wise episode (the step-wise form has no ``Connecting``), from this
    /// call on (it subscribes now, not at the first ``__anext__``); ends when ``run`` returns or the episode gives
    /// up.
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

    // ---- the steps `tether._reconnect.run` drives ----

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
        {
            let mut inner = self.lock();
            inner.running = false;
            inner.ended += 1;
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
