//! `tether.Watchdog` / `Liveness` bindings.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::watchdog::{Alarm, Timer, Watchdog};

use super::events::{Buffered, PyAlarm};
use super::logging::LoggerRoute;
use super::options::{param, Seconds};

fn alarm_to_py(py: Python<'_>, a: &Alarm) -> PyResult<Py<PyAny>> {
    PyAlarm::from(a).into_py_any(py)
}

/// Dwell deadlines per state, progress deadlines, liveness keys. Alarms (``tether.Alarm``) via
/// ``async for alarm in wd`` / ``wd.alarms()`` and the optional ``on_alarm`` callback (run on the loop that created the
/// watchdog, every alarm however many come at once; an ``async def`` one runs as a task). One alarm per entry into a
/// state / per silence; the next ``set_state``/``beat`` re-arms. Liveness keys are armed from creation.
///
/// Each alarm is reported once: without ``on_alarm``, by a WARNING record on ``tether.watchdog`` (or ``logger``); with
/// ``on_alarm``, by that callback, which replaces the WARNING as a custom exception handler replaces asyncio's default
/// report (the record is then DEBUG). Streams (``alarms()``) deliver every alarm either way, while their reader keeps
/// within 1,024 unread (beyond, a WARNING says how many it skipped).
#[pyclass(name = "Watchdog", module = "tether._native", frozen)]
pub struct PyWatchdog {
    inner: Arc<Watchdog>,
    /// Its `logger=`, kept while it lives.
    _logger: Option<LoggerRoute>,
}

/// A liveness (or progress) deadline: ``beat()`` on every frame (one clock read and one atomic store); silence past
/// its ``timeout`` raises an alarm.
#[pyclass(name = "Liveness", module = "tether._native", frozen)]
pub struct PyLiveness {
    timer: Arc<Timer>,
}

super::events::buffered_stream!(
    /// `async for alarm in wd`: ends when the watchdog closes.
    AlarmStream,
    Alarm,
    alarm_to_py
);

fn check_name(what: &str, v: &str) -> PyResult<()> {
    if v.is_empty() {
        return Err(super::errors::value_error(format!("{what} must not be empty")));
    }
    Ok(())
}

impl PyWatchdog {
    pub fn core(&self) -> Arc<Watchdog> {
        self.inner.clone()
    }
}

/// Runs `on_alarm(alarm)` on the loop; a coroutine it returns (an ``async def`` handler) runs as a task,
/// held until done.
#[pyclass(module = "tether._native", frozen)]
struct Deliver {
    cb: Py<PyAny>,
    tasks: Mutex<Vec<Py<PyAny>>>,
}

#[pymethods]
impl Deliver {
    fn __call__(&self, py: Python<'_>, alarm: Bound<'_, PyAny>) -> PyResult<()> {
        let r = self.cb.bind(py).call1((alarm,))?;
        if super::callables::is_awaitable(&r)? {
            let task = py.import("asyncio")?.call_method1("ensure_future", (r,))?;
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|t| !t.bind(py).call_method0("done").and_then(|d| d.is_truthy()).unwrap_or(true));
            tasks.push(task.unbind());
        }
        Ok(())
    }
}

#[pymethods]
impl PyWatchdog {
    /// `on_alarm(alarm)` (optional) is called on the event loop that created the watchdog.
    #[new]
    #[pyo3(signature = (name="watchdog", *, on_alarm=None, logger=None))]
    fn new(
        py: Python<'_>,
        name: &str,
        on_alarm: Option<Bound<'_, PyAny>>,
        logger: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let logger = LoggerRoute::of(py, logger)?;
        super::logging::sync(py);
        let rt = super::bridge::runtime::get();
        let inner = Arc::new(Watchdog::new_on(name, logger.as_ref().map(LoggerRoute::key), rt.handle()));
        if let Some(cb) = on_alarm.filter(|c| !c.is_none()) {
            if !cb.is_callable() {
                return Err(PyTypeError::new_err("on_alarm must be callable"));
            }
            let event_loop = py
                .import("asyncio")?
                .call_method0("get_running_loop")
                .map_err(|_| {
                    PyTypeError::new_err("Watchdog(on_alarm=...) must be created inside a running event loop")
                })?
                .unbind();
            let deliver = Py::new(py, Deliver { cb: cb.unbind(), tasks: Mutex::new(Vec::new()) })?;
            let mut rx = inner.handle_with();
            rt.spawn(async move {
                let mut batch = Vec::new();
                // every alarm, however many come at once: one hand-over to the loop per batch
                while rx.recv_many(&mut batch, 256).await > 0 {
                    if !super::python_alive() {
                        return;
                    }
                    let _ = super::with_python(|py| -> PyResult<()> {
                        for alarm in batch.drain(..) {
                            let a = alarm_to_py(py, &alarm)?;
                            event_loop.bind(py).call_method1("call_soon_threadsafe", (deliver.bind(py), a))?;
                        }
                        Ok(())
                    });
                    batch.clear();
                }
            });
        }
        Ok(PyWatchdog { inner, _logger: logger })
    }

    /// Alarm when `state` stays current longer than `timeout` seconds (once per entry).
    fn dwell(&self, state: &str, timeout: Seconds<param::Timeout>) -> PyResult<()> {
        check_name("state", state)?;
        self.inner.dwell(state, timeout.0);
        Ok(())
    }

    /// Enter ``state`` (re-entering the current state restarts its clock); its ``dwell`` limit, if any, counts from
    /// now.
    fn set_state(&self, state: &str) -> PyResult<()> {
        check_name("state", state)?;
        self.inner.set_state(state);
        Ok(())
    }

    /// (state, seconds in it) or None.
    #[getter]
    fn state(&self) -> Option<(String, f64)> {
        self.inner.state().map(|(s, d)| (s, d.as_secs_f64()))
    }

    /// A liveness key: no `beat()` for `timeout` seconds -> alarm. Armed from now.
    fn liveness(&self, key: &str, timeout: Seconds<param::Timeout>) -> PyResult<PyLiveness> {
        check_name("key", key)?;
        Ok(PyLiveness { timer: self.inner.liveness(key, timeout.0) })
    }

    /// A progress deadline: no `beat()`/`touch()` for `timeout` seconds -> alarm (kind "progress").
    fn progress(&self, key: &str, timeout: Seconds<param::Timeout>) -> PyResult<PyLiveness> {
        check_name("key", key)?;
        Ok(PyLiveness { timer: self.inner.progress(key, timeout.0) })
    }

    /// Stop watching a liveness/progress key.
    fn remove(&self, liveness: &Bound<'_, PyLiveness>) {
        self.inner.remove(&liveness.get().timer);
    }

    /// `async for alarm in wd.alarms()` (also `async for alarm in wd`): ends when the watchdog closes.
    fn alarms(&self) -> AlarmStream {
        let s = AlarmStream {
            inner: Buffered::new(self.inner.subscribe(), |_| false, "Watchdog alarms", self.inner.logger()),
        };
        if self.inner.is_closed() {
            s.inner.end_now();
        }
        s
    }

    fn __aiter__(&self) -> AlarmStream {
        self.alarms()
    }

    /// Stop watching (idempotent): alarm streams end after the alarms already raised.
    fn close(&self) {
        self.inner.close();
    }

    /// True once ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

impl Drop for PyWatchdog {
    fn drop(&mut self) {
        self.inner.close();
    }
}

#[pymethods]
impl PyLiveness {
    /// Record activity (a frame arrived). One clock read and one atomic store.
    fn beat(&self) {
        self.timer.beat();
    }
    /// Alias of `beat` for progress deadlines.
    fn touch(&self) {
        self.timer.beat();
    }
    /// Stop watching until the next `beat()`.
    fn pause(&self) {
        self.timer.pause();
    }
    /// The key it was created with; its alarms name it.
    #[getter]
    fn key(&self) -> &str {
        self.timer.key()
    }
    /// Seconds of silence that raise an alarm.
    #[getter]
    fn timeout(&self) -> f64 {
        self.timer.limit().as_secs_f64()
    }
    /// Seconds since the last beat (None while paused).
    #[getter]
    fn idle(&self) -> Option<f64> {
        self.timer.idle().map(|d| d.as_secs_f64())
    }
    /// True between an alarm and the next beat.
    #[getter]
    fn alarmed(&self) -> bool {
        self.timer.has_fired()
    }
    fn __repr__(&self) -> String {
        format!(
            "Liveness(key={:?}, timeout={}, idle={})",
            self.timer.key(),
            self.timer.limit().as_secs_f64(),
            self.idle().map_or_else(|| "None".to_string(), |s| s.to_string())
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyWatchdog>()?;
    m.add_class::<PyLiveness>()?;
    m.add_class::<AlarmStream>()
}
