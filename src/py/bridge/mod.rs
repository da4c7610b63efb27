//! The async bridge: how a Rust future becomes something asyncio awaits, and how Rust awaits a Python
//! awaitable. The rest of the bindings use [`coroutine`] (what native `async` methods return),
//! [`await_py`], [`runtime`] and `completer::running_loop`; it uses nothing of theirs but the attach
//! gate (`py::with_python`), which `layers.rs` checks.
//!
//! **Threads.** Two kinds, and each does its own half:
//! - the *event-loop thread* (the one running the asyncio loop whose task drives the awaitable) does
//!   every Python-side step from the first on: the coroutine's first step (one poll of the Rust
//!   future, inside tokio's context but on this thread), building result objects and completing
//!   asyncio futures (the completer's drain), every done-callback, and starting and cancelling the
//!   Python tasks of `await_py`. The call that made the coroutine may have come from any thread
//!   (`run_coroutine_threadsafe`): it does only what its method documents as immediate;
//! - *tokio threads* (one worker, `tether-rt`, built on first use and again in a forked child; none at
//!   import) poll a future once its first poll returned pending and it was woken (`parked`), and hand
//!   its result to the loop's completer as a Rust value, without the GIL.
//!
//! **Locks.** The GIL is held by the loop thread for all of the above. A tokio thread attaches to
//! Python only through `py::with_python`, the one gate (`clippy.toml` forbids any other attach); the
//! bridge itself does so only to wake a loop without `add_reader`. The bridge's mutexes (a completer's
//! queue and pending map, a future's `Parked` stage, a `Slot`, a coroutine's state, an `await_py`
//! slot) are held for a swap or a push: never while user Python code runs, never across an await,
//! and no thread holding one attaches to Python. So the order is GIL, then a bridge mutex, never the
//! reverse.
//!
//! **Cancellation.** From Python: cancelling the task that awaits a native coroutine (its `throw`,
//! `close`, or the cancelled asyncio future's done-callback) drops the Rust future if it is still
//! parked, or aborts its tokio task, which drops it at its current await point; a coroutine never
//! stepped ran nothing, and dropping it drops the future unpolled. A result that arrives after the
//! cancellation is dropped on the loop thread. From Rust: dropping the future returned by `await_py`
//! (its own awaitable was cancelled, or a deadline passed) cancels the Python task, through the
//! completer's queue, so the dropping thread needs no GIL; a Python task that was cancelled gives the
//! Rust side `CancelledError`. A panic in a Rust future becomes the awaitable's `RustPanic` exception.
//!
//! **Interpreter shutdown.** `_at_exit` (registered with `atexit` by the package) closes the gate and
//! waits, with the GIL released, at most two seconds for attaches in progress. From then on tokio
//! threads never attach: results still in flight stay queued for a loop that no longer drains them,
//! an attach asked for gets `SHUTTING_DOWN`, and a coroutine dropped unawaited no longer warns. The
//! runtime is leaked, never dropped: its threads end with the process.

mod awaiting;
pub mod completer;
pub mod coroutine;
mod parked;
pub mod runtime;

pub use awaiting::{await_py, await_py_or, Orphan};
