//! `tether.connect` on the event loop's own thread. The WebSocket's bytes go through an asyncio
//! `Protocol` implemented here ([`link::Link`]): what is read (by the connection's own [`reader`] where
//! the loop can watch a descriptor, else by the transport) feeds the sans-I/O wire (TLS, the upgrade
//! answer, frames: `crate::ws::wire`) and the delivery/liveness core (`crate::ws::protocol`), frames
//! leave through the socket or `transport.write`, and every deadline (pings, open/close bounds, backoff,
//! heartbeats) is one deadline re-armed from the cores' next deadline ([`timer`]), in a timer set the
//! connections of a loop share, outside asyncio's heap ([`loop_timers`]).
//! Nothing in the data path crosses a thread: a message read is a Python object in the inbound buffer
//! before the read that brought it returns, a waiting `recv()` is woken by setting its future directly, and a
//! send is framed and written from the calling coroutine.
//!
//! * [`session`]: the reconnect supervisor (the retry rules of `crate::retry_state`, attempts, losses,
//!   the end), driven by the loop's callbacks.
//! * [`link`]: one TCP connection: the asyncio protocol, what the server sends, what is written;
//!   [`reader`]: its socket read from the loop's selector directly.
//! * [`hooks`]: `url_for`, `on_connect` (and its `Handshake`) and the heartbeat's callables, run on
//!   the loop.
//! * [`timer`]: the connection's next deadline; [`loop_timers`]: the deadlines of a loop's connections
//!   behind one alarm (a `timerfd` the loop watches, or one `call_later`).
//!
//! Every entry point holds the connection's lock only while it updates state and frames bytes; Python
//! is called (transport writes, futures, tasks, logs) after the lock is released, from the effects
//! ([`Fx`]) collected meanwhile, so a callback that re-enters the connection never deadlocks. A call
//! from another thread (a `send` from an audio thread) updates the state under the same lock and hands
//! the write to the loop with one `call_soon_threadsafe`.

mod exceptions;
mod hooks;
mod let_go;
mod link;
mod loop_timers;
mod reader;
mod session;
mod timer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::{MutexExt, PyOnceLock};

use crate::metrics::{Gauges, Instrument, Source, STATES};
use crate::reconnect::{Event, Events};
use crate::retry_state::RetryState;
use crate::ws::heartbeat::HeartbeatClock;
use crate::ws::protocol::{
    size_of, Failed, LossMeter, Message, Outcome, Protocol, ProtocolConfig, Ticket, CONFIRM_DELAY,
};
use crate::ws::upgrade::Endpoint;
use crate::ws::wire::Wire;
use crate::ws::{SendError, State, Stats, Terminal, WsConfig, WsError};

use super::bridge::coroutine::{self, Slot};
use super::events::LoopSub;

pub(crate) use exceptions::terminal_error;
use exceptions::EndLists;
pub(crate) use hooks::{on_connect_spec, BeatSpec, Hooks};

/// The classes of the module a connection hands to Python.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<hooks::LoopHandshake>()
}

const LOG: &str = "tether::ws";
/// Events a slow `events()` consumer may fall behind by before it misses some (and a warning says so).
const EVENTS_CAPACITY: usize = 64;
/// A send within this long of the previous write joins a batch written when the loop next runs
/// (once per loop iteration, or once `write_buffer_size` bytes wait), instead of a write of its own:
/// a burst of sends costs one system call, while a lone or paced send goes out at once.
const BURST_WINDOW: Duration = Duration::from_micros(10);

/// The event loop the connection runs on, and the contextvars its hooks run in.
pub(super) struct EventLoop {
    obj: Py<PyAny>,
    thread: std::thread::ThreadId,
    context: Py<PyAny>,
}

/// A waiter's result, turned into Python objects when it is set (on the loop thread).
pub(super) enum Res {
    Ok,
    Send(SendError),
    Ended,
    /// The on_connect handshake is over (or failed): its text.
    HsClosed(String),
}

/// Work for after the lock: logs, reports, calls into Python.
type Later = Box<dyn FnOnce(Python<'_>, &Arc<Conn>) + Send>;

/// Effects of an entry point, run once the lock is released.
#[derive(Default)]
pub(super) struct Fx {
    /// Bytes for a transport, in order.
    writes: Vec<link::Outgoing>,
    /// Transports to close (true: abort, without flushing).
    closes: Vec<(Py<PyAny>, bool)>,
    /// What reads a socket (`Link::reads`), to pause (true) or resume.
    reading: Vec<(Py<PyAny>, bool)>,
    /// Readers of links that ended, to stop (after the other effects).
    #[cfg(unix)]
    stops: Vec<Py<reader::Reader>>,
    resolve: Vec<(Arc<Slot>, Res)>,
    later: Vec<Later>,
    /// The deadline to arm in the loop's timers, and the one it replaces.
    timer: Option<timer::Rearm>,
    /// Write the batch when the loop next runs: Some(false) from the loop (`call_soon`); Some(true)
    /// marks effects made on another thread, handed to the loop (`call_soon_threadsafe`).
    uncork: Option<bool>,
}

impl Fx {
    pub(super) fn later(&mut self, f: impl FnOnce(Python<'_>, &Arc<Conn>) + Send + 'static) {
        self.later.push(Box::new(f));
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.closes.is_empty()
            && self.reading.is_empty()
            && self.stops_empty()
            && self.resolve.is_empty()
            && self.later.is_empty()
            && self.timer.is_none()
    }

    #[cfg(unix)]
    fn stops_empty(&self) -> bool {
        self.stops.is_empty()
    }

    #[cfg(not(unix))]
    fn stops_empty(&self) -> bool {
        true
    }

    /// What must still happen of effects whose connection is gone (let go while they waited for the
    /// loop): the sockets closed, and their waiters told. The rest needed the connection.
    fn release(self, py: Python<'_>, name: &str) {
        for (transport, abort) in self.closes {
            link::close_transport(py, transport.bind(py), abort);
        }
        #[cfg(unix)]
        for r in self.stops {
            r.get().stop(py);
        }
        let gone = Terminal::LetGo { undelivered: Default::default() };
        for (slot, res) in self.resolve {
            slot.set(
                py,
                if matches!(res, Res::Ok) { Ok(py.None()) } else { Err(terminal_error(py, &gone, name, true)) },
            );
        }
    }

    pub(super) fn outcomes(&mut self, done: Vec<(Arc<Slot>, Outcome)>) {
        for (slot, o) in done {
            let r = match o {
                Outcome::Sent => Res::Ok,
                Outcome::Failed(f) => Res::Send(SendError::Rejected(f)),
                Outcome::Flushed(f) if f.is_empty() => Res::Ok,
                Outcome::Flushed(f) => Res::Send(SendError::FlushFailed(f)),
            };
            self.resolve.push((slot, r));
        }
    }
}

/// What the connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not started.
    Idle,
    /// `url_for` runs.
    Target,
    /// TCP connect (`loop.create_connection`).
    Connecting,
    /// TLS and the upgrade request, until the answer.
    Upgrading,
    /// `on_connect` runs.
    Hook,
    /// Waiting for the server's first message (`first_message_timeout`).
    FirstMessage,
    /// Connected: the delivery core runs (also while closing).
    Live,
    /// Waiting before the next attempt.
    Backoff,
    Done,
}

/// One TCP connection of the current attempt (its protocol and wire events: `link`).
pub(crate) struct Link {
    pub id: u64,
    /// Set by `connection_made`.
    pub transport: Option<Py<PyAny>>,
    pub wire: Wire,
    pub ep: Endpoint,
    /// The transport asked us to stop writing (its buffer is above its high-water mark).
    pub paused_writing: bool,
    /// The socket's descriptor, written to directly while the transport holds nothing (see `write`).
    pub fd: Option<i32>,
    /// Bytes went through `transport.write` that it may still hold: until it says it holds none, the
    /// next bytes go the same way (behind them).
    pub buffered: bool,
    /// Reads the socket in the transport's stead (see `reader`), where the loop can watch it.
    #[cfg(unix)]
    reader: Option<Py<reader::Reader>>,
}

impl Link {
    pub(super) fn new(id: u64, wire: Wire, ep: Endpoint) -> Link {
        Link {
            id,
            transport: None,
            wire,
            ep,
            paused_writing: false,
            fd: None,
            buffered: false,
            #[cfg(unix)]
            reader: None,
        }
    }

    /// What reads the socket: the native reader, else the transport.
    pub(super) fn reads(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        #[cfg(unix)]
        if let Some(r) = &self.reader {
            return Some(r.clone_ref(py).into_any());
        }
        self.transport.as_ref().map(|t| t.clone_ref(py))
    }
}

/// How to leave a TCP connection.
pub(crate) enum Goodbye {
    /// Drop it now, without flushing (the peer is gone, or a bound passed).
    Abort,
    /// Flush what is written, then close.
    Close,
    /// Send this close frame first (failing the connection, or answering the server's close; None:
    /// without a body), then close; aborted if it has not closed within close_timeout.
    Frame(Option<(u16, String)>),
}

/// The current attempt's bounds and where it connects.
pub(super) struct Attempt {
    pub number: u32,
    pub strategy: Arc<str>,
    /// Abandoned if not connected by then (`connect_timeout`, the policy's deadline).
    pub stall_at: Option<Instant>,
    pub begun: Instant,
    /// `open_timeout` bounds `url_for`, TCP, TLS and the upgrade (redirects included).
    pub open_by: Instant,
    /// `open_timeout` bounds `on_connect`, from its start.
    pub hook_by: Option<Instant>,
    pub first_by: Option<Instant>,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub redirects: usize,
    /// No connection has succeeded yet: answers that retrying cannot change end the first connect.
    pub first: bool,
    /// The Python task of this phase (url_for, create_connection, on_connect): cancelled when the
    /// attempt ends first.
    pub task: Option<Py<PyAny>>,
    /// A message was read before the attempt counted as connected (it satisfies first_message_timeout).
    pub first_seen: bool,
}

impl Attempt {
    /// A redirect answer: follow it within the attempt, or end the attempt saying why not.
    pub(super) fn follow(&mut self, status: u16, location: &str) -> Result<usize, WsError> {
        let a = self;
        let refused = |why: String| {
            let mut e = WsError::retry(format!("HTTP {status} redirect not followed: {why}"));
            e.http_status = Some(status);
            crate::ws::error::not_retried_first(e, a.first)
        };
        if a.redirects == crate::ws::redirect::MAX_REDIRECTS {
            return Err(refused(format!("more than {} redirects", crate::ws::redirect::MAX_REDIRECTS)));
        }
        let hop = crate::ws::redirect::follow(&a.url, location).map_err(refused)?;
        a.redirects += 1;
        let before = a.headers.len();
        crate::ws::redirect::headers_for(&hop, &mut a.headers);
        a.url = hop.url;
        Ok(before - a.headers.len())
    }
}

/// The on_connect hook's view of the socket.
#[derive(Default)]
pub(super) struct HsState {
    pub id: u64,
    /// When the hook started (its duration is measured when it succeeds).
    pub began: Option<Instant>,
    pub queue: VecDeque<(Py<PyAny>, usize)>,
    pub readable: Vec<Arc<Slot>>,
    /// Why the handshake is over; every later call fails with it.
    pub ended: Option<String>,
    /// The server ended the connection behind the messages still queued: applied once the hook took
    /// them and waits for more, or returned (see `Conn::end_read`).
    pub pending_end: Option<(WsError, Goodbye)>,
}

pub(super) struct Inner {
    pub proto: Protocol<Arc<Slot>>,
    pub retry: RetryState,
    pub phase: Phase,
    pub attempt: Option<Box<Attempt>>,
    pub link: Option<Box<Link>>,
    pub next_id: u64,
    /// Transports closed after a goodbye frame, aborted if still open at their deadline.
    pub draining: Vec<(u64, Py<PyAny>, Instant)>,
    pub inbound: VecDeque<(Py<PyAny>, usize)>,
    pub inbound_bytes: usize,
    pub reader_paused: bool,
    pub readable: Vec<Arc<Slot>>,
    pub room: Vec<Arc<Slot>>,
    pub started: Vec<Arc<Slot>>,
    pub closed: Vec<Arc<Slot>>,
    pub hs: Option<Box<HsState>>,
    pub close_requested: bool,
    /// A live close waits for the peer's close frame until then.
    pub close_by: Option<Instant>,
    /// Whatever happens, the close ends by then (close_timeout + slack).
    pub close_hard_by: Option<Instant>,
    pub settle_at: Option<Instant>,
    pub retry_at: Option<Instant>,
    pub hb: Option<HeartbeatClock>,
    pub hb_candidates: Vec<Py<PyAny>>,
    pub timer: timer::Timer,
    /// Sends wait for the write scheduled at the next loop iteration.
    pub corked: bool,
    /// Effects made on other threads wait for the loop: one hand-over is scheduled, these join it.
    pub handing_over: bool,
    pub handed: Vec<Fx>,
    pub last_write: Option<Instant>,
    pub connected_at: Option<Instant>,
    /// A connection succeeded once (the reports that count `connects` may not have run yet).
    pub connected_once: bool,
    pub live: bool,
    pub out: Vec<u8>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pings_sent: u64,
    pub watchdog_forward: Option<tokio::task::JoinHandle<()>>,
}

/// One `tether.connect` connection. Owned by its Python object; asyncio's callbacks hold it weakly,
/// so a connection dropped by the application closes its socket.
pub struct Conn {
    pub cfg: WsConfig,
    pub name: String,
    hooks: Hooks,
    me: Weak<Conn>,
    inner: Mutex<Inner>,
    state: AtomicU8,
    terminal: OnceLock<Terminal>,
    /// The end's `.messages` and `.failures`, made for its first exception (`end_error`).
    end_lists: PyOnceLock<EndLists>,
    connects: AtomicU64,
    losses: AtomicU64,
    last_loss: Mutex<Option<String>>,
    /// `events()` subscriptions, fed on the loop thread.
    subs: Mutex<Vec<Weak<LoopSub>>>,
    report: OnceLock<Events>,
    el: OnceLock<EventLoop>,
    started: AtomicBool,
    opened: AtomicBool,
    /// Where its reports, losses and `on_connect` runs are counted (`tether.metrics`); None: not
    /// measured. It reports its own gauges (`Source`).
    pub(super) metrics: Option<Arc<crate::metrics::Loop>>,
    /// What waiters that went away left behind (see `Orphans`).
    orphans: Mutex<Orphans>,
    has_orphans: AtomicBool,
}

/// Left by waiters that went away (a flush cancelled by a timeout, a task cancelled after its outcome
/// arrived), possibly from a deallocation, so kept under a lock of their own and applied at the
/// connection's next entry point (`with`) or its end (`finish`).
#[derive(Default)]
struct Orphans {
    /// Flushes nobody waits on: withdrawn from the send queue.
    withdrawn: Vec<Ticket>,
    /// Failures that reached no caller: reported by the next flush covering them, or the end.
    failures: Vec<Failed>,
}

/// The calling thread's id: `thread::current()` takes a reference count each call, and every send
/// asks which thread it runs on.
fn current_thread() -> std::thread::ThreadId {
    thread_local! {
        static ID: std::thread::ThreadId = std::thread::current().id();
    }
    ID.with(|id| *id)
}

/// A per-connection random value that tells its pings from any other's (not a secret).
fn nonce() -> u64 {
    rand::random()
}

impl Conn {
    pub fn new(cfg: WsConfig, name: String, hooks: Hooks, metrics: Option<Arc<crate::metrics::Loop>>) -> Arc<Conn> {
        let proto_cfg = ProtocolConfig {
            ping_interval: cfg.ping_interval,
            ping_timeout: cfg.ping_timeout,
            send_buffer: cfg.send_buffer,
            max_message_size: cfg.max_message_size,
            poison_after: cfg.poison_after,
            confirm_delay: CONFIRM_DELAY,
            metrics: metrics.clone().map(|m| m as Arc<dyn LossMeter>),
        };
        let retry = RetryState::new(&cfg.reconnect);
        let conn = Arc::new_cyclic(|me| Conn {
            inner: Mutex::new(Inner {
                proto: Protocol::new(proto_cfg, nonce()),
                retry,
                phase: Phase::Idle,
                attempt: None,
                link: None,
                next_id: 1,
                draining: Vec::new(),
                inbound: VecDeque::new(),
                inbound_bytes: 0,
                reader_paused: false,
                readable: Vec::new(),
                room: Vec::new(),
                started: Vec::new(),
                closed: Vec::new(),
                hs: None,
                close_requested: false,
                close_by: None,
                close_hard_by: None,
                settle_at: None,
                retry_at: None,
                hb: None,
                hb_candidates: Vec::new(),
                timer: timer::Timer::default(),
                corked: false,
                handing_over: false,
                handed: Vec::new(),
                last_write: None,
                connected_at: None,
                connected_once: false,
                live: false,
                out: Vec::new(),
                messages_in: 0,
                messages_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                pings_sent: 0,
                watchdog_forward: None,
            }),
            cfg,
            name,
            hooks,
            me: me.clone(),
            state: AtomicU8::new(State::Idle as u8),
            terminal: OnceLock::new(),
            end_lists: PyOnceLock::new(),
            connects: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            last_loss: Mutex::new(None),
            subs: Mutex::new(Vec::new()),
            report: OnceLock::new(),
            el: OnceLock::new(),
            started: AtomicBool::new(false),
            opened: AtomicBool::new(false),
            metrics,
            orphans: Mutex::new(Orphans::default()),
            has_orphans: AtomicBool::new(false),
        });
        if conn.metrics.is_some() {
            crate::metrics::observe(Arc::downgrade(&conn) as Weak<dyn Source>);
        }
        conn
    }

    pub(super) fn lock(&self, py: Python<'_>) -> MutexGuard<'_, Inner> {
        self.inner.lock_py_attached(py).unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::SeqCst))
    }

    pub(super) fn set_state(&self, s: State) {
        let old = self.state.swap(s as u8, Ordering::SeqCst);
        if old != s as u8 {
            if let Some(wd) = &self.hooks.watchdog {
                wd.set_state(s.as_str());
            }
        }
    }

    pub fn terminal(&self) -> Option<Terminal> {
        self.terminal.get().cloned()
    }

    /// The exception of the end `t`. For this connection's own end, every exception shares the lists
    /// of what it never delivered, made once (ending with N sends waiting on a backlog of M made N x M
    /// objects on the loop thread: seconds). Another end (`Terminal::closed()` of a close requested
    /// before the end is set) is made alone.
    pub(crate) fn end_error(&self, py: Python<'_>, t: &Terminal) -> PyErr {
        let own = self.terminal.get().is_some_and(|own| std::ptr::eq(own.undelivered(), t.undelivered()));
        if !own {
            return terminal_error(py, t, &self.name, self.opened());
        }
        match self.end_lists.get_or_try_init(py, || EndLists::of(py, t.undelivered())) {
            Ok(lists) => exceptions::terminal_error_with(py, t, &self.name, self.opened(), lists),
            Err(e) => e,
        }
    }

    fn send_error(&self, py: Python<'_>, e: &SendError) -> PyErr {
        match e {
            SendError::Ended(t) => self.end_error(py, t),
            e => exceptions::send_error(py, e, &self.name, &self.cfg, self.opened()),
        }
    }

    pub fn was_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }

    /// Whether it was established at least once: a give-up then reports the last failure as a
    /// `ConnectionClosed`, else as a `ConnectFailed` (set when it connects, before the reports).
    pub fn opened(&self) -> bool {
        self.opened.load(Ordering::SeqCst)
    }

    /// A new `events()` subscription: every event from now on (an ended one once the connection ended).
    pub fn subscribe(&self, py: Python<'_>) -> Arc<LoopSub> {
        let sub = LoopSub::new(EVENTS_CAPACITY, self.cfg.reconnect.logger.clone());
        let mut subs = self.subs.lock_py_attached(py).unwrap_or_else(|p| p.into_inner());
        if self.terminal.get().is_some() {
            drop(subs);
            for slot in sub.end() {
                slot.set(py, Ok(py.None()));
            }
            return sub;
        }
        subs.retain(|s| s.strong_count() > 0);
        subs.push(Arc::downgrade(&sub));
        sub
    }

    /// Deliver `ev` to every subscription, on the loop thread.
    pub(super) fn emit(&self, py: Python<'_>, ev: &Event) {
        let subs: Vec<Arc<LoopSub>> = {
            let mut subs = self.subs.lock_py_attached(py).unwrap_or_else(|p| p.into_inner());
            if matches!(ev, Event::Closed) {
                std::mem::take(&mut *subs).iter().filter_map(Weak::upgrade).collect()
            } else {
                subs.iter().filter_map(Weak::upgrade).collect()
            }
        };
        for sub in subs {
            for slot in sub.push(ev) {
                slot.set(py, Ok(py.None()));
            }
        }
    }

    /// The reporting sink of `crate::reconnect::report`: events, plus the state they imply.
    pub(super) fn report(&self) -> &Events {
        self.report.get_or_init(|| {
            let me = self.me.clone();
            let events = Events::none().with_hook(move |ev| {
                let Some(c) = me.upgrade() else { return };
                super::with_python(|py| c.emit(py, ev));
                // reports of the attempt that ended the connection come after its end: the state stays
                let ended = c.terminal.get().is_some();
                match ev {
                    Event::Connecting { .. } if c.connects.load(Ordering::SeqCst) > 0 && !ended => {
                        c.set_state(State::Reconnecting)
                    }
                    Event::Connected { .. } => {
                        c.connects.fetch_add(1, Ordering::SeqCst);
                        if !ended {
                            c.set_state(State::Connected)
                        }
                    }
                    Event::ConnectionLost { reason } => {
                        c.losses.fetch_add(1, Ordering::SeqCst);
                        *c.last_loss.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                        if !ended {
                            c.set_state(State::Reconnecting)
                        }
                    }
                    _ => {}
                }
            });
            events.measured(self.metrics.clone())
        })
    }

    /// Whether the caller runs on the connection's event loop thread.
    pub(super) fn on_loop_thread(&self) -> bool {
        self.el.get().is_some_and(|el| el.thread == current_thread())
    }

    /// The loop its waiters are set on (see `LoopHint`).
    pub(super) fn hint(&self, py: Python<'_>) -> Option<coroutine::LoopHint> {
        self.el.get().map(|el| coroutine::LoopHint { event_loop: el.obj.clone_ref(py), thread: el.thread })
    }

    pub(super) fn event_loop<'py>(&self, py: Python<'py>) -> Option<&Bound<'py, PyAny>> {
        self.el.get().map(|el| el.obj.bind(py))
    }

    pub(super) fn context<'py>(&self, py: Python<'py>) -> Option<&Bound<'py, PyAny>> {
        self.el.get().map(|el| el.context.bind(py))
    }

    /// Run the effects of an entry point (the lock is released).
    pub(super) fn run(self: &Arc<Self>, py: Python<'_>, fx: Fx) {
        #[cfg(unix)]
        let Fx { writes, closes, reading, stops, resolve, later, timer, uncork } = fx;
        #[cfg(not(unix))]
        let Fx { writes, closes, reading, resolve, later, timer, uncork } = fx;
        // whether a write may go straight to the socket was decided when it was framed; bytes the
        // transport holds since (a write of an earlier batch, or of this one, the socket took only
        // part of) go first, so a write on that link now queues behind them instead of jumping them
        let mut held =
            if writes.is_empty() { None } else { self.lock(py).link.as_ref().filter(|l| l.buffered).map(|l| l.id) };
        for mut w in writes {
            if held == Some(w.id) {
                w.fd = None;
            }
            let id = w.id;
            if link::write(py, self, w) {
                held = Some(id);
            }
        }
        for (transport, paused) in reading {
            let method = if paused { pyo3::intern!(py, "pause_reading") } else { pyo3::intern!(py, "resume_reading") };
            let _ = transport.bind(py).call_method0(method);
        }
        for (transport, abort) in closes {
            link::close_transport(py, transport.bind(py), abort);
        }
        for (slot, res) in resolve {
            // what a waiter that went away must not take with it
            let back: Vec<Failed> = match &res {
                Res::Send(SendError::Rejected(f)) => vec![f.clone()],
                Res::Send(SendError::FlushFailed(fs)) => fs.clone(),
                _ => vec![],
            };
            let r = match res {
                Res::Ok => Ok(py.None()),
                Res::Send(e) => Err(self.send_error(py, &e)),
                Res::Ended => {
                    let t = self.terminal().unwrap_or_else(Terminal::closed);
                    Err(self.end_error(py, &t))
                }
                Res::HsClosed(text) => Err(super::errors::Class::ConnectionClosed.err(py, &text, None)),
            };
            if back.is_empty() {
                slot.set(py, r);
            } else {
                let me = self.me.clone();
                let give_back = Box::new(move || {
                    if let Some(c) = me.upgrade() {
                        c.give_back(back);
                    }
                });
                slot.set_returning(py, r, Some(give_back));
            }
        }
        if let (Some(r), Some(el)) = (timer, self.event_loop(py)) {
            // the new deadline first: a set left empty for a moment would close
            if let Some((id, at)) = r.arm {
                loop_timers::schedule(py, el, id, at, self.me.clone());
            }
            if let Some(id) = r.cancel {
                loop_timers::cancel(py, el, id);
            }
        }
        if uncork == Some(false) {
            link::schedule_uncork(py, self);
        }
        #[cfg(unix)]
        for r in stops {
            r.get().stop(py);
        }
        for f in later {
            f(py, self);
        }
    }

    /// Lock, update, unlock, run the effects: the shape of every entry point. Off the loop's thread
    /// (a send from an audio thread) the effects are not run there: asyncio's objects belong to the
    /// loop, so they are handed to it with one `call_soon_threadsafe`, which also writes what was queued.
    pub(super) fn with<R>(self: &Arc<Self>, py: Python<'_>, f: impl FnOnce(&Arc<Self>, &mut Inner, &mut Fx) -> R) -> R {
        let mut fx = Fx::default();
        let on_loop = self.el.get().is_none() || self.on_loop_thread();
        let r = {
            let mut st = self.lock(py);
            if self.has_orphans.load(Ordering::Acquire) {
                self.adopt_orphans(&mut st);
            }
            let r = f(self, &mut st, &mut fx);
            if on_loop {
                self.service(py, &mut st, &mut fx, Instant::now());
            } else if !fx.is_empty() || fx.uncork.is_some() {
                // one hand-over per loop iteration however many calls come in meanwhile
                if st.handing_over {
                    fx.uncork = None;
                    st.handed.push(std::mem::take(&mut fx));
                    fx = Fx::default();
                } else {
                    st.handing_over = true;
                    fx.uncork = Some(true);
                }
            }
            r
        };
        if on_loop {
            self.run(py, fx);
        } else if fx.uncork.is_some() {
            link::hand_over(py, self, fx);
        }
        r
    }

    // -- the application's calls ------------------------------------------------------------------

    /// Queue `msg` now (call order), from any thread. Returns what its send waits for.
    pub fn send<'py>(self: &Arc<Self>, py: Python<'py>, msg: Message) -> PyResult<Bound<'py, PyAny>> {
        let on_loop = self.on_loop_thread();
        let queued = self.with(py, |c, st, fx| -> Result<Option<Arc<Slot>>, SendError> {
            if c.terminal.get().is_some() {
                return Err(SendError::Ended(c.terminal().unwrap_or_else(Terminal::closed)));
            }
            if st.close_requested {
                return Err(SendError::Ended(Terminal::closed()));
            }
            let size = size_of(&msg);
            // room first: a message over the write mark waits for its write, which does not make room
            // (a sender of large messages that awaits each would meet SendBufferFull)
            let wait = if st.proto.pending() >= c.cfg.send_buffer / 2 {
                st.proto.push_untracked(msg)?;
                let slot = Slot::new();
                st.room.push(slot.clone());
                Some(slot)
            } else if st.proto.unwritten_bytes() + size > c.cfg.write_high_water {
                let slot = Slot::new();
                st.proto.push(msg, slot.clone()).map_err(|(e, _)| e)?;
                Some(slot)
            } else {
                st.proto.push_untracked(msg)?;
                None
            };
            c.wrote_more(py, st, fx, on_loop);
            Ok(wait)
        });
        match queued {
            Ok(None) => coroutine::resolved(py, "Connection.send", true, Ok(py.None())),
            Ok(Some(slot)) => coroutine::on_slot(py, "Connection.send", true, slot, self.hint(py)),
            Err(e) => Err(self.send_error(py, &e)),
        }
    }

    /// A message was queued: write it now, or with the batch the loop writes next (see
    /// `BURST_WINDOW`); from another thread, the loop writes it.
    fn wrote_more(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, on_loop: bool) {
        if st.phase != Phase::Live {
            return;
        }
        if !on_loop {
            // written by the loop when it takes the hand-over (`with`)
            fx.uncork = Some(true);
            return;
        }
        let now = Instant::now();
        if st.corked {
            if st.proto.unwritten_bytes() >= self.cfg.write_buffer_size {
                self.pump(py, st, fx, now);
            }
            return;
        }
        if st.last_write.is_some_and(|t| now.saturating_duration_since(t) < BURST_WINDOW) {
            st.corked = true;
            fx.uncork = Some(false);
            return;
        }
        self.pump(py, st, fx, now);
    }

    /// The batch the loop writes once per iteration while sends come in bursts.
    pub(super) fn uncork(self: &Arc<Self>, py: Python<'_>) {
        self.with(py, |c, st, fx| {
            st.corked = false;
            c.pump(py, st, fx, Instant::now());
        });
    }

    pub fn flush<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let slot = Slot::new();
        let r = self.with(py, |c, st, fx| {
            if c.terminal.get().is_some() {
                return Err(SendError::Ended(c.terminal().unwrap_or_else(Terminal::closed)));
            }
            let (ticket, done) = st.proto.flush(slot.clone(), Instant::now());
            // a flush whose caller stops waiting (a timeout) leaves the send queue at once, and what
            // it would have reported goes to the next flush or the end
            let me = c.me.clone();
            slot.on_withdraw(Box::new(move || {
                if let Some(c) = me.upgrade() {
                    c.orphaned(|o| o.withdrawn.push(ticket));
                }
            }));
            fx.outcomes(done);
            // the confirming ping goes out now rather than after the confirm delay
            if st.proto.ping_due() {
                c.wrote_more(py, st, fx, c.on_loop_thread());
            }
            Ok(())
        });
        match r {
            Ok(()) => coroutine::on_slot(py, "Connection.flush", false, slot, self.hint(py)),
            Err(e) => Err(self.send_error(py, &e)),
        }
    }

    /// A buffered message, None if there is none, `Err` once the connection ended and none is left.
    pub fn try_recv(self: &Arc<Self>, py: Python<'_>) -> Result<Option<Py<PyAny>>, Terminal> {
        let mut st = self.lock(py);
        if let Some((m, size)) = st.inbound.pop_front() {
            st.inbound_bytes -= size;
            if st.reader_paused
                && st.inbound.len() <= self.cfg.recv_buffer / 2
                && st.inbound_bytes <= self.cfg.recv_buffer_bytes / 2
            {
                drop(st);
                link::resume_reading(py, self);
            } else if st.inbound.is_empty() && st.inbound.capacity() > 64 {
                st.inbound = VecDeque::new();
            }
            return Ok(Some(m));
        }
        match self.terminal.get() {
            Some(t) => Err(t.clone()),
            None => Ok(None),
        }
    }

    /// Resolves once `try_recv` has something to return; consumes nothing.
    pub fn wait_readable<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let slot = {
            let mut st = self.lock(py);
            if !st.inbound.is_empty() || self.terminal.get().is_some() {
                None
            } else {
                let slot = Slot::new();
                prune(py, &mut st.readable);
                st.readable.push(slot.clone());
                Some(slot)
            }
        };
        match slot {
            None => coroutine::resolved(py, "Connection.wait_readable", false, Ok(py.None())),
            Some(slot) => coroutine::on_slot(py, "Connection.wait_readable", false, slot, self.hint(py)),
        }
    }

    /// Record what a waiter that went away left behind, for the next entry point.
    fn orphaned(&self, f: impl FnOnce(&mut Orphans)) {
        let mut o = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut o);
        self.has_orphans.store(true, Ordering::Release);
    }

    /// Failures of a send or flush outcome whose caller was gone when it arrived: the next flush or
    /// the end reports them; once the connection has ended (its error made already), they are logged
    /// instead, so none is dropped silently.
    fn give_back(&self, failures: Vec<Failed>) {
        let late = {
            let mut o = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            // under the lock `finish` makes the terminal error under
            if self.terminal.get().is_none() {
                o.failures.extend(failures);
                self.has_orphans.store(true, Ordering::Release);
                return;
            }
            failures
        };
        for f in late {
            tracing::warn!(target: LOG, logger = self.cfg.reconnect.logger.as_deref(), seq = f.seq,
                "message #{} was removed from the send queue ({}) and the flush that was to report it was cancelled \
                 as the connection ended", f.seq, f.why.message());
        }
    }

    /// Set the terminal outcome (once), with what was never delivered: under the orphans' lock, so a
    /// failure given back meanwhile is either in the list or logged (`give_back`).
    pub(super) fn set_terminal(&self, st: &mut Inner, term: Terminal) -> (Vec<Arc<Slot>>, Terminal) {
        let mut o = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        Self::adopt(st, std::mem::take(&mut *o));
        let (pending, undelivered) = st.proto.finish();
        let term = term.with_undelivered(undelivered);
        let _ = self.terminal.set(term.clone());
        (pending, term)
    }

    /// Apply what waiters that went away left behind (under the connection's lock).
    fn adopt_orphans(&self, st: &mut Inner) {
        let o = {
            let mut o = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            self.has_orphans.store(false, Ordering::Release);
            std::mem::take(&mut *o)
        };
        Self::adopt(st, o);
    }

    fn adopt(st: &mut Inner, o: Orphans) {
        for t in o.withdrawn {
            drop(st.proto.cancel_flush(t));
        }
        st.proto.restore(o.failures);
    }

    pub fn stats(&self, py: Python<'_>) -> Stats {
        let st = self.lock(py);
        let connects = self.connects.load(Ordering::Relaxed);
        Stats {
            state: self.state(),
            messages_in: st.messages_in,
            messages_out: st.messages_out,
            bytes_in: st.bytes_in,
            bytes_out: st.bytes_out,
            connects,
            reconnects: connects.saturating_sub(1),
            losses: self.losses.load(Ordering::Relaxed),
            pings_sent: st.pings_sent,
            last_rtt: st.proto.last_rtt(),
            send_queue: st.proto.pending(),
            recv_queue: st.inbound.len(),
            last_loss: self.last_loss.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            connected_for: if st.live { st.connected_at.map(|t| t.elapsed()) } else { None },
        }
    }
}

/// Forget waiters nobody waits on any more (cancelled receives), so a loop of timed-out receives
/// does not grow the list until the next message.
fn prune(py: Python<'_>, slots: &mut Vec<Arc<Slot>>) {
    if slots.len() >= 16 {
        slots.retain(|s| !s.abandoned(py));
    }
}

/// A measured connection's gauges (`tether.metrics`), read at collection: its state, and what it
/// accepted that the peer has not confirmed yet. Its counters come from its reports (`report`), its
/// protocol's losses and its `on_connect` hook.
impl Source for Conn {
    fn observe(&self, instrument: Instrument, out: &mut Gauges) {
        let Some(m) = &self.metrics else { return };
        match instrument {
            Instrument::Connections => out.states(m.labels(), instrument, &STATES, self.state().as_str()),
            Instrument::SendsUnconfirmed => {
                if let Some(n) = super::with_python(|py| self.lock(py).proto.pending()) {
                    out.add(m.labels(), instrument, None, n as f64);
                }
            }
            _ => {}
        }
    }
}

/// A watchdog alarm, emitted on the connection's loop.
#[pyclass(module = "tether._native", frozen)]
pub(super) struct Emit {
    pub conn: Weak<Conn>,
    pub ev: crate::reconnect::Event,
}

#[pymethods]
impl Emit {
    fn __call__(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            c.emit(py, &self.ev);
        }
    }
}

/// `close()` from another thread, run on the loop.
#[pyclass(module = "tether._native", frozen)]
pub(super) struct CloseSoon {
    pub conn: Weak<Conn>,
}

#[pymethods]
impl CloseSoon {
    fn __call__(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            c.with(py, |c, st, fx| c.request_close(py, st, fx, Instant::now()));
        }
    }
}
