//! Core events -> `tether.events` objects, and the async iterator behind every `events()`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use tokio::sync::{broadcast, Mutex};

use crate::reconnect::Event;

pub fn to_py(py: Python<'_>, ev: &Event) -> PyResult<Py<PyAny>> {
    let m = py.import("tether.events")?;
    let obj = match ev {
        Event::Connecting { attempt, strategy } => m.getattr("Connecting")?.call1((*attempt, &**strategy))?,
        Event::Connected { attempt } => m.getattr("Connected")?.call1((*attempt,))?,
        Event::ConnectionLost { reason } => m.getattr("ConnectionLost")?.call1((reason.as_str(),))?,
        Event::Reconnecting { attempt, delay, strategy } => {
            m.getattr("Reconnecting")?.call1((*attempt, delay.as_secs_f64(), &**strategy))?
        }
        Event::Reconnected { downtime, attempts } => {
            m.getattr("Reconnected")?.call1((downtime.as_secs_f64(), *attempts))?
        }
        Event::GaveUp { error, attempts } => m.getattr("GaveUp")?.call1((error.as_str(), *attempts))?,
        Event::Alarm { kind, name, elapsed, limit, message } => py
            .import("tether._watchdog")?
            .getattr("Alarm")?
            .call1((*kind, name.as_str(), elapsed.as_secs_f64(), limit.as_secs_f64(), message.as_str()))?,
        Event::Closed => m.getattr("Closed")?.call0()?,
    };
    Ok(obj.unbind())
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

/// `__anext__` for the buffered streams: the Python coroutine `tether.events._anext`.
pub fn anext<'py, S: pyo3::PyClass>(slf: Bound<'py, S>) -> PyResult<Bound<'py, PyAny>> {
    slf.py().import("tether.events")?.getattr("_anext")?.call1((slf,))
}

/// Defines a cancellation-safe Python async iterator over a `Buffered<$item>`: `__anext__` is
/// `tether.events._anext`, `try_next()` converts with `$to_py`, `wait()` waits without consuming.
macro_rules! buffered_stream {
    ($(#[$meta:meta])* $name:ident, $item:ty, $to_py:path) => {
        $(#[$meta])*
        #[pyclass(module = "tether._native")]
        pub struct $name {
            pub(crate) inner: $crate::py::events::Buffered<$item>,
        }

        #[pymethods]
        impl $name {
            fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
                slf
            }

            fn __anext__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
                $crate::py::events::anext(slf)
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
#[pyclass(module = "tether._native")]
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
        anext(slf)
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
