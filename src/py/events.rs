//! The `tether.events` classes and `tether.Alarm`, made from core events, and the async iterator behind
//! every `events()`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::IntoPyObjectExt;
use pyo3::PyClass;
use tokio::sync::{broadcast, Mutex};

use super::bridge::coroutine::Take;
use super::record::record;
use crate::reconnect::Event;
use crate::watchdog::Alarm;

record! {
    /// Attempt number ``attempt`` (from 1, counting the outage's retries) starts, on the ladder rung
    /// ``strategy`` ("connect" for the first connection ever).
    PyConnecting as "Connecting" in "tether.events" {
        /// The attempt's number, from 1.
        attempt: u32,
        /// The ladder rung it uses ("connect" for the first connection ever).
        strategy: String,
    }
}

record! {
    /// Attempt number ``attempt`` succeeded (for ``tether.connect``: the handshake and ``on_connect``).
    PyConnected as "Connected" in "tether.events" {
        /// The number of the attempt that succeeded.
        attempt: u32,
    }
}

record! {
    /// Reported exactly once per loss of an established connection. ``reason`` is redacted.
    PyConnectionLost as "ConnectionLost" in "tether.events" {
        /// Why it was lost (redacted).
        reason: String,
    }
}

record! {
    /// Attempt number ``attempt`` will start after ``delay`` seconds (the backoff), on the rung ``strategy``.
    PyReconnecting as "Reconnecting" in "tether.events" {
        /// The number of the attempt to come.
        attempt: u32,
        /// Seconds until it starts.
        delay: f64,
        /// The ladder rung it will use.
        strategy: String,
    }
}

record! {
    /// Connected again after a loss: ``downtime`` seconds since the loss, in ``attempts`` attempts.
    PyReconnected as "Reconnected" in "tether.events" {
        /// Seconds since the loss.
        downtime: f64,
        /// Attempts it took.
        attempts: u32,
    }
}

record! {
    /// The loop stopped retrying after ``attempts`` attempts; ``error`` is the last failure (redacted). The
    /// awaiting call raises the exception ``tether.GaveUp``.
    PyGaveUp as "GaveUp" in "tether.events" {
        /// The last failure (redacted).
        error: String,
        /// Attempts made.
        attempts: u32,
    }
}

record! {
    /// Internal end-of-stream marker; iteration stops on it (it is never yielded).
    PyClosed as "Closed" in "tether.events" {}
}

// here rather than beside the watchdog: a connection reports the alarms of its watchdog among its events
record! {
    /// ``kind`` is "dwell", "progress" or "liveness"; ``name`` the state or key; seconds elapsed/limit.
    PyAlarm as "Alarm" in "tether" {
        /// "dwell", "progress" or "liveness".
        kind: String,
        /// The state (dwell) or key (progress, liveness) that stalled.
        name: String,
        /// Seconds in the state, or of silence, when it fired.
        elapsed: f64,
        /// The limit it passed, in seconds.
        limit: f64,
        /// What happened, in words.
        message: String,
    }
}

impl From<&Alarm> for PyAlarm {
    fn from(a: &Alarm) -> Self {
        PyAlarm {
            kind: a.kind.as_str().to_string(),
            name: a.name.clone(),
            elapsed: a.elapsed.as_secs_f64(),
            limit: a.limit.as_secs_f64(),
            message: a.message.clone(),
        }
    }
}

pub fn to_py(py: Python<'_>, ev: &Event) -> PyResult<Py<PyAny>> {
    match ev {
        Event::Connecting { attempt, strategy } => {
            PyConnecting { attempt: *attempt, strategy: strategy.to_string() }.into_py_any(py)
        }
        Event::Connected { attempt } => PyConnected { attempt: *attempt }.into_py_any(py),
        Event::ConnectionLost { reason } => PyConnectionLost { reason: reason.clone() }.into_py_any(py),
        Event::Reconnecting { attempt, delay, strategy } => {
            PyReconnecting { attempt: *attempt, delay: delay.as_secs_f64(), strategy: strategy.to_string() }
                .into_py_any(py)
        }
        Event::Reconnected { downtime, attempts } => {
            PyReconnected { downtime: downtime.as_secs_f64(), attempts: *attempts }.into_py_any(py)
        }
        Event::GaveUp { error, attempts } => PyGaveUp { error: error.clone(), attempts: *attempts }.into_py_any(py),
        Event::Alarm(a) => PyAlarm::from(a).into_py_any(py),
        Event::Closed => PyClosed {}.into_py_any(py),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EventStream>()?;
    m.add_class::<PyConnecting>()?;
    m.add_class::<PyConnected>()?;
    m.add_class::<PyConnectionLost>()?;
    m.add_class::<PyReconnecting>()?;
    m.add_class::<PyReconnected>()?;
    // under another name: `_native.GaveUp` is the exception the awaiting call raises
    m.add("GaveUpEvent", m.py().get_type::<PyGaveUp>())?;
    m.add_class::<PyClosed>()?;
    m.add_class::<PyAlarm>()
}

/// A broadcast receiver made cancellation-safe for Python: `wait()` moves the next item into a buffer
/// (within one poll, so it is never lost half way) and `pop()` hands it over on the loop thread.
pub struct Buffered<T> {
    rx: Arc<Mutex<Option<broadcast::Receiver<T>>>>,
    buffer: Arc<std::sync::Mutex<VecDeque<T>>>,
    ended: Arc<AtomicBool>,
    is_end: fn(&T) -> bool,
    what: &'static str,
    /// The `logger=` key of the object the stream belongs to: its "fell behind" warning goes there.
    logger: Option<Arc<str>>,
}

impl<T: Clone + Send + 'static> Buffered<T> {
    pub fn new(
        rx: broadcast::Receiver<T>,
        is_end: fn(&T) -> bool,
        what: &'static str,
        logger: Option<Arc<str>>,
    ) -> Self {
        Buffered {
            rx: Arc::new(Mutex::new(Some(rx))),
            buffer: Arc::new(std::sync::Mutex::new(VecDeque::new())),
            ended: Arc::new(AtomicBool::new(false)),
            is_end,
            what,
            logger,
        }
    }

    pub fn end_now(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Next item, taken from the buffer or else straight from the channel when no `wait()` holds it;
    /// Err(()) once the stream ended and nothing is left.
    pub fn pop(&self) -> Result<Option<T>, ()> {
        if let Some(x) = self.buffer.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            return Ok(Some(x));
        }
        if self.ended.load(Ordering::SeqCst) {
            return Err(());
        }
        // a pending `wait()` owns the receiver and will buffer the next item itself
        let Ok(mut guard) = self.rx.try_lock() else { return Ok(None) };
        loop {
            let Some(r) = guard.as_mut() else {
                self.ended.store(true, Ordering::SeqCst);
                return Err(());
            };
            match r.try_recv() {
                Ok(x) if (self.is_end)(&x) => {}
                Ok(x) => return Ok(Some(x)),
                Err(broadcast::error::TryRecvError::Empty) => return Ok(None),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    tracing::warn!(target: "tether::events", logger = self.logger.as_deref(), dropped = n,
                        "{} consumer fell behind; {n} were dropped", self.what);
                    continue;
                }
                Err(broadcast::error::TryRecvError::Closed) => {}
            }
            *guard = None;
            self.ended.store(true, Ordering::SeqCst);
            return Err(());
        }
    }

    /// Resolves once `pop` has something to return.
    pub fn wait(&self) -> impl std::future::Future<Output = PyResult<()>> + Send + 'static {
        let (rx, buffer, ended, is_end, what, logger) =
            (self.rx.clone(), self.buffer.clone(), self.ended.clone(), self.is_end, self.what, self.logger.clone());
        async move {
            if !buffer.lock().unwrap_or_else(|p| p.into_inner()).is_empty() || ended.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut guard = rx.lock().await;
            loop {
                let Some(r) = guard.as_mut() else {
                    ended.store(true, Ordering::SeqCst);
                    return Ok(());
                };
                match r.recv().await {
                    Ok(x) if is_end(&x) => {}
                    Ok(x) => {
                        buffer.lock().unwrap_or_else(|p| p.into_inner()).push_back(x);
                        return Ok(());
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(target: "tether::events", logger = logger.as_deref(), dropped = n,
                            "{what} consumer fell behind; {n} were dropped");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => {}
                }
                *guard = None;
                ended.store(true, Ordering::SeqCst);
                return Ok(());
            }
        }
    }
}

/// `__anext__` of the event streams, as a coroutine (`name`): it takes the next event with `try_next` on
/// the loop thread, else awaits the stream's `wait()`, which consumes nothing, and takes again. So an
/// iteration cancelled while it waits has taken no event.
pub fn anext<'py, S>(
    slf: Bound<'py, S>,
    name: &'static str,
    try_next: fn(&S, Python<'_>) -> PyResult<Option<Py<PyAny>>>,
    wait: for<'a> fn(&S, Python<'a>) -> PyResult<Bound<'a, PyAny>>,
) -> PyResult<Bound<'py, PyAny>>
where
    S: PyClass<Frozen = True> + Sync + Unpin,
{
    let py = slf.py();
    let stream = slf.unbind();
    super::bridge::coroutine::taking(py, name, move |py| {
        let s = stream.get();
        Ok(match try_next(s, py)? {
            Some(ev) => Take::Ready(ev),
            None => Take::Wait(wait(s, py)?),
        })
    })
}

/// Defines a cancellation-safe Python async iterator over a `Buffered<$item>`: `__anext__` is `anext`,
/// `try_next()` converts with `$to_py`, `wait()` waits without consuming.
macro_rules! buffered_stream {
    ($(#[$meta:meta])* $name:ident, $item:ty, $to_py:path) => {
        $(#[$meta])*
        #[pyclass(module = "tether._native", frozen)]
        pub struct $name {
            pub(crate) inner: $crate::py::events::Buffered<$item>,
        }

        #[pymethods]
        impl $name {
            fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
                slf
            }

            fn __anext__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
                $crate::py::events::anext(slf, concat!(stringify!($name), ".__anext__"), Self::try_next, Self::wait)
            }

            /// The next buffered item, None if there is none yet; StopAsyncIteration once it ended.
            fn try_next(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
                match self.inner.pop() {
                    Ok(Some(x)) => $to_py(py, &x).map(Some),
                    Ok(None) => Ok(None),
                    Err(()) => Err(pyo3::exceptions::PyStopAsyncIteration::new_err(())),
                }
            }

            /// Resolves once `try_next` has something to return.
            fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                $crate::py::bridge::coroutine::coroutine(py, concat!(stringify!($name), ".wait"), self.inner.wait())
            }
        }
    };
}
pub(crate) use buffered_stream;

/// The events emitted after the ``events()`` call that made it returned (it subscribes at that call, not at the
/// first ``__anext__``), in order; none from before. Cancellation-safe: an iteration cancelled while waiting
/// loses no event.
#[pyclass(module = "tether._native", frozen)]
pub struct EventStream {
    source: Source,
}

enum Source {
    /// Events of tokio-driven objects (Reconnector, ProcPool), through a broadcast channel.
    Tokio(Buffered<Event>),
    /// Events of a connection that runs on the event loop, delivered there without a thread hop.
    Loop(Arc<LoopSub>),
}

#[pymethods]
impl EventStream {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        anext(slf, "EventStream.__anext__", Self::try_next, Self::wait)
    }

    /// The next buffered item, None if there is none yet; StopAsyncIteration once it ended.
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let next = match &self.source {
            Source::Tokio(b) => b.pop(),
            Source::Loop(sub) => sub.pop(),
        };
        match next {
            Ok(Some(x)) => to_py(py, &x).map(Some),
            Ok(None) => Ok(None),
            Err(()) => Err(pyo3::exceptions::PyStopAsyncIteration::new_err(())),
        }
    }

    /// Resolves once `try_next` has something to return.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.source {
            Source::Tokio(b) => super::bridge::coroutine::coroutine(py, "EventStream.wait", b.wait()),
            Source::Loop(sub) => match sub.waiter() {
                None => super::bridge::coroutine::resolved(py, "EventStream.wait", false, Ok(py.None())),
                Some(slot) => super::bridge::coroutine::on_slot(py, "EventStream.wait", false, slot, None),
            },
        }
    }
}

impl EventStream {
    pub fn new(rx: broadcast::Receiver<Event>, logger: Option<Arc<str>>) -> Self {
        EventStream { source: Source::Tokio(Buffered::new(rx, |e| matches!(e, Event::Closed), "events()", logger)) }
    }

    pub fn on_loop(sub: Arc<LoopSub>) -> Self {
        EventStream { source: Source::Loop(sub) }
    }

    pub fn ended() -> Self {
        EventStream::on_loop(LoopSub::ended())
    }
}

/// One `events()` subscription of a connection that runs on the event loop: its events are queued
/// and its waiter woken by the loop thread that emits them. At most `capacity` wait; a consumer that
/// falls further behind loses the oldest, and is told how many when it reads again (as with the
/// broadcast channel of the other streams).
pub struct LoopSub {
    state: std::sync::Mutex<SubState>,
    capacity: usize,
    logger: Option<Arc<str>>,
}

struct SubState {
    queue: VecDeque<Event>,
    dropped: u64,
    ended: bool,
    waiters: Vec<Arc<super::bridge::coroutine::Slot>>,
}

impl LoopSub {
    pub fn new(capacity: usize, logger: Option<Arc<str>>) -> Arc<LoopSub> {
        Arc::new(LoopSub {
            state: std::sync::Mutex::new(SubState {
                queue: VecDeque::new(),
                dropped: 0,
                ended: false,
                waiters: vec![],
            }),
            capacity,
            logger,
        })
    }

    fn ended() -> Arc<LoopSub> {
        let s = LoopSub::new(1, None);
        s.lock().ended = true;
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `ev` (`Closed` ends the stream); the waiters to wake.
    pub fn push(&self, ev: &Event) -> Vec<Arc<super::bridge::coroutine::Slot>> {
        let mut st = self.lock();
        if st.ended {
            return vec![];
        }
        if matches!(ev, Event::Closed) {
            st.ended = true;
        } else {
            if st.queue.len() >= self.capacity {
                st.queue.pop_front();
                st.dropped += 1;
            }
            st.queue.push_back(ev.clone());
        }
        std::mem::take(&mut st.waiters)
    }

    /// The source is gone: the stream ends after what it holds.
    pub fn end(&self) -> Vec<Arc<super::bridge::coroutine::Slot>> {
        let mut st = self.lock();
        st.ended = true;
        std::mem::take(&mut st.waiters)
    }

    fn pop(&self) -> Result<Option<Event>, ()> {
        let (ev, dropped) = {
            let mut st = self.lock();
            let dropped = std::mem::take(&mut st.dropped);
            match st.queue.pop_front() {
                Some(ev) => (Some(ev), dropped),
                None if st.ended => return Err(()),
                None => (None, dropped),
            }
        };
        if dropped > 0 {
            tracing::warn!(target: "tether::events", logger = self.logger.as_deref(), dropped,
                "events() consumer fell behind; {dropped} were dropped");
        }
        Ok(ev)
    }

    /// A slot woken by the next event, or None when `pop` has something to return already.
    fn waiter(&self) -> Option<Arc<super::bridge::coroutine::Slot>> {
        let mut st = self.lock();
        if !st.queue.is_empty() || st.ended {
            return None;
        }
        let slot = super::bridge::coroutine::Slot::new();
        st.waiters.push(slot.clone());
        Some(slot)
    }
}
