//! Hands results of Rust futures to their asyncio loop as data, a batch per wake-up.
//!
//! pyo3-async-runtimes completed every future from a blocking-pool thread that took the GIL and called
//! `call_soon_threadsafe`: one thread per pending completion (up to 512) and 60-90 µs per result. Here
//! a tokio thread only pushes the finished job onto its loop's queue, without the GIL, and writes one
//! byte to a socket the loop watches (`add_reader`) when the queue was empty. The loop thread drains
//! the whole batch: it builds the Python objects and completes the futures. Loops without `add_reader`
//! (Windows' Proactor) get one `call_soon_threadsafe` per batch instead, through the atexit gate.
//!
//! One completer per (process, loop): a forked child never reads or writes its parent's socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::IntoPyObjectExt;
use pyo3_async_runtimes::err::RustPanic;

use super::parked::Parked;

/// Work for the loop thread; runs with the GIL, inside a drain.
pub type Job = Box<dyn for<'py> FnOnce(Python<'py>, &Completer) + Send>;

pub struct Completer {
    pid: u32,
    queue: Mutex<Vec<Job>>,
    /// Futures waiting for a result, by address (unique while held here); only touched on the loop thread.
    pending: Mutex<HashMap<usize, Waiting>>,
    next_id: AtomicU64,
    /// The done-callback shared by every pending future of this loop (`OnDone`).
    on_done: OnceLock<Py<PyAny>>,
    wake: Wake,
}

struct Waiting {
    id: u64,
    fut: Py<PyAny>,
    parked: Arc<Parked>,
}

enum Wake {
    #[cfg(unix)]
    Socket { tx: std::os::unix::net::UnixStream, rx: std::os::unix::net::UnixStream },
    /// `event_loop` is a weak reference when the loop allows one: the registry's value must not keep
    /// its key alive.
    Threadsafe { event_loop: Py<PyAny>, weak: bool },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Completer {
    /// `fut` (polled once, pending, its waker `parked`) completes `py_fut` through this queue;
    /// cancelling `py_fut` stops it.
    pub fn watch<F, T>(self: &Arc<Self>, py_fut: &Bound<'_, PyAny>, parked: Arc<Parked>, fut: F) -> PyResult<()>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        let py = py_fut.py();
        let key = py_fut.as_ptr() as usize;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(key, Waiting { id, fut: py_fut.clone().unbind(), parked: parked.clone() });
        let on_done = self.on_done.get().expect("set at creation");
        if let Err(e) = py_fut.call_method1(intern!(py, "add_done_callback"), (on_done,)) {
            lock(&self.pending).remove(&key);
            parked.cancel();
            return Err(e);
        }
        let me = self.clone();
        // no drain can complete `py_fut` before this returns: drains run on this (the loop's) thread
        parked.park(Box::pin(async move {
            let r = fut.await;
            me.deliver(key, id, r);
        }));
        Ok(())
    }

    /// Queue `job` for the loop thread; callable from any thread, never takes the GIL (except the
    /// fallback wake of a loop without `add_reader`).
    pub fn push(self: &Arc<Self>, job: Job) {
        let was_empty = {
            let mut q = lock(&self.queue);
            q.push(job);
            q.len() == 1
        };
        if was_empty {
            self.wake();
        }
    }

    fn deliver<T>(self: &Arc<Self>, key: usize, id: u64, result: PyResult<T>)
    where
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        self.push(Box::new(move |py, c| {
            let waiting = {
                let mut pending = lock(&c.pending);
                match pending.get(&key) {
                    Some(w) if w.id == id => pending.remove(&key),
                    _ => None, // cancelled and forgotten
                }
            };
            if let Some(w) = waiting {
                let fut = w.fut.bind(py);
                // the callback only matters for a cancellation, and there is nothing left to abort
                if let Some(on_done) = c.on_done.get() {
                    let _ = fut.call_method1(intern!(py, "remove_done_callback"), (on_done,));
                }
                complete(fut, result);
            }
        }));
    }

    fn wake(self: &Arc<Self>) {
        match &self.wake {
            #[cfg(unix)]
            Wake::Socket { tx, .. } => {
                use std::io::Write;
                // WouldBlock: bytes are already waiting, so a drain is coming anyway
                let _ = (&*tx).write(&[1]);
            }
            Wake::Threadsafe { event_loop, weak } => {
                let me = self.clone();
                let _ = super::super::with_python(|py| -> PyResult<()> {
                    let event_loop = if *weak { event_loop.call0(py)? } else { event_loop.clone_ref(py) };
                    if !event_loop.is_none(py) {
                        let drain = Py::new(py, Drain { completer: me })?;
                        event_loop.call_method1(py, intern!(py, "call_soon_threadsafe"), (drain,))?;
                    }
                    Ok(())
                });
            }
        }
    }

    fn drain(&self, py: Python<'_>) {
        #[cfg(unix)]
        if let Wake::Socket { rx, .. } = &self.wake {
            use std::io::Read;
            // read the wake bytes before taking the queue: a push after the take writes a new one
            let mut buf = [0u8; 64];
            loop {
                match (&*rx).read(&mut buf) {
                    Ok(n) if n == buf.len() => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
        }
        let jobs = std::mem::take(&mut *lock(&self.queue));
        for job in jobs {
            job(py, self);
        }
    }
}

/// `value` as the result of an awaitable: `()` (nothing to return) is None, as for a coroutine that
/// returns nothing, rather than the empty tuple it converts to.
pub fn to_py<T>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>>
where
    T: for<'py> IntoPyObject<'py> + 'static,
{
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<()>() {
        return Ok(py.None());
    }
    value.into_py_any(py)
}

/// Set `result` (converted here, on the loop thread) or its exception on the asyncio future `fut`.
pub fn complete<T>(fut: &Bound<'_, PyAny>, result: PyResult<T>)
where
    T: for<'py> IntoPyObject<'py> + 'static,
{
    let py = fut.py();
    let value = result.and_then(|v| to_py(py, v));
    let set = match value {
        Ok(v) => fut.call_method1(intern!(py, "set_result"), (v,)),
        Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),)),
    };
    let Err(refused) = set else { return };
    // done: cancelled in the meantime, the result has nobody left to go to
    if fut.call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
        return;
    }
    // refused (asyncio rejects a StopIteration): the refusal is the outcome, never a future left pending
    if let Err(e) = fut.call_method1(intern!(py, "set_exception"), (refused.into_value(py),)) {
        e.write_unraisable(py, Some(fut));
    }
}

/// The loop's reader callback (or the fallback's scheduled callback): runs one batch.
#[pyclass(module = "tether._native", frozen)]
struct Drain {
    completer: Arc<Completer>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        self.completer.drain(py);
    }
}

/// Done-callback of the pending futures: one that finished without a result from Rust was cancelled,
/// so the Rust future is dropped (or its tokio task aborted) and the work stops with it.
#[pyclass(module = "tether._native", frozen)]
struct OnDone {
    completer: Weak<Completer>,
}

#[pymethods]
impl OnDone {
    fn __call__(&self, fut: &Bound<'_, PyAny>) {
        if let Some(c) = self.completer.upgrade() {
            let waiting = lock(&c.pending).remove(&(fut.as_ptr() as usize));
            if let Some(w) = waiting {
                w.parked.cancel();
            }
        }
    }
}

/// Keeps a loop's completer in `COMPLETERS`, a WeakKeyDictionary keyed by the loop.
#[pyclass(module = "tether._native", frozen)]
struct Entry {
    completer: Arc<Completer>,
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static COMPLETERS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
    /// The last loop this thread asked for, and its completer: the common case costs a pointer compare.
    static CURRENT: RefCell<Option<(Py<PyAny>, Arc<Completer>)>> = const { RefCell::new(None) };
}

/// The running loop of this thread ("no running event loop" when there is none).
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP.import(py, "asyncio", "get_running_loop")?.call0()
}

/// The running loop of this thread and its completer (created on first use, again after a fork).
pub fn for_running_loop(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Arc<Completer>)> {
    let event_loop = running_loop(py)?;
    let pid = super::runtime::pid();
    let hit = CURRENT.with(|cur| {
        cur.borrow().as_ref().filter(|(l, c)| l.as_ptr() == event_loop.as_ptr() && c.pid == pid).map(|(_, c)| c.clone())
    });
    if let Some(c) = hit {
        return Ok((event_loop, c));
    }
    let c = lookup_or_create(py, &event_loop, pid)?;
    // the previous pair is dropped outside the borrow: a loop's finalizer may call back into tether
    let previous = CURRENT.with(|cur| cur.replace(Some((event_loop.clone().unbind(), c.clone()))));
    drop(previous);
    Ok((event_loop, c))
}

fn lookup_or_create(py: Python<'_>, event_loop: &Bound<'_, PyAny>, pid: u32) -> PyResult<Arc<Completer>> {
    let registry = COMPLETERS
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py.import("weakref")?.getattr("WeakKeyDictionary")?.call0()?.unbind())
        })?
        .bind(py);
    if let Ok(entry) = registry.call_method1(intern!(py, "get"), (event_loop,)) {
        if let Ok(entry) = entry.cast::<Entry>() {
            if entry.get().completer.pid == pid {
                return Ok(entry.get().completer.clone());
            }
        }
    }
    let c = create(py, event_loop, pid)?;
    // a loop that cannot be weakly referenced is only remembered by the thread-local cache
    let _ = registry.set_item(event_loop, Entry { completer: c.clone() });
    Ok(c)
}

fn create(py: Python<'_>, event_loop: &Bound<'_, PyAny>, pid: u32) -> PyResult<Arc<Completer>> {
    let new = |wake| -> PyResult<Arc<Completer>> {
        let c = Arc::new(Completer {
            pid,
            queue: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            on_done: OnceLock::new(),
            wake,
        });
        let _ = c.on_done.set(Py::new(py, OnDone { completer: Arc::downgrade(&c) })?.into_any());
        Ok(c)
    };
    #[cfg(unix)]
    if let Ok((tx, rx)) = std::os::unix::net::UnixStream::pair() {
        use std::os::fd::AsRawFd;
        if tx.set_nonblocking(true).is_ok() && rx.set_nonblocking(true).is_ok() {
            let fd = rx.as_raw_fd();
            let c = new(Wake::Socket { tx, rx })?;
            let drain = Py::new(py, Drain { completer: c.clone() })?;
            // registered from an empty context: the reader's handle would otherwise keep a copy of
            // this caller's contextvars for the loop's lifetime
            let registered = (|| -> PyResult<()> {
                let add_reader = event_loop.getattr(intern!(py, "add_reader"))?;
                let empty = py.import("contextvars")?.getattr("Context")?.call0()?;
                empty.call_method1(intern!(py, "run"), (add_reader, fd, drain))?;
                Ok(())
            })();
            if registered.is_ok() {
                return Ok(c);
            }
        }
    }
    match py.import("weakref")?.getattr("ref")?.call1((event_loop,)) {
        Ok(weak_loop) => new(Wake::Threadsafe { event_loop: weak_loop.unbind(), weak: true }),
        Err(_) => new(Wake::Threadsafe { event_loop: event_loop.clone().unbind(), weak: false }),
    }
}

/// A panic inside a Rust future, as the exception its awaitable raises (never unwinds into Python).
pub fn panicked(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown error".into());
    RustPanic::new_err(format!("rust future panicked: {msg}"))
}
