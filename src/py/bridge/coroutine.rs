//! The awaitable every native async method returns: a coroutine, as far as asyncio can tell.
//!
//! `asyncio.create_task`, `gather`, `wait_for`, `TaskGroup` and, from an audio or callback thread,
//! `asyncio.run_coroutine_threadsafe` take a coroutine (`asyncio.iscoroutine`); the last one runs it on
//! a loop the calling thread does not have. An asyncio future made at the call is not a coroutine, and
//! cannot be made on a thread without a running loop. So this type speaks the coroutine protocol
//! (`send`, `throw`, `close`, `__await__`, `__next__`), is registered with `collections.abc.Coroutine`,
//! and meets an event loop only at its first step, on the thread of the loop whose task drives it.
//!
//! What runs when:
//! - the call does only what its method documents as immediate (`send()` queues its message there, so
//!   messages go out in call order whatever thread calls);
//! - the first step (`await` takes it in `__await__`, a task in `send`/`__next__`) polls the Rust
//!   future once, in tokio's context. Ready (a buffered message, a free slot, a send under the write
//!   mark): the result is returned right there, without an asyncio future or a look at the loop.
//!   Pending: the future goes to the loop's completer (`completer`, `parked`), which completes an
//!   asyncio future with its result; `await` gets that future's own iterator, a task gets the future
//!   yielded as `await future` yields it, and its next step returns the result;
//! - an event stream's `__anext__` (`taking`) takes its event on the loop thread at a step, never in
//!   `__await__`; when there is none it waits for one without taking it, and takes at the next step;
//! - `throw()` (how a task delivers its cancellation), `close()`, or dropping it while it waits, drop
//!   the Rust future or abort its tokio task;
//! - never stepped, nothing ran: dropping it drops the Rust future, with the "was never awaited"
//!   RuntimeWarning of a Python coroutine. Not for a `send()`: its call queued the message, awaiting it
//!   only waits for room in the queue, so a send left unawaited is not a mistake.
//!
//! It answers what introspection asks of a coroutine (`cr_running`, `cr_suspended`, `cr_state`,
//! `cr_await`, `cr_frame`, `cr_code`), so `inspect.getcoroutinestate` reads CREATED, SUSPENDED or
//! CLOSED (anyio asks it of every task a cancel scope cancels), and asyncio's task repr and stack
//! printing work.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;
use pyo3::exceptions::{PyBaseException, PyRuntimeError, PyRuntimeWarning, PyStopIteration, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use super::completer::{self, Completer};
use super::parked::Parked;

/// The Rust work of a coroutine that was not stepped yet.
trait Body: Send {
    /// The first step, on the thread of the loop that drives the coroutine.
    fn first(self: Pin<Box<Self>>, py: Python<'_>) -> PyResult<First>;

    /// Whether `__await__` may take the first step. Not for an `__anext__`: `async for` reports an
    /// exception raised by `__await__` itself (the `StopAsyncIteration` that ends it) as a TypeError.
    fn steps_in_await(&self) -> bool {
        true
    }
}

enum First {
    Ready(Py<PyAny>),
    Pending(Waiting),
}

/// A pending first step: `fut` is completed later, on the loop thread.
struct Waiting {
    fut: Py<PyAny>,
    /// For a Rust future: the loop's completer completes `fut`, and `Parked` stops the future. None for
    /// a result the loop thread itself sets (`Slot`): cancelling `fut` is all there is to stop.
    tokio: Option<(Arc<Parked>, Arc<Completer>)>,
    /// For a `taking` body: what steps once `fut` is done, in place of returning its result.
    again: Option<Pin<Box<dyn Body>>>,
}

impl<F, T> Body for F
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    fn first(mut self: Pin<Box<Self>>, py: Python<'_>) -> PyResult<First> {
        let runtime = super::runtime::get();
        let parked = Parked::new(runtime);
        let waker = Waker::from(parked.clone());
        let polled = {
            // tokio timers and spawns need the runtime's context even off its threads
            let _rt = runtime.enter();
            catch_unwind(AssertUnwindSafe(|| self.as_mut().poll(&mut Context::from_waker(&waker))))
        };
        match polled {
            Err(panic) => Err(completer::panicked(panic)),
            Ok(Poll::Ready(r)) => Ok(First::Ready(completer::to_py(py, r?)?)),
            Ok(Poll::Pending) => {
                let (event_loop, completer) = completer::for_running_loop(py)?;
                let fut = new_future(&event_loop)?;
                let rest =
                    AssertUnwindSafe(self).catch_unwind().map(|r| r.unwrap_or_else(|p| Err(completer::panicked(p))));
                completer.watch(&fut, parked.clone(), rest)?;
                Ok(First::Pending(Waiting { fut: fut.unbind(), tokio: Some((parked, completer)), again: None }))
            }
        }
    }
}

/// A body whose result is known at the call (a send queued under both marks): no future, no tokio.
struct Resolved(PyResult<Py<PyAny>>);

impl Body for Resolved {
    fn first(self: Pin<Box<Self>>, _py: Python<'_>) -> PyResult<First> {
        Pin::into_inner(self).0.map(First::Ready)
    }
}

/// A body waiting for a result the loop thread sets on a `Slot` (no tokio involved). Dropped before
/// its first step (its coroutine closed or dropped unawaited), its waiter is gone (`Slot::waiter_gone`).
struct OnSlot(Arc<Slot>, Option<LoopHint>);

impl Drop for OnSlot {
    fn drop(&mut self) {
        self.0.waiter_gone();
    }
}

/// The loop a slot's owner runs on: the first step on its thread makes the future there without
/// asking asyncio for the running loop (a `getpid` system call each time).
pub struct LoopHint {
    pub event_loop: Py<PyAny>,
    pub thread: std::thread::ThreadId,
}

impl Body for OnSlot {
    fn first(self: Pin<Box<Self>>, py: Python<'_>) -> PyResult<First> {
        let slot = &self.0;
        if let Some(r) = slot.take() {
            return r.map(First::Ready);
        }
        let (event_loop, remote) = match &self.1 {
            Some(h) if h.thread == std::thread::current().id() => (h.event_loop.bind(py).clone(), None),
            // awaited on a loop of its own (another thread's): set from the owner's thread, the result
            // goes through this loop's completer, which wakes it
            _ => {
                let (event_loop, completer) = completer::for_running_loop(py)?;
                (event_loop, Some(Remote { thread: std::thread::current().id(), completer }))
            }
        };
        let fut = new_future(&event_loop)?;
        match slot.wait_on(&fut, remote)? {
            Some(r) => r.map(First::Ready),
            None => Ok(First::Pending(Waiting { fut: fut.unbind(), tokio: None, again: None })),
        }
    }
}

/// `loop.create_future()`. asyncio's is a method in Python that only calls `Future(loop=loop)`, so for
/// a loop that keeps it the future is made directly, a Python frame less per wait; a loop with its own
/// (uvloop's, a test's) is asked.
fn new_future<'py>(event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    thread_local! {
        /// The last loop type seen, held so its address is not reused, and whether it keeps asyncio's.
        static LAST: std::cell::RefCell<Option<(Py<PyType>, bool)>> = const { std::cell::RefCell::new(None) };
    }
    static BASE: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    let py = event_loop.py();
    let (base_create, future) = BASE.get_or_try_init(py, || -> PyResult<_> {
        let base = py.import("asyncio.base_events")?.getattr("BaseEventLoop")?.getattr("create_future")?;
        Ok((base.unbind(), py.import("asyncio.futures")?.getattr("Future")?.unbind()))
    })?;
    let ty = event_loop.get_type();
    let known = LAST.with(|l| l.borrow().as_ref().filter(|(t, _)| t.is(&ty)).map(|(_, plain)| *plain));
    let plain = match known {
        Some(plain) => plain,
        None => {
            let plain = ty.getattr(intern!(py, "create_future")).is_ok_and(|f| f.is(base_create));
            LAST.with(|l| *l.borrow_mut() = Some((ty.unbind(), plain)));
            plain
        }
    };
    if plain {
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), event_loop)?;
        return future.bind(py).call((), Some(&kwargs));
    }
    event_loop.call_method0(intern!(py, "create_future"))
}

/// Work for when a slot's waiter went away: it must not call into Python or take a lock that is held
/// while Python runs (it may run from a deallocation).
pub type Orphaned = Box<dyn FnOnce() + Send>;

/// A result set on the loop thread, awaited through a coroutine whose first step found it missing.
/// Shared by the coroutine and whoever will set it (the connection keeps it in a list of waiters).
/// A waiter may go away first (its task cancelled, its coroutine dropped): the owner can be told, to
/// withdraw the wait (`on_withdraw`) or to take back a result nobody will read (`set_returning`).
#[derive(Default)]
pub struct Slot {
    state: Mutex<SlotState>,
    /// Runs once if the waiter goes away before a result is set.
    withdraw: Mutex<Option<Orphaned>>,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Empty,
    /// The coroutine's first step found nothing and waits on this asyncio future.
    Waiting(Py<PyAny>, Option<Remote>),
    /// The result, and what to run if it is never taken.
    Set(PyResult<Py<PyAny>>, Option<Orphaned>),
    /// The coroutine went away without a step: a result set now reaches nobody.
    Gone,
    Done,
}

/// The loop a slot's future belongs to, when it is not necessarily the setter's: its thread, and the
/// completer that completes the future there (a plain `set_result` from another thread would not wake
/// that loop, which would sleep on a done future).
struct Remote {
    thread: std::thread::ThreadId,
    completer: Arc<Completer>,
}

impl Slot {
    pub fn new() -> Arc<Slot> {
        Arc::new(Slot::default())
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `hook` if the waiter goes away before a result is set: its future is cancelled (a timeout,
    /// a cancelled task), or its coroutine is closed or dropped before its first step.
    pub fn on_withdraw(&self, hook: Orphaned) {
        *self.withdraw.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn take_withdraw(&self) -> Option<Orphaned> {
        self.withdraw.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The result, if set (taken: a coroutine is awaited once).
    fn take(&self) -> Option<PyResult<Py<PyAny>>> {
        let mut st = self.lock();
        match std::mem::replace(&mut *st, SlotState::Done) {
            SlotState::Set(r, _) => Some(r),
            other => {
                *st = other;
                None
            }
        }
    }

    /// Wait on `fut` for the result, unless it was set meanwhile (then returned). A slot with a
    /// withdraw hook learns from `fut` whether it was cancelled.
    fn wait_on(
        self: &Arc<Self>,
        fut: &Bound<'_, PyAny>,
        remote: Option<Remote>,
    ) -> PyResult<Option<PyResult<Py<PyAny>>>> {
        {
            let mut st = self.lock();
            match std::mem::replace(&mut *st, SlotState::Done) {
                SlotState::Set(r, _) => return Ok(Some(r)),
                _ => *st = SlotState::Waiting(fut.clone().unbind(), remote),
            }
        }
        if self.withdraw.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            let cb = Py::new(fut.py(), WaiterDone { slot: Arc::downgrade(self) })?;
            fut.call_method1(intern!(fut.py(), "add_done_callback"), (cb,))?;
        }
        Ok(None)
    }

    /// The coroutine that would take the result went away without a step: a wait not settled yet is
    /// withdrawn, a result set meanwhile is handed back.
    fn waiter_gone(&self) {
        let (orphaned, _untaken) = {
            let mut st = self.lock();
            match std::mem::replace(&mut *st, SlotState::Gone) {
                SlotState::Empty => (self.take_withdraw(), None),
                // the result is released after the lock (releasing a Python object may run code)
                SlotState::Set(r, back) => (back, Some(r)),
                other => {
                    *st = other;
                    (None, None)
                }
            }
        };
        if let Some(f) = orphaned {
            f();
        }
    }

    /// Whether nothing waits on it any more: set already, or its future was cancelled.
    pub fn abandoned(&self, py: Python<'_>) -> bool {
        match &*self.lock() {
            SlotState::Waiting(f, _) => {
                f.bind(py).call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true)
            }
            SlotState::Empty => false,
            SlotState::Set(..) | SlotState::Gone | SlotState::Done => true,
        }
    }

    /// Set the result (the first one counts): completes the future of a coroutine waiting on it, or
    /// is returned by its first step. Call on the loop thread, holding no lock a Python call could need.
    pub fn set(&self, py: Python<'_>, result: PyResult<Py<PyAny>>) {
        self.set_returning(py, result, None);
    }

    /// `set`, with `back` to run if the result never reaches the waiter: its future was cancelled
    /// already, its coroutine is dropped without taking it, or a result was set before.
    pub fn set_returning(&self, py: Python<'_>, result: PyResult<Py<PyAny>>, back: Option<Orphaned>) {
        drop(self.take_withdraw());
        let (fut, remote) = {
            let mut st = self.lock();
            match std::mem::replace(&mut *st, SlotState::Done) {
                SlotState::Empty => {
                    *st = SlotState::Set(result, back);
                    return;
                }
                SlotState::Waiting(f, remote) => (f, remote),
                other => {
                    *st = other;
                    drop(st);
                    if let Some(f) = back {
                        f();
                    }
                    return;
                }
            }
        };
        match remote {
            Some(r) if r.thread != std::thread::current().id() => {
                r.completer.push(Box::new(move |py, _| settle(fut.bind(py), result, back)));
            }
            _ => settle(fut.bind(py), result, back),
        }
    }
}

/// Complete a slot's future on its loop's thread, or hand `back` the result a cancelled one no longer takes.
fn settle(fut: &Bound<'_, PyAny>, result: PyResult<Py<PyAny>>, back: Option<Orphaned>) {
    let py = fut.py();
    match back {
        Some(f) if fut.call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) => f(),
        _ => completer::complete(fut, result),
    }
}

/// Done-callback of the future a slot's waiter waits on: a cancelled one withdraws the wait.
#[pyclass(module = "tether._native", frozen)]
struct WaiterDone {
    slot: std::sync::Weak<Slot>,
}

#[pymethods]
impl WaiterDone {
    fn __call__(&self, fut: &Bound<'_, PyAny>) {
        let Some(slot) = self.slot.upgrade() else { return };
        if !fut.call_method0(intern!(fut.py(), "cancelled")).and_then(|c| c.is_truthy()).unwrap_or(false) {
            return;
        }
        let hook = matches!(&*slot.lock(), SlotState::Waiting(..)).then(|| slot.take_withdraw()).flatten();
        if let Some(f) = hook {
            f();
        }
    }
}

/// A body whose Rust future is made at the first step, on the loop's thread, by `setup`: for work that
/// needs that loop (a pool started on it) or must not begin unless awaited (a process lent).
struct Deferred<G>(G);

impl<G, F, T, E> Body for Deferred<G>
where
    G: FnOnce(Python<'_>) -> PyResult<F> + Send + Unpin + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
    E: Into<PyErr> + Send + 'static,
{
    fn first(self: Pin<Box<Self>>, py: Python<'_>) -> PyResult<First> {
        let fut = (Pin::into_inner(self).0)(py)?;
        Box::pin(fut.map(into_py_result)).first(py)
    }
}

/// A Rust future's error as the exception it becomes (see `errors::Error`: made when raised).
fn into_py_result<T, E: Into<PyErr>>(r: Result<T, E>) -> PyResult<T> {
    r.map_err(Into::into)
}

enum State {
    Created(Pin<Box<dyn Body>>),
    /// A step is under way (the state is taken out while it calls into Python).
    Stepping,
    /// Driven by `send`/`__next__` (a task): the future its last step yielded.
    Waiting(Waiting),
    /// `await` took the first step, which was ready: the next step returns this.
    Ready(Py<PyAny>),
    /// `await` took the first step, which was pending: the awaiting coroutine waits on this future
    /// through its own iterator.
    HandedOver(Py<PyAny>),
    Done,
}

/// Turns the Rust future's result into what the caller gets, when the caller resumes.
pub type Finish = fn(Python<'_>, Bound<'_, PyAny>) -> PyResult<Py<PyAny>>;

/// What the native ``async def`` methods return: a coroutine (``asyncio.iscoroutine`` is true, registered with
/// ``collections.abc.Coroutine``), so ``await``, ``asyncio.create_task``, ``gather``, ``wait_for``, ``TaskGroup`` and
/// ``asyncio.run_coroutine_threadsafe`` from another thread all take it.
///
/// The call does only what its method documents as immediate (``send()`` queues its message); the rest runs from the
/// first step, on the event loop whose task drives it, so one made on a thread without a loop works once a loop runs
/// it. A result that is there at the first step is returned without an asyncio future. Cancelling the task
/// (``throw``) or ``close()`` stops the Rust work. Awaiting it twice raises ``RuntimeError`` as a coroutine does;
/// dropping it unawaited warns "was never awaited", except for ``send()``, whose message was queued by the call.
#[pyclass(module = "tether._native", frozen)]
pub struct NativeCoroutine {
    state: Mutex<State>,
    /// `Class.method`, as a coroutine's `__qualname__`.
    name: &'static str,
    /// The call already did what was asked (a send queued its message): never awaiting it is no mistake.
    done_at_call: bool,
    /// Set for a result that must not be lost between its arrival and the caller's resumption (a
    /// lent process): the result stays an owned handover object until `finish` runs at that resumption,
    /// so a task cancelled in between drops the handover, which gives it back. Such a coroutine never
    /// hands its future over to `await` (the future would give the caller the handover itself).
    finish: Option<Finish>,
}

/// A coroutine that polls `fut` at its first step; it warns if dropped without being awaited. Its error
/// is raised as the exception it converts into (`errors::Error` builds it only then, on the loop thread).
pub fn coroutine<'py, F, T, E>(py: Python<'py>, name: &'static str, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
    E: Into<PyErr> + Send + 'static,
{
    make(py, name, Box::pin(fut.map(into_py_result)), false, None)
}

/// A coroutine that returns (or raises) `result` at its first step: for a call whose work is done.
pub fn resolved<'py>(
    py: Python<'py>,
    name: &'static str,
    done_at_call: bool,
    result: PyResult<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    make(py, name, Box::pin(Resolved(result)), done_at_call, None)
}

/// A coroutine that returns what the loop thread sets on `slot` (see `Slot`); `hint`: the loop it is
/// set on, when known.
pub fn on_slot<'py>(
    py: Python<'py>,
    name: &'static str,
    done_at_call: bool,
    slot: Arc<Slot>,
    hint: Option<LoopHint>,
) -> PyResult<Bound<'py, PyAny>> {
    make(py, name, Box::pin(OnSlot(slot, hint)), done_at_call, None)
}

/// A body whose first step, on the driving loop's thread, makes the coroutine that does the work (a
/// connection that starts on that loop): that coroutine's first step is taken at once.
struct DeferredCoroutine<G>(G);

impl<G> Body for DeferredCoroutine<G>
where
    G: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>> + Send + Unpin + 'static,
{
    fn first(self: Pin<Box<Self>>, py: Python<'_>) -> PyResult<First> {
        body_of((Pin::into_inner(self).0)(py)?)?.first(py)
    }
}

/// The work of a native coroutine not stepped yet, taken out to be stepped in another's place.
fn body_of(coroutine: Bound<'_, PyAny>) -> PyResult<Pin<Box<dyn Body>>> {
    let coroutine = coroutine.cast_into::<NativeCoroutine>().map_err(PyErr::from)?;
    let coroutine = coroutine.get();
    match coroutine.take()? {
        State::Created(body) => {
            coroutine.put(State::Done);
            Ok(body)
        }
        other => {
            coroutine.put(other);
            Err(reused())
        }
    }
}

/// What a step of a `taking` coroutine finds on the loop thread.
pub enum Take<'py> {
    /// Its result, taken.
    Ready(Py<PyAny>),
    /// Nothing yet: a native coroutine, consuming nothing, that returns once there may be something.
    Wait(Bound<'py, PyAny>),
}

/// A body that takes its result on the loop thread at its first step, and again each time the wait
/// it returned is over: only the step that returns the result takes it, so a task cancelled while
/// waiting has taken nothing.
struct Taking<G>(G);

impl<G> Body for Taking<G>
where
    G: for<'py> FnMut(Python<'py>) -> PyResult<Take<'py>> + Send + Unpin + 'static,
{
    fn first(mut self: Pin<Box<Self>>, py: Python<'_>) -> PyResult<First> {
        loop {
            let wait = match (self.0)(py)? {
                Take::Ready(v) => return Ok(First::Ready(v)),
                Take::Wait(wait) => wait,
            };
            match body_of(wait)?.first(py)? {
                // over already: take again
                First::Ready(_) => {}
                First::Pending(waiting) => return Ok(First::Pending(Waiting { again: Some(self), ..waiting })),
            }
        }
    }

    fn steps_in_await(&self) -> bool {
        false
    }
}

/// A coroutine whose first step runs `setup` on the driving loop's thread; `setup` returns the native
/// coroutine that does the work, stepped in its place.
pub fn deferred_coroutine<'py, G>(py: Python<'py>, name: &'static str, setup: G) -> PyResult<Bound<'py, PyAny>>
where
    G: for<'a> FnOnce(Python<'a>) -> PyResult<Bound<'a, PyAny>> + Send + Unpin + 'static,
{
    make(py, name, Box::pin(DeferredCoroutine(setup)), false, None)
}

/// A coroutine that takes its result with `take` on the loop thread, at its first step and after each
/// wait `take` returns instead (see `Taking`): for an `__anext__` that must not lose what it takes.
pub fn taking<'py, G>(py: Python<'py>, name: &'static str, take: G) -> PyResult<Bound<'py, PyAny>>
where
    G: for<'a> FnMut(Python<'a>) -> PyResult<Take<'a>> + Send + Unpin + 'static,
{
    make(py, name, Box::pin(Taking(take)), false, None)
}

/// A coroutine whose Rust future `setup` makes at the first step, on the driving loop's thread.
pub fn deferred<'py, G, F, T, E>(py: Python<'py>, name: &'static str, setup: G) -> PyResult<Bound<'py, PyAny>>
where
    G: FnOnce(Python<'_>) -> PyResult<F> + Send + Unpin + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
    E: Into<PyErr> + Send + 'static,
{
    make(py, name, Box::pin(Deferred(setup)), false, None)
}

/// `deferred`, whose result goes through `finish` when the caller resumes (see `NativeCoroutine::finish`).
pub fn deferred_handover<'py, G, F, T, E>(
    py: Python<'py>,
    name: &'static str,
    finish: Finish,
    setup: G,
) -> PyResult<Bound<'py, PyAny>>
where
    G: FnOnce(Python<'_>) -> PyResult<F> + Send + Unpin + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
    E: Into<PyErr> + Send + 'static,
{
    make(py, name, Box::pin(Deferred(setup)), false, Some(finish))
}

fn make<'py>(
    py: Python<'py>,
    name: &'static str,
    body: Pin<Box<dyn Body>>,
    done_at_call: bool,
    finish: Option<Finish>,
) -> PyResult<Bound<'py, PyAny>> {
    let c = NativeCoroutine { state: Mutex::new(State::Created(body)), name, done_at_call, finish };
    Ok(Bound::new(py, c)?.into_any())
}

fn reused() -> PyErr {
    PyRuntimeError::new_err("cannot reuse already awaited coroutine")
}

/// The end of a step that returned `value`: `__next__`'s "exhausted" for None (no exception made),
/// else `StopIteration(value)`.
fn finished(py: Python<'_>, value: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
    if value.is_none(py) {
        Ok(None)
    } else {
        Err(PyStopIteration::new_err((value,)))
    }
}

/// Where a coroutine stands, as `inspect.getcoroutinestate` names it.
#[derive(PartialEq)]
enum Phase {
    Created,
    Running,
    Suspended,
    Finished,
}

/// Whether an asyncio future is done (a future that cannot say counts as not done).
fn done(py: Python<'_>, fut: &Py<PyAny>) -> bool {
    fut.bind(py).call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(false)
}

impl NativeCoroutine {
    /// A future handed over to `await` is awaited without this coroutine, which only sees that it is done.
    fn phase(&self, py: Python<'_>) -> Phase {
        let handed_over = match &*self.lock() {
            State::Created(_) => return Phase::Created,
            State::Stepping => return Phase::Running,
            State::Waiting(_) | State::Ready(_) => return Phase::Suspended,
            State::Done => return Phase::Finished,
            State::HandedOver(fut) => fut.clone_ref(py),
        };
        if done(py, &handed_over) {
            Phase::Finished
        } else {
            Phase::Suspended
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the state for a step; the lock is not held while the step calls into Python.
    fn take(&self) -> PyResult<State> {
        let mut st = self.lock();
        if matches!(*st, State::Stepping) {
            return Err(PyValueError::new_err("coroutine already executing"));
        }
        Ok(std::mem::replace(&mut *st, State::Stepping))
    }

    fn put(&self, state: State) {
        *self.lock() = state;
    }

    /// The end of a step that produced `value`, through `finish` if set.
    fn finished(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        match self.finish {
            Some(finish) => finished(py, finish(py, value.into_bound(py))?),
            None => finished(py, value),
        }
    }

    /// One step: `Some(future)` to wait on (yielded to the task), `None` when it returned None,
    /// `Err(StopIteration(value))` when it returned a value, `Err(e)` when it raised.
    fn step(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let body = match self.take()? {
            State::Created(body) => body,
            // a task resumes its coroutine once the future it waits on is done: its result, or the
            // exception it carries
            State::Waiting(w) => match w.fut.bind(py).call_method0(intern!(py, "result")) {
                Ok(v) => match w.again {
                    // a `taking` body takes again: what it waited for may be there now
                    Some(body) => body,
                    None => {
                        self.put(State::Done);
                        return self.finished(py, v.unbind());
                    }
                },
                Err(e) if e.is_instance(py, &invalid_state(py)?) => return self.suspend(py, w), // not done yet
                Err(e) => {
                    self.put(State::Done);
                    return Err(e);
                }
            },
            State::Ready(v) => {
                self.put(State::Done);
                return self.finished(py, v);
            }
            State::HandedOver(fut) => {
                let busy = awaited_elsewhere(py, &fut);
                self.put(State::HandedOver(fut));
                return Err(busy);
            }
            State::Done => {
                self.put(State::Done);
                return Err(reused());
            }
            State::Stepping => unreachable!("take() refuses a coroutine that is stepping"),
        };
        match body.first(py) {
            Ok(First::Ready(v)) => {
                self.put(State::Done);
                self.finished(py, v)
            }
            Ok(First::Pending(w)) => self.suspend(py, w),
            Err(e) => {
                self.put(State::Done);
                Err(e)
            }
        }
    }

    /// Wait on `waiting`'s future: the step yields it to the task.
    fn suspend(&self, py: Python<'_>, waiting: Waiting) -> PyResult<Option<Py<PyAny>>> {
        let fut = waiting.fut.clone_ref(py);
        self.put(State::Waiting(waiting));
        // what `await future` sets before yielding it: tells the task to wait for this future
        fut.bind(py).setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(Some(fut))
    }

    /// End it: drop the Rust future, or abort its work and cancel the future its task waits on.
    fn stop(&self, py: Python<'_>) {
        let previous = std::mem::replace(&mut *self.lock(), State::Done);
        match previous {
            State::Waiting(w) => {
                if let Some((parked, _)) = &w.tokio {
                    parked.cancel();
                }
                // its done-callback forgets it in the completer
                let _ = w.fut.bind(py).call_method0(intern!(py, "cancel"));
            }
            // the completer's done-callback stops the Rust work
            State::HandedOver(fut) => {
                let _ = fut.bind(py).call_method0(intern!(py, "cancel"));
            }
            _ => {}
        }
    }
}

/// What `cr_frame` shows: the Rust work has no Python frame, but `inspect.getcoroutinestate` reads a
/// coroutine without one as finished, and Python 3.10 tells created from suspended by the frame's
/// `f_lasti`. So these are the frames of two generators that never run on: one never started, one paused
/// at its `yield` (kept alive here, so neither is ever closed). Their globals name this module, where
/// anyio looks for a task's module.
fn stand_in_frame(py: Python<'_>, started: bool) -> PyResult<Bound<'_, PyAny>> {
    static GENERATORS: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    let (created, suspended) = GENERATORS.get_or_try_init(py, || -> PyResult<_> {
        let globals = PyDict::new(py);
        globals.set_item("__name__", "tether._native")?;
        py.run(
            c"def native_coroutine_created():\n    yield\n\ndef native_coroutine_waiting():\n    yield\n",
            Some(&globals),
            None,
        )?;
        let created = globals.as_any().get_item("native_coroutine_created")?.call0()?;
        let waiting = globals.as_any().get_item("native_coroutine_waiting")?.call0()?;
        waiting.call_method0(intern!(py, "__next__"))?;
        Ok((created.unbind(), waiting.unbind()))
    })?;
    let generator = if started { suspended } else { created };
    generator.bind(py).getattr(intern!(py, "gi_frame"))
}

fn invalid_state(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static INVALID_STATE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    INVALID_STATE.import(py, "asyncio", "InvalidStateError").cloned()
}

/// Stepping a coroutine whose `await` handed its future over: as a coroutine says when awaited twice.
fn awaited_elsewhere(py: Python<'_>, fut: &Py<PyAny>) -> PyErr {
    match fut.bind(py).call_method0(intern!(py, "done")).and_then(|d| d.is_truthy()) {
        Ok(false) => PyRuntimeError::new_err("coroutine is being awaited already"),
        _ => reused(),
    }
}

/// The exception `throw(typ, val, tb)` raises, as a generator's `throw` builds it.
fn thrown(
    py: Python<'_>,
    typ: &Bound<'_, PyAny>,
    val: Option<&Bound<'_, PyAny>>,
    tb: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let val = val.filter(|v| !v.is_none());
    let exc = if typ.is_instance_of::<PyBaseException>() {
        if val.is_some() {
            return Err(PyTypeError::new_err("instance exception may not have a separate value"));
        }
        typ.clone()
    } else if typ.cast::<PyType>().is_ok_and(|t| t.is_subclass_of::<PyBaseException>().unwrap_or(false)) {
        match val {
            Some(v) if v.is_instance(typ)? => v.clone(),
            Some(v) if v.is_instance_of::<PyTuple>() => typ.call1(v.cast::<PyTuple>()?)?,
            Some(v) => typ.call1((v,))?,
            None => typ.call0()?,
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "exceptions must be classes or instances deriving from BaseException, not {}",
            typ.get_type().name()?
        )));
    };
    if let Some(tb) = tb.filter(|t| !t.is_none()) {
        exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    Ok(PyErr::from_value(exc))
}

#[pymethods]
impl NativeCoroutine {
    /// `await` takes the first step here. Pending, the awaiting coroutine gets the future's own
    /// iterator: its result comes back without a `StopIteration` made for it, and cancelling the
    /// awaiting task cancels the future, whose done-callback stops the Rust work.
    fn __await__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        match me.take()? {
            State::Created(body) if !body.steps_in_await() => {
                // the awaiting coroutine takes the first step
                me.put(State::Created(body));
                Ok(slf.into_any())
            }
            State::Created(body) => match body.first(py) {
                Ok(First::Ready(v)) => {
                    me.put(State::Ready(v));
                    Ok(slf.into_any())
                }
                Ok(First::Pending(w)) if me.finish.is_some() => {
                    // the awaiting coroutine steps this one, whose resumption runs `finish`
                    me.put(State::Waiting(w));
                    Ok(slf.into_any())
                }
                Ok(First::Pending(w)) => {
                    // `iter(future)` is its `__await__`, without the method lookup
                    let it = w.fut.bind(py).try_iter().map(Bound::into_any);
                    me.put(State::HandedOver(w.fut));
                    it
                }
                Err(e) => {
                    me.put(State::Done);
                    Err(e)
                }
            },
            State::HandedOver(fut) => {
                let busy = awaited_elsewhere(py, &fut);
                me.put(State::HandedOver(fut));
                Err(busy)
            }
            state @ (State::Waiting(_) | State::Ready(_)) => {
                me.put(state);
                Err(PyRuntimeError::new_err("coroutine is being awaited already"))
            }
            State::Done => {
                me.put(State::Done);
                Err(reused())
            }
            State::Stepping => unreachable!("take() refuses a coroutine that is stepping"),
        }
    }

    /// What `await` and a task call for each step (`send(None)` without the method call).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.step(py)
    }

    /// Take the next step, as a coroutine's ``send`` does (``value`` must be None before the first step).
    #[pyo3(signature = (value, /))]
    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if !value.is_none() && matches!(*self.lock(), State::Created(_)) {
            return Err(PyTypeError::new_err("can't send non-None value to a just-started coroutine"));
        }
        self.step(py)?.ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// Raise the exception here, where the coroutine waits: its Rust work stops first.
    #[pyo3(signature = (typ, val=None, tb=None, /))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let exc = thrown(py, typ, val, tb)?;
        self.stop(py);
        Err(exc)
    }

    /// Stop it where it waits: its Rust work stops, as after ``throw``, without raising here.
    fn close(&self, py: Python<'_>) {
        self.stop(py);
    }

    #[getter]
    fn __qualname__(&self) -> &'static str {
        self.name
    }

    /// True while a step runs, as for a coroutine.
    #[getter]
    fn cr_running(&self) -> bool {
        matches!(*self.lock(), State::Stepping)
    }

    /// True once stepped and until it returns: waiting on its future, or about to return a result.
    #[getter]
    fn cr_suspended(&self, py: Python<'_>) -> bool {
        self.phase(py) == Phase::Suspended
    }

    /// What ``inspect.getcoroutinestate`` returns, which reads only this from Python 3.15 on.
    #[getter]
    fn cr_state(&self, py: Python<'_>) -> &'static str {
        match self.phase(py) {
            Phase::Created => "CORO_CREATED",
            Phase::Running => "CORO_RUNNING",
            Phase::Suspended => "CORO_SUSPENDED",
            Phase::Finished => "CORO_CLOSED",
        }
    }

    /// The asyncio future it waits on, or None.
    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let fut = match &*self.lock() {
            State::Waiting(w) => w.fut.clone_ref(py),
            State::HandedOver(fut) => fut.clone_ref(py),
            _ => return None,
        };
        (!done(py, &fut)).then_some(fut)
    }

    /// A stand-in frame (no Python code runs in it) until it finished, then None, as for a coroutine.
    #[getter]
    fn cr_frame<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.phase(py) {
            Phase::Created => stand_in_frame(py, false).map(Some),
            Phase::Running | Phase::Suspended => stand_in_frame(py, true).map(Some),
            Phase::Finished => Ok(None),
        }
    }

    /// None: no Python code object runs it (asyncio then shows the coroutine's name in a task's repr).
    #[getter]
    fn cr_code(&self) -> Option<Py<PyAny>> {
        None
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.name.rsplit('.').next().unwrap_or(self.name)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> String {
        format!("<native coroutine object {} at {:#x}>", slf.get().name, slf.as_ptr() as usize)
    }
}

impl Drop for NativeCoroutine {
    fn drop(&mut self) {
        let state = std::mem::replace(self.state.get_mut().unwrap_or_else(|p| p.into_inner()), State::Done);
        match state {
            // its task went away without it (a coroutine driven by hand, then dropped)
            State::Waiting(Waiting { fut, tokio: Some((parked, completer)), .. }) => {
                parked.cancel();
                completer.push(Box::new(move |py, _| {
                    let _ = fut.bind(py).call_method0(intern!(py, "cancel"));
                }));
            }
            State::Created(body) if !self.done_at_call && super::super::python_alive() => {
                drop(body);
                // SAFETY: a pyclass's Rust value is dropped by its type's tp_dealloc, which runs with
                // the GIL held.
                let py = unsafe { Python::assume_attached() };
                // as a Python coroutine's finalizer does: the exception being raised, if any, is kept
                let raised = PyErr::take(py);
                let text = std::ffi::CString::new(format!("coroutine '{}' was never awaited", self.name));
                let warning = py.get_type::<PyRuntimeWarning>();
                if let Err(e) = PyErr::warn(py, warning.as_any(), &text.unwrap_or_default(), 1) {
                    e.write_unraisable(py, None);
                }
                if let Some(e) = raised {
                    e.restore(py);
                }
            }
            _ => {}
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeCoroutine>()?;
    let py = m.py();
    // what `asyncio.iscoroutine` (create_task, run_coroutine_threadsafe, gather, ...) checks
    let abc = py.import("collections.abc")?.getattr("Coroutine")?;
    abc.call_method1("register", (py.get_type::<NativeCoroutine>(),))?;
    Ok(())
}
