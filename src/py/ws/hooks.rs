//! The application's callables of a loop-thread connection, run on its loop: `url_for` (sync or
//! async) and `on_connect`, called in the contextvars of the task that started the connection (an
//! awaitable they return runs as a task there), the `Handshake` channel `on_connect` talks through,
//! and the heartbeat's message factory and `is_reply` (plain functions, called directly; one that
//! takes longer than the heartbeat timeout blocked the loop, which is a heartbeat timeout too).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::ws::frame;
use crate::ws::protocol::Message;
use crate::ws::WsError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::super::callables::{is_awaitable, sync_result};
use super::super::convert::{describe, message_from_py, type_name};
use super::coroutine::{self, Slot};
use super::{Conn, Fx, Goodbye, Inner, Phase};

/// The Python side of a connection's options.
pub(crate) struct Hooks {
    pub url_for: Option<Py<PyAny>>,
    pub on_connect: Option<OnConnectSpec>,
    pub heartbeat: Option<BeatSpec>,
    /// Fed with the connection's states ("connecting", "connected", "reconnecting", "closing",
    /// "closed", "failed"); its alarms are forwarded into the connection's events.
    pub watchdog: Option<Arc<Watchdog>>,
}

/// What the hook is told about the attempt it runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeInfo {
    /// 1 for the first connect, then the attempt number within the current outage.
    pub attempt: u32,
    /// "connect" for the first connect, then the ladder rung of this attempt.
    pub strategy: Arc<str>,
    /// The connection was connected before (the application may resume its session).
    pub reconnect: bool,
}

/// `on_connect=` and `fatal=`, checked: the hook and the exception types that give up at once.
pub(crate) fn on_connect_spec(
    py: Python<'_>,
    on_connect: Option<&Bound<'_, PyAny>>,
    fatal: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<OnConnectSpec>> {
    let fatal = super::super::reconnect::fatal_tuple(py, fatal)?;
    let Some(f) = on_connect.filter(|f| !f.is_none()) else { return Ok(None) };
    if !f.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "on_connect must be an async function taking a tether.Handshake",
        ));
    }
    Ok(Some(OnConnectSpec { hook: f.clone().unbind(), fatal: fatal.unbind() }))
}

pub(crate) struct OnConnectSpec {
    /// Called with the attempt's `HandshakeChannel`; the Python front end hands the application's
    /// hook its `tether.Handshake` around it.
    pub hook: Py<PyAny>,
    /// `fatal=`: instances give up at once.
    pub fatal: Py<PyTuple>,
}

pub(crate) struct BeatSpec {
    pub interval: Duration,
    pub timeout: Duration,
    pub fixed: Option<Message>,
    pub factory: Py<PyAny>,
    pub is_reply: Option<Py<PyAny>>,
}

/// What calling an application's hook gave.
enum Called {
    /// It returned (or raised) at once.
    Now(PyResult<Py<PyAny>>),
    /// It returned an awaitable, running as this task, whose end goes to its done-callback.
    Task(Py<PyAny>),
}

/// `f(*args)` in a copy of the contextvars of the task that started the connection; an awaitable it
/// returns runs as a task in that same copy (a task copies the context current at its creation, and
/// `create_task` has no `context=` before 3.11), its end going to `done`. Err only when the
/// connection has no loop to run it on.
fn call_hook<'py>(
    py: Python<'py>,
    conn: &Arc<Conn>,
    f: &Bound<'py, PyAny>,
    args: Vec<Bound<'py, PyAny>>,
    done: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Called> {
    let el = conn.event_loop(py).ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no event loop"))?;
    let ctx = conn.context(py).ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no context"))?;
    let ctx = ctx.call_method0("copy")?;
    let run = ctx.getattr("run")?;
    let called = PyTuple::new(py, [vec![f.clone()], args].concat())?;
    let called = (|| -> PyResult<Called> {
        let result = run.call1(called)?;
        if !is_awaitable(&result)? {
            return Ok(Called::Now(Ok(result.unbind())));
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item("loop", el)?;
        let ensure_future = py.import("asyncio")?.getattr("ensure_future")?;
        let task = run.call((ensure_future, result), Some(&kwargs))?;
        task.call_method1("add_done_callback", (done()?,))?;
        Ok(Called::Task(task.unbind()))
    })();
    // what the hook raised, or asyncio's refusal of what it returned, is the hook's failure
    Ok(called.unwrap_or_else(|e| Called::Now(Err(e))))
}

/// Keep `task` as the attempt's (cancelled when the attempt ends), or cancel it if the operation `id`
/// is over already.
fn adopt(py: Python<'_>, conn: &Arc<Conn>, id: u64, task: Py<PyAny>, current: impl Fn(&Inner) -> bool) {
    let mut st = conn.lock(py);
    if current(&st) {
        if let Some(a) = st.attempt.as_mut() {
            a.task = Some(task);
            return;
        }
    }
    drop(st);
    let _ = task.bind(py).call_method0("cancel");
    let _ = id;
}

impl Conn {
    pub(super) fn start_url_for(self: &Arc<Self>, py: Python<'_>, id: u64, strategy: &str, attempt: u32) {
        let conn = self;
        let Some(f) = &conn.hooks.url_for else { return };
        let args = (|| -> PyResult<_> {
            Ok(vec![strategy.into_pyobject(py)?.into_any(), attempt.into_pyobject(py)?.into_any()])
        })();
        let done = || Ok(Bound::new(py, TaskDone { conn: Arc::downgrade(conn), id, kind: Kind::UrlFor })?.into_any());
        match args.and_then(|args| call_hook(py, conn, f.bind(py), args, done)) {
            Ok(Called::Now(result)) => url_for_done(py, conn, id, result),
            Ok(Called::Task(task)) => adopt(py, conn, id, task, |st| st.phase == Phase::Target && st.next_id == id),
            Err(e) => {
                let err = WsError::fatal(format!("could not schedule url_for on the event loop: {}", describe(py, &e)));
                conn.with(py, |c, st, fx| c.end_attempt(py, st, fx, err, Goodbye::Abort));
            }
        }
    }
}

impl Conn {
    pub(super) fn start_on_connect(self: &Arc<Self>, py: Python<'_>, id: u64, info: HandshakeInfo) {
        let conn = self;
        let Some(spec) = &conn.hooks.on_connect else { return };
        let channel = Py::new(py, LoopHandshake { conn: Arc::downgrade(conn), id, info })
            .map(|c| vec![c.into_bound(py).into_any()]);
        let done =
            || Ok(Bound::new(py, TaskDone { conn: Arc::downgrade(conn), id, kind: Kind::OnConnect })?.into_any());
        match channel.and_then(|args| call_hook(py, conn, spec.hook.bind(py), args, done)) {
            Ok(Called::Now(Ok(value))) => {
                // a plain function: every attempt would repeat the mistake, so it is not retried
                let returned = type_name(value.bind(py));
                let misuse = WsError::fatal(format!("on_connect must be an async function; it returned {returned}"));
                on_connect_done(py, conn, id, Err(misuse));
            }
            Ok(Called::Now(Err(e))) => on_connect_done(py, conn, id, Err(on_connect_error(py, conn, &e, false))),
            Ok(Called::Task(task)) => adopt(py, conn, id, task, |st| st.hs.as_ref().is_some_and(|hs| hs.id == id)),
            Err(e) => {
                let err =
                    WsError::fatal(format!("could not schedule on_connect on the event loop: {}", describe(py, &e)));
                conn.with(py, |c, st, fx| c.end_attempt(py, st, fx, err, Goodbye::Abort));
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    UrlFor,
    OnConnect,
}

/// Done-callback of a `url_for` or `on_connect` task.
#[pyclass(module = "tether._native", frozen)]
struct TaskDone {
    conn: Weak<Conn>,
    id: u64,
    kind: Kind,
}

#[pymethods]
impl TaskDone {
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) {
        let Some(c) = self.conn.upgrade() else { return };
        let cancelled = task.call_method0("cancelled").and_then(|b| b.is_truthy()).unwrap_or(true);
        let result: PyResult<Py<PyAny>> = if cancelled {
            Err(pyo3::exceptions::asyncio::CancelledError::new_err(()))
        } else {
            match task.call_method0("exception") {
                Ok(e) if e.is_none() => task.call_method0("result").map(Bound::unbind),
                Ok(e) => Err(PyErr::from_value(e)),
                Err(e) => Err(e),
            }
        };
        match self.kind {
            Kind::UrlFor => url_for_done(py, &c, self.id, result),
            Kind::OnConnect => {
                // asyncio counts the cancel() calls of a task (3.11+): a task that ended cancelled
                // without one raised CancelledError itself; on 3.10 that cannot be told
                let task_cancel = cancelled
                    && !task.call_method0("cancelling").and_then(|n| n.extract::<u64>()).is_ok_and(|n| n == 0);
                let result = result.map(drop).map_err(|e| on_connect_error(py, &c, &e, task_cancel));
                on_connect_done(py, &c, self.id, result)
            }
        }
    }
}

fn url_for_done(py: Python<'_>, conn: &Arc<Conn>, id: u64, result: PyResult<Py<PyAny>>) {
    // parsed before the lock: it calls into Python
    let target = match result {
        Ok(obj) => super::super::connection::parse_target(obj.bind(py)),
        Err(e) => Err(WsError::retry(format!("url_for raised {}", describe(py, &e)))),
    };
    conn.with(py, |c, st, fx| {
        if st.phase != Phase::Target || st.next_id != id {
            return; // the attempt ended meanwhile
        }
        match target {
            Ok((url, headers)) => c.target(py, st, fx, url, headers),
            Err(e) => c.end_attempt(py, st, fx, e, Goodbye::Abort),
        }
    });
}

/// What `on_connect` raising `e` means for the connection: give up or retry. `task_cancel`: its task
/// ended by a `cancel()` (or may have: Python 3.10 does not count them).
fn on_connect_error(py: Python<'_>, conn: &Conn, e: &PyErr, task_cancel: bool) -> WsError {
    let text = format!("on_connect raised {}", describe(py, e));
    // KeyboardInterrupt & co. (not Exceptions) and a cancel() of the hook's task mean the loop is going
    // away; a CancelledError the hook raised itself (it awaited a future something else cancelled) is a
    // failure like any other
    let control_flow = if e.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py) {
        task_cancel
    } else {
        !e.is_instance_of::<pyo3::exceptions::PyException>(py)
    };
    let fatal =
        conn.hooks.on_connect.as_ref().is_some_and(|s| e.value(py).is_instance(s.fatal.bind(py)).unwrap_or(false));
    if control_flow || fatal {
        WsError::fatal(text)
    } else {
        WsError::retry(text)
    }
}

fn on_connect_done(py: Python<'_>, conn: &Arc<Conn>, id: u64, result: Result<(), WsError>) {
    let failed = result.err();
    conn.with(py, |c, st, fx| {
        if st.phase != Phase::Hook || !st.hs.as_ref().is_some_and(|hs| hs.id == id) {
            return;
        }
        let pending = st.hs.as_mut().and_then(|hs| hs.pending_end.take());
        // the hook's own time, whatever the server sent behind what it read
        if let (None, Some(m), Some(began)) = (&failed, &c.metrics, st.hs.as_ref().and_then(|hs| hs.began)) {
            m.on_connect(began.elapsed());
        }
        match (failed, pending) {
            (None, None) => c.after_hook(py, st, fx, Instant::now()),
            // connected, with what the hook left queued; then the end the server had sent behind it
            (None, Some((err, goodbye))) => {
                c.after_hook(py, st, fx, Instant::now());
                if st.phase == Phase::Live {
                    c.end_attempt(py, st, fx, err, goodbye);
                } else {
                    c.end_read(py, st, fx, err, goodbye);
                }
            }
            (Some(e), _) => c.end_attempt(py, st, fx, e, Goodbye::Abort),
        }
    });
}

/// The native side of `tether.Handshake` on a loop-thread connection: `on_connect`'s handle on the
/// socket while it runs. `send` writes at once, ahead of every queued message; `recv` takes the next
/// message read since the upgrade.
#[pyclass(name = "HandshakeChannel", module = "tether._native", frozen)]
pub(crate) struct LoopHandshake {
    conn: Weak<Conn>,
    id: u64,
    info: HandshakeInfo,
}

impl LoopHandshake {
    fn conn(&self) -> Result<Arc<Conn>, String> {
        self.conn.upgrade().ok_or_else(|| "the connection is gone".to_string())
    }
}

fn closed(py: Python<'_>, text: &str) -> PyErr {
    super::super::errors::Class::ConnectionClosed.err(py, text, None)
}

#[pymethods]
impl LoopHandshake {
    #[getter]
    fn attempt(&self) -> u32 {
        self.info.attempt
    }

    #[getter]
    fn strategy(&self) -> &str {
        &self.info.strategy
    }

    #[getter]
    fn reconnect(&self) -> bool {
        self.info.reconnect
    }

    /// Write `data` (str -> text, bytes-like -> binary) now; resolves at once (it was written).
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let msg = message_from_py(data)?;
        let conn = self.conn().map_err(|e| closed(py, &e))?;
        let id = self.id;
        let written = conn.with(py, |c, st, fx| -> Result<(), String> {
            let hs = st.hs.as_ref().filter(|hs| hs.id == id).ok_or("the on_connect handshake is over")?;
            if let Some(e) = &hs.ended {
                return Err(e.clone());
            }
            let (op, payload): (u8, &[u8]) = match &msg {
                Message::Text(t) => (frame::OP_TEXT, t),
                Message::Binary(b) => (frame::OP_BINARY, b),
                Message::Ping(_) => return Ok(()),
            };
            let Some(link) = st.link.as_mut() else { return Err("the on_connect handshake is over".into()) };
            let mut out = std::mem::take(&mut st.out);
            let r = link.wire.frame(op, payload, &mut out);
            st.out = out;
            r.map_err(|e| format!("write error during on_connect: {}", e.text))?;
            c.flush_out(py, st, fx, Instant::now());
            Ok(())
        });
        match written {
            Ok(()) => coroutine::resolved(py, "HandshakeChannel.send", true, Ok(py.None())),
            Err(e) => Err(closed(py, &e)),
        }
    }

    /// A message read for the hook, or None; raises ConnectionClosed once the handshake is over.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let conn = self.conn().map_err(|e| closed(py, &e))?;
        let mut st = conn.lock(py);
        let Some(hs) = st.hs.as_mut().filter(|hs| hs.id == self.id) else {
            return Err(closed(py, "the on_connect handshake is over"));
        };
        if let Some((m, _)) = hs.queue.pop_front() {
            return Ok(Some(m));
        }
        match &hs.ended {
            Some(e) => Err(closed(py, e)),
            None => Ok(None),
        }
    }

    /// Resolves once `try_recv` has something to return.
    fn wait_readable<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let name = "HandshakeChannel.wait_readable";
        let Ok(conn) = self.conn() else { return coroutine::resolved(py, name, false, Ok(py.None())) };
        let id = self.id;
        let slot = conn.with(py, |c, st, fx| {
            let hs = st.hs.as_mut().filter(|hs| hs.id == id)?;
            if !hs.queue.is_empty() || hs.ended.is_some() {
                return None;
            }
            if let Some((err, goodbye)) = hs.pending_end.take() {
                // it took every message read before the end: now it meets the end
                c.end_attempt(py, st, fx, err, goodbye);
                return None;
            }
            let slot = Slot::new();
            hs.readable.push(slot.clone());
            Some(slot)
        });
        match slot {
            Some(slot) => coroutine::on_slot(py, name, false, slot, conn.hint(py)),
            None => coroutine::resolved(py, name, false, Ok(py.None())),
        }
    }

    fn __repr__(&self) -> String {
        let i = &self.info;
        format!("Handshake(attempt={}, strategy={:?}, reconnect={})", i.attempt, &*i.strategy, i.reconnect)
    }
}

/// A heartbeat is due: its message (fixed, or from the factory, called here on the loop), written
/// outside the delivery queue.
impl Conn {
    pub(super) fn send_heartbeat(&self, py: Python<'_>, st: &mut Inner, fx: &mut Fx) {
        let Some(spec) = &self.hooks.heartbeat else { return };
        match &spec.fixed {
            Some(m) => self.write_heartbeat(py, st, fx, m),
            None => {
                let id = st.link.as_ref().map(|l| l.id);
                fx.later(move |py, c| heartbeat_from_factory(py, c, id));
            }
        }
    }

    fn write_heartbeat(&self, py: Python<'_>, st: &mut Inner, fx: &mut Fx, m: &Message) {
        let (op, payload): (u8, &[u8]) = match m {
            Message::Text(t) => (frame::OP_TEXT, t),
            Message::Binary(b) => (frame::OP_BINARY, b),
            Message::Ping(_) => return,
        };
        let Some(link) = st.link.as_mut() else { return };
        let mut out = std::mem::take(&mut st.out);
        let _ = link.wire.frame(op, payload, &mut out);
        st.out = out;
        self.flush_out(py, st, fx, Instant::now());
    }
}

/// A call into the application's heartbeat callable: its result, or the loss it means (it raised,
/// returned something unusable, or blocked the loop longer than the heartbeat timeout).
fn timed<T>(spec: &BeatSpec, what: &str, call: impl FnOnce() -> Result<T, WsError>) -> Result<T, WsError> {
    let t0 = Instant::now();
    let r = call();
    if t0.elapsed() > spec.timeout {
        return Err(WsError::retry(format!(
            "{} {what} did not return within {:.3}s (is the event loop blocked?)",
            crate::ws::heartbeat::HEARTBEAT_TIMEOUT,
            spec.timeout.as_secs_f64()
        )));
    }
    r
}

fn heartbeat_from_factory(py: Python<'_>, conn: &Arc<Conn>, id: Option<u64>) {
    let Some(spec) = &conn.hooks.heartbeat else { return };
    let what = "the heartbeat message factory";
    let msg = timed(spec, what, || {
        let obj = spec
            .factory
            .bind(py)
            .call0()
            .and_then(|r| sync_result(r, what))
            .map_err(|e| WsError::fatal(format!("heartbeat message factory raised {}", describe(py, &e))))?;
        message_from_py(&obj).map_err(|e| {
            WsError::fatal(format!("heartbeat message factory returned an unusable message: {}", describe(py, &e)))
        })
    });
    conn.with(py, |c, st, fx| {
        if st.phase != Phase::Live || st.link.as_ref().map(|l| l.id) != id || st.close_requested {
            return;
        }
        match &msg {
            Ok(m) => c.write_heartbeat(py, st, fx, m),
            Err(e) => c.end_attempt(py, st, fx, e.clone(), Goodbye::Abort),
        }
    });
}

impl Conn {
    /// `is_reply` over the messages received since the heartbeat went out.
    pub(super) fn check_replies(self: &Arc<Self>, py: Python<'_>, batch: Vec<Py<PyAny>>) {
        let conn = self;
        let Some(spec) = &conn.hooks.heartbeat else { return };
        let Some(is_reply) = &spec.is_reply else { return };
        let answered = timed(spec, "is_reply", || {
            let is_reply = is_reply.bind(py);
            // one reply is enough: the rest of the batch is not asked about
            let any = || -> PyResult<bool> {
                for m in &batch {
                    if sync_result(is_reply.call1((m,))?, "is_reply")?.is_truthy()? {
                        return Ok(true);
                    }
                }
                Ok(false)
            };
            any().map_err(|e| WsError::fatal(format!("heartbeat is_reply raised {}", describe(py, &e))))
        });
        conn.with(py, |c, st, fx| {
            if st.phase != Phase::Live {
                return;
            }
            match answered {
                Ok(true) => {
                    if let Some(hb) = st.hb.as_mut() {
                        hb.answered(Instant::now());
                    }
                }
                Ok(false) => {}
                Err(e) => c.end_attempt(py, st, fx, e, Goodbye::Abort),
            }
        });
    }
}
