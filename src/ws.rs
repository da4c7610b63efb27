//! The supervised signaling WebSocket, which must notice a dead link and come back by itself: a
//! tokio-tungstenite client driven by the generic reconnect loop. This file is the I/O shell: the delivery, liveness, close-handshake and
//! poison rules live in the sans-I/O `ws_protocol`, which the session below feeds and obeys.
//!
//! * Loss detection: close frame, read/write error or EOF after the handshake, and the ping rule of
//!   `ws_protocol` (a ping not echoed within `ping_timeout`). TCP keepalive and TCP_USER_TIMEOUT back
//!   it up in the kernel, which also covers the time the reader is paused because the application does
//!   not read. Each loss ends one attempt, so the loop reports it exactly once.
//! * Every step is bounded: URL minting + TCP connect + TLS + WebSocket handshake by `open_timeout`, the
//!   first server message by `first_message_timeout`, the outage by the policy's budgets, close by
//!   `close_timeout`.
//! * Sends are queued (bounded by `send_buffer`) and written in order. A send resolves at once while
//!   the bytes queued and not yet written stay under `write_high_water` and less than half of
//!   `send_buffer` is unconfirmed (flow control as in asyncio's transports: no round trip to the
//!   writer per send); above the first mark, once its message was written; above the second, once a
//!   quarter at most is unconfirmed. A flush resolves once the peer confirmed everything before it. Unconfirmed messages are re-sent after a
//!   reconnect (at-least-once), except those failed by the poison rule.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;

use crate::reconnect::{self, Attempt, Event, Events, GiveUpReason};
use crate::redact::redact_url;
use crate::watchdog::Watchdog;
use crate::ws_close_tap::{CloseSeen, Tap};
use crate::ws_handshake::{run_on_connect, HandshakeInfo, OnConnectHook};
use crate::ws_heartbeat::{self, HeartbeatConfig, HeartbeatWatch};
use crate::ws_protocol::valid_close_code;
use crate::ws_protocol::{
    size_of, Ending, Failed, Outcome, PeerClose, Protocol, ProtocolConfig, PushError, Ticket, Undelivered, Write,
    CONFIRM_DELAY,
};
use crate::ws_redirect;
use crate::ws_wait::{self, Waiting};

const LOG: &str = "tether::ws";
/// Events a slow `events()` consumer may fall behind by before it misses some (and a warning says so).
const EVENTS_CAPACITY: usize = 64;

#[derive(Clone)]
pub struct WsConfig {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub open_timeout: Duration,
    pub close_timeout: Duration,
    pub first_message_timeout: Option<Duration>,
    pub send_buffer: usize,
    /// Largest message, in bytes of payload, sent or received (tungstenite's frame limit follows it).
    pub max_message_size: usize,
    /// tungstenite's read buffer, allocated per connection (grows for bigger messages), and the size
    /// of written frames buffered before a write (a flush writes them anyway).
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    /// Payload bytes queued and not yet written above which `send` waits until its message is written.
    pub write_high_water: usize,
    /// A message in flight at this many consecutive connection losses is failed, not re-sent.
    pub poison_after: u32,
    /// Inbound messages, and bytes, buffered before the reader pauses (pong deadlines are suspended
    /// meanwhile; pings keep going out, so the kernel's TCP_USER_TIMEOUT still catches a black hole).
    pub recv_buffer: usize,
    pub recv_buffer_bytes: usize,
    pub fatal_close_codes: Vec<u16>,
    /// A close frame from the server with one of these codes ends the connection as closed (`recv`
    /// and `async for` end, state "closed"): not retried, and not a give-up.
    pub final_close_codes: Vec<u16>,
    pub fatal_http_statuses: Vec<u16>,
    pub reconnect: reconnect::Config,
    /// Fed with the connection's states ("connecting", "connected", "reconnecting", "closed",
    /// "failed"); its alarms are forwarded into the connection's events.
    pub watchdog: Option<Arc<Watchdog>>,
    /// Runs after every WebSocket handshake, before queued messages are written; the attempt counts as
    /// connected once it returns Ok. Bounded by `open_timeout`.
    pub on_connect: Option<OnConnectHook>,
    /// In-band liveness: a missing reply is a loss ("heartbeat timeout").
    pub heartbeat: Option<HeartbeatConfig>,
    /// Trusted CAs for wss:// (`ws_tls::client_config`); None = the bundled Mozilla roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The URL and header values may carry credentials: redacted, like everything tether shows.
fn redacted_headers(headers: &[(String, String)]) -> Vec<(&str, String)> {
    headers.iter().map(|(k, v)| (k.as_str(), crate::redact::redact_header(k, v))).collect()
}

impl fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConfig")
            .field("url", &redact_url(&self.url))
            .field("headers", &redacted_headers(&self.headers))
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("open_timeout", &self.open_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("first_message_timeout", &self.first_message_timeout)
            .field("send_buffer", &self.send_buffer)
            .field("max_message_size", &self.max_message_size)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("write_buffer_size", &self.write_buffer_size)
            .field("poison_after", &self.poison_after)
            .field("recv_buffer", &self.recv_buffer)
            .field("recv_buffer_bytes", &self.recv_buffer_bytes)
            .field("fatal_close_codes", &self.fatal_close_codes)
            .field("final_close_codes", &self.final_close_codes)
            .field("fatal_http_statuses", &self.fatal_http_statuses)
            .field("reconnect", &self.reconnect)
            .field("on_connect", &self.on_connect)
            .field("heartbeat", &self.heartbeat)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

/// Default bound of the first connect (`reconnect::Config::connect_timeout`): long enough for a server
/// that is restarting or a slow network (three `open_timeout`s), short enough that a client pointed at
/// a server that is down, or a URL that is wrong, is told so.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            url: String::new(),
            headers: vec![],
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            open_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            first_message_timeout: None,
            send_buffer: 1024,
            max_message_size: 16 << 20,
            read_buffer_size: 4 << 10,
            write_buffer_size: 16 << 10,
            write_high_water: 64 << 10,
            poison_after: 3,
            recv_buffer: 65_536,
            recv_buffer_bytes: 64 << 20,
            fatal_close_codes: vec![1008],
            // A signaling client is meant to stay connected: load balancers, proxies and servers being
            // redeployed close with 1000 or 1001 to recycle a connection, so no code ends it by default.
            final_close_codes: vec![],
            fatal_http_statuses: vec![401, 403],
            reconnect: reconnect::Config {
                ladder: vec![(Arc::from("resume"), 1), (Arc::from("restart"), 1)],
                connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
                ..Default::default()
            },
            watchdog: None,
            on_connect: None,
            heartbeat: None,
            tls: None,
        }
    }
}

/// Where to connect for one attempt.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &redact_url(&self.url))
            .field("headers", &redacted_headers(&self.headers))
            .finish()
    }
}

pub type TargetFuture = Pin<Box<dyn Future<Output = Result<Target, WsError>> + Send>>;

/// Mints the URL (and headers) for each attempt, e.g. a fresh token or a resume URL per strategy.
pub trait TargetProvider: Send + Sync + 'static {
    fn target(&self, strategy: &str, attempt: u32) -> TargetFuture;
}

/// The configured URL and headers, every time.
pub struct StaticTarget(pub Target);

impl TargetProvider for StaticTarget {
    fn target(&self, _strategy: &str, _attempt: u32) -> TargetFuture {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// Why an attempt ended. `text` is redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct WsError {
    pub text: String,
    pub fatal: bool,
    /// The server closed with a code of `final_close_codes`: the connection ends as closed.
    pub final_close: bool,
    pub close_code: Option<u16>,
    /// The server sent a close frame (`close_code` is its code, if it had a valid one); false: the
    /// connection was cut, timed out or failed.
    pub close_frame: bool,
    pub http_status: Option<u16>,
}

impl WsError {
    pub fn retry(text: impl AsRef<str>) -> Self {
        WsError {
            text: redact_url(text.as_ref()),
            fatal: false,
            final_close: false,
            close_code: None,
            close_frame: false,
            http_status: None,
        }
    }
    pub fn fatal(text: impl AsRef<str>) -> Self {
        WsError { fatal: true, ..WsError::retry(text) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Idle = 0,
    Connecting = 1,
    Connected = 2,
    Reconnecting = 3,
    Closing = 4,
    Closed = 5,
    Failed = 6,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Connecting,
            2 => State::Connected,
            3 => State::Reconnecting,
            4 => State::Closing,
            5 => State::Closed,
            6 => State::Failed,
            _ => State::Idle,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Reconnecting => "reconnecting",
            State::Closing => "closing",
            State::Closed => "closed",
            State::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// `send_buffer` messages are already waiting for delivery.
    Full(usize),
    /// Bigger than `max_message_size`: refused at once.
    TooBig {
        size: usize,
        max: usize,
    },
    /// Removed from the queue by the poison rule (see `ws_protocol`); never re-sent.
    Rejected(Failed),
    /// A flush: these messages sent before it failed (each was removed from the queue), in send order.
    FlushFailed(Vec<Failed>),
    Ended(Terminal),
}

/// How a connection ended for good, with what it never delivered (`ws_protocol::Undelivered`): every
/// error that reports the end carries the same lists, since no other waiter is left to name them.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    /// `close()` was called.
    Closed { undelivered: Arc<Undelivered> },
    /// The server closed with a code of `final_close_codes`; `text` says which (redacted).
    PeerClosed { code: u16, text: String, undelivered: Arc<Undelivered> },
    /// The reconnect loop gave up.
    GaveUp {
        message: String,
        attempts: u32,
        elapsed: Duration,
        reason: GiveUpReason,
        last: WsError,
        undelivered: Arc<Undelivered>,
    },
}

impl Terminal {
    /// Closed on request, with nothing undelivered (yet: see `finish`).
    pub fn closed() -> Terminal {
        Terminal::Closed { undelivered: Arc::default() }
    }

    pub fn undelivered(&self) -> &Undelivered {
        match self {
            Terminal::Closed { undelivered }
            | Terminal::PeerClosed { undelivered, .. }
            | Terminal::GaveUp { undelivered, .. } => undelivered,
        }
    }

    fn with_undelivered(mut self, u: Undelivered) -> Terminal {
        match &mut self {
            Terminal::Closed { undelivered }
            | Terminal::PeerClosed { undelivered, .. }
            | Terminal::GaveUp { undelivered, .. } => *undelivered = Arc::new(u),
        }
        self
    }
}

#[derive(Debug, Default)]
struct Counters {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connects: AtomicU64,
    losses: AtomicU64,
    pings_sent: AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub state: State,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub losses: u64,
    pub pings_sent: u64,
    pub last_rtt: Option<Duration>,
    pub send_queue: usize,
    pub recv_queue: usize,
    pub last_loss: Option<String>,
    pub connected_for: Option<Duration>,
}

/// Resolves a send (Ok once written) or a flush (Ok once confirmed), or says why it never will.
type Done = oneshot::Sender<Result<(), SendError>>;
/// The receiving end of `Done`.
pub type Waiter = oneshot::Receiver<Result<(), SendError>>;

/// What a queued send still waits for (flow control, as in asyncio's transports).
pub enum Queued {
    /// Nothing: it was queued under both marks.
    Done,
    /// Its message written: the bytes not yet written were above `write_high_water`.
    Written(Waiter),
    /// `WsClient::room`: half of `send_buffer` or more was unconfirmed.
    Confirmed,
}

/// Hand each waiter its outcome. A failure whose waiter is gone (its caller stopped waiting) is given back
/// (`give_back`), so the next flush or the end reports it.
fn resolve(shared: &Shared, outcomes: Vec<(Done, Outcome)>) {
    let mut orphaned = vec![];
    for (tx, o) in outcomes {
        let sent = tx.send(match o {
            Outcome::Sent => Ok(()),
            Outcome::Failed(f) => Err(SendError::Rejected(f)),
            Outcome::Flushed(f) if f.is_empty() => Ok(()),
            Outcome::Flushed(f) => Err(SendError::FlushFailed(f)),
        });
        if let Err(Err(e)) = sent {
            orphaned.push(e);
        }
    }
    give_back(shared, orphaned);
}

/// Failures that reached no caller (its send or flush was cancelled in between): back to the send queue's
/// unreported failures, for the next flush or the terminal error; once the connection has ended (its
/// error already made), logged instead, so they are never dropped silently.
fn give_back(shared: &Shared, errors: impl IntoIterator<Item = SendError>) {
    let failures: Vec<Failed> = errors
        .into_iter()
        .flat_map(|e| match e {
            SendError::Rejected(f) => vec![f],
            SendError::FlushFailed(fs) => fs,
            _ => vec![],
        })
        .collect();
    if failures.is_empty() {
        return;
    }
    let late = {
        let mut proto = shared.lock_proto();
        // under the lock `finish` makes the terminal error under
        if shared.terminal.get().is_some() {
            failures
        } else {
            proto.restore(failures);
            return;
        }
    };
    for f in late {
        tracing::warn!(target: LOG, logger = shared.cfg.reconnect.logger.as_deref(), seq = f.seq,
            "message #{} was removed from the send queue ({}) and the flush that was to report it was cancelled \
             as the connection ended", f.seq, f.why.message());
    }
}

/// A flush's outcome (see `WsClient::flush`). Dropped before it resolved (its caller was cancelled), it is
/// withdrawn from the send queue, and what it would have reported goes to the next flush or the end.
pub struct Flushing {
    rx: Waiter,
    ticket: Ticket,
    shared: Arc<Shared>,
    resolved: bool,
}

impl Future for Flushing {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let r = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.resolved = true;
        std::task::Poll::Ready(r.unwrap_or_else(|_| Err(ended(&self.shared))))
    }
}

impl Drop for Flushing {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let (waiter, outcome) = {
            let mut proto = self.shared.lock_proto();
            match proto.cancel_flush(self.ticket) {
                Some(w) => (Some(w), None),
                // it settled: its outcome is in the channel, or on its way (then `resolve` gives it back)
                None => (None, self.rx.try_recv().ok()),
            }
        };
        drop(waiter);
        if let Some(Err(e)) = outcome {
            give_back(&self.shared, [e]);
        }
    }
}

enum Ctrl {
    /// An in-band heartbeat: written at once, outside the delivery queue.
    Send(Message),
    /// tungstenite queued a reply (pong to a ping) that must go out now.
    Flush,
}

struct Shared {
    cfg: WsConfig,
    inbound: Mutex<VecDeque<Message>>,
    /// `inbound`'s length and payload bytes, read without its lock (the reader checks them per message).
    inbound_len: AtomicUsize,
    inbound_bytes: AtomicUsize,
    /// Tasks waiting in `readable`: the reader notifies only when there are some.
    inbound_waiters: AtomicUsize,
    inbound_ready: Notify,
    inbound_space: Notify,
    reader_paused: AtomicBool,
    /// Delivery, pings, close handshake, poison rule: the sans-I/O core this module drives.
    proto: Mutex<Protocol<Done>>,
    /// Wakes the writer: a message was queued, a ping is due, a close was requested.
    outbound_ready: Notify,
    /// Set while the writer is parked with nothing to write; whoever takes it wakes the writer
    /// (`wake_writer`), so a burst of sends, pings and a close request costs one wake-up.
    writer_idle: AtomicBool,
    /// Sends waiting in `room`: a pong notifies only when there are some.
    room_waiters: AtomicUsize,
    room: Notify,
    /// Wakes the timer task: the ping deadlines changed (a ping was written, the reader resumed).
    timers_changed: Notify,
    state: AtomicU8,
    terminal: OnceLock<Terminal>,
    close_requested: AtomicBool,
    close_notify: Notify,
    live: AtomicBool,
    connected_at: Mutex<Option<Instant>>,
    last_loss: Mutex<Option<String>>,
    state_change: Notify,
    /// Created on first use (a subscriber, or the supervisor starting): an unstarted connection
    /// allocates no event slots.
    events: OnceLock<broadcast::Sender<Event>>,
    counters: Counters,
}

impl Shared {
    fn set_state(&self, s: State) {
        let old = self.state.swap(s as u8, Ordering::SeqCst);
        if old != s as u8 {
            if let Some(wd) = &self.cfg.watchdog {
                wd.set_state(s.as_str());
            }
        }
        self.state_change.notify_waiters();
    }
    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::SeqCst))
    }
    /// Work for the writer: wake it only when it is parked (a busy one takes it with its next batch,
    /// so a burst of sends costs one wake-up).
    fn wake_writer(&self) {
        if self.writer_idle.swap(false, Ordering::SeqCst) {
            self.outbound_ready.notify_one();
        }
    }
    fn lock_in(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn events(&self) -> &broadcast::Sender<Event> {
        self.events.get_or_init(|| broadcast::channel(EVENTS_CAPACITY).0)
    }
    fn lock_proto(&self) -> std::sync::MutexGuard<'_, Protocol<Done>> {
        self.proto.lock().unwrap_or_else(|p| p.into_inner())
    }
    async fn wait_close(&self) {
        ws_wait::until(&self.close_notify, || self.close_requested.load(Ordering::SeqCst)).await
    }
}

/// A supervised WebSocket. Cheap to share (`Arc`); the supervisor task runs on the tokio runtime.
pub struct WsClient {
    shared: Arc<Shared>,
    provider: Arc<dyn TargetProvider>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl WsClient {
    pub fn new(cfg: WsConfig, provider: Arc<dyn TargetProvider>) -> Arc<WsClient> {
        let proto_cfg = ProtocolConfig {
            ping_interval: cfg.ping_interval,
            ping_timeout: cfg.ping_timeout,
            send_buffer: cfg.send_buffer,
            max_message_size: cfg.max_message_size,
            poison_after: cfg.poison_after,
            confirm_delay: CONFIRM_DELAY,
            metrics: cfg.reconnect.metrics.clone(),
        };
        let measured = cfg.reconnect.metrics.is_some();
        let client = Arc::new(WsClient {
            shared: Arc::new(Shared {
                cfg,
                inbound: Mutex::new(VecDeque::new()),
                inbound_len: AtomicUsize::new(0),
                inbound_bytes: AtomicUsize::new(0),
                inbound_waiters: AtomicUsize::new(0),
                inbound_ready: Notify::new(),
                inbound_space: Notify::new(),
                reader_paused: AtomicBool::new(false),
                proto: Mutex::new(Protocol::new(proto_cfg, nonce())),
                outbound_ready: Notify::new(),
                writer_idle: AtomicBool::new(false),
                room_waiters: AtomicUsize::new(0),
                room: Notify::new(),
                timers_changed: Notify::new(),
                state: AtomicU8::new(State::Idle as u8),
                terminal: OnceLock::new(),
                close_requested: AtomicBool::new(false),
                close_notify: Notify::new(),
                live: AtomicBool::new(false),
                connected_at: Mutex::new(None),
                last_loss: Mutex::new(None),
                state_change: Notify::new(),
                events: OnceLock::new(),
                counters: Counters::default(),
            }),
            provider,
            task: Mutex::new(None),
        });
        if measured {
            crate::metrics::observe(Arc::downgrade(&client.shared) as std::sync::Weak<dyn crate::metrics::Source>);
        }
        client
    }

    /// Start the supervisor (idempotent). Must be called inside a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let mut t = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_some() || self.shared.close_requested.load(Ordering::SeqCst) {
            return;
        }
        self.shared.set_state(State::Connecting);
        *t = Some(tokio::spawn(supervise(self.shared.clone(), self.provider.clone())));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events().subscribe()
    }

    pub fn state(&self) -> State {
        self.shared.state()
    }

    pub fn terminal(&self) -> Option<Terminal> {
        self.shared.terminal.get().cloned()
    }

    pub fn config(&self) -> &WsConfig {
        &self.shared.cfg
    }

    /// Resolves once connected for the first time (Ok), or with the terminal error.
    pub async fn wait_connected(&self) -> Result<(), Terminal> {
        loop {
            let n = self.shared.state_change.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let connected = self.shared.counters.connects.load(Ordering::SeqCst) > 0;
            match self.shared.terminal.get() {
                // it connected, and the server has already ended it with a final code: what it sent
                // before is there to read, and reading then ends cleanly
                Some(Terminal::PeerClosed { .. }) if connected => return Ok(()),
                Some(t) => return Err(t.clone()),
                None if connected => return Ok(()),
                None => {}
            }
            n.await;
        }
    }

    /// Next buffered message, if any. `Err` once the connection ended and the buffer is drained.
    pub fn try_recv(&self) -> Result<Option<Message>, Terminal> {
        let (m, len) = {
            let mut q = self.shared.lock_in();
            let m = q.pop_front();
            self.shared.inbound_len.store(q.len(), Ordering::SeqCst);
            (m, q.len())
        };
        match m {
            Some(m) => {
                let bytes = self.shared.inbound_bytes.fetch_sub(size_of(&m), Ordering::SeqCst) - size_of(&m);
                if self.shared.reader_paused.load(Ordering::Relaxed)
                    && len <= self.shared.cfg.recv_buffer / 2
                    && bytes <= self.shared.cfg.recv_buffer_bytes / 2
                {
                    self.shared.inbound_space.notify_one();
                }
                Ok(Some(m))
            }
            None => match self.shared.terminal.get() {
                Some(t) => Err(t.clone()),
                None => Ok(None),
            },
        }
    }

    /// Resolves once a message is buffered or the connection ended; consumes nothing, so a caller that
    /// is cancelled while waiting loses no message (bindings pop with `try_recv` afterwards).
    pub async fn readable(&self) {
        // announced before the check, so the reader notifies (see `push_inbound_all`)
        let _waiting = Waiting::new(&self.shared.inbound_waiters);
        let s = &self.shared;
        ws_wait::until(&s.inbound_ready, || s.inbound_len.load(Ordering::SeqCst) > 0 || s.terminal.get().is_some())
            .await
    }

    pub async fn recv(&self) -> Result<Message, Terminal> {
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            self.readable().await;
        }
    }

    /// Resolves once every message accepted before the call was confirmed by the peer (after a
    /// reconnect if needed); fails with the ones that were removed from the queue meanwhile.
    pub fn flush(&self) -> Result<Flushing, SendError> {
        let (tx, rx) = oneshot::channel();
        let (ticket, resolved, ping_due) = {
            let mut proto = self.shared.lock_proto();
            // under the lock, as in `enqueue`: `finish` fails every waiter under it
            if let Some(t) = self.shared.terminal.get() {
                return Err(SendError::Ended(t.clone()));
            }
            let (ticket, resolved) = proto.flush(tx, Instant::now().into_std());
            (ticket, resolved, proto.ping_due())
        };
        resolve(&self.shared, resolved);
        // the confirming ping goes out now rather than after `confirm_delay`
        if ping_due {
            self.shared.wake_writer();
        }
        Ok(Flushing { rx, ticket, shared: self.shared.clone(), resolved: false })
    }

    /// Failures of a send or flush outcome its caller never got (it was cancelled after the outcome
    /// arrived): the next flush or the end reports them.
    pub fn give_back(&self, e: SendError) {
        give_back(&self.shared, [e]);
    }

    /// Queue `msg`, waiting (see `enqueue`) only above a mark.
    pub async fn send(&self, msg: Message) -> Result<(), SendError> {
        let queued = self.enqueue(msg)?;
        self.sent(queued).await
    }

    /// Wait for what `enqueue` said a send waits for.
    pub async fn sent(&self, queued: Queued) -> Result<(), SendError> {
        match queued {
            Queued::Done => Ok(()),
            Queued::Written(rx) => rx.await.unwrap_or_else(|_| Err(self.ended())),
            Queued::Confirmed => self.room().await,
        }
    }

    /// Why a send or flush whose waiter was dropped will never resolve.
    pub fn ended(&self) -> SendError {
        ended(&self.shared)
    }

    /// Resolves once at most a quarter of `send_buffer` is unconfirmed, so a sender that awaits each
    /// send never meets `SendBufferFull` while pongs lag; fails when the connection ended.
    async fn room(&self) -> Result<(), SendError> {
        // announced before the check, so the reader notifies
        let _waiting = Waiting::new(&self.shared.room_waiters);
        loop {
            let n = self.shared.room.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(t) = self.shared.terminal.get() {
                return Err(SendError::Ended(t.clone()));
            }
            if self.shared.lock_proto().pending() <= self.shared.cfg.send_buffer / 4 {
                return Ok(());
            }
            n.await;
        }
    }

    /// Queue `msg` now (order = call order); what its send still waits for (`Queued`). Either way it
    /// stays queued until the peer confirmed it (re-sent after a reconnect). Fails at once when the
    /// connection ended, the message is bigger than `max_message_size` or `send_buffer` messages are
    /// pending.
    pub fn enqueue(&self, msg: Message) -> Result<Queued, SendError> {
        let pushed = {
            let mut proto = self.shared.lock_proto();
            // checked under the lock: `finish` fails the queue under this lock when the connection ends
            if let Some(t) = self.shared.terminal.get() {
                return Err(SendError::Ended(t.clone()));
            }
            if self.shared.close_requested.load(Ordering::SeqCst) {
                return Err(SendError::Ended(Terminal::closed()));
            }
            let cfg = &self.shared.cfg;
            if proto.unwritten_bytes() + size_of(&msg) > cfg.write_high_water {
                let (tx, rx) = oneshot::channel();
                proto.push(msg, tx).map(|()| Queued::Written(rx)).map_err(|(e, _)| e)
            } else if proto.pending() >= cfg.send_buffer / 2 {
                proto.push_untracked(msg).map(|()| Queued::Confirmed)
            } else {
                proto.push_untracked(msg).map(|()| Queued::Done)
            }
        };
        let queued = pushed.map_err(|e| match e {
            PushError::Full(n) => SendError::Full(n),
            PushError::TooBig { size, max } => SendError::TooBig { size, max },
        })?;
        self.shared.wake_writer();
        Ok(queued)
    }

    /// Close: flush queued sends, send a close frame, wait for the peer, all within `close_timeout`;
    /// then stop the supervisor. Always returns within `close_timeout` plus scheduling slack.
    pub async fn close(&self) {
        self.shared.close_requested.store(true, Ordering::SeqCst);
        self.shared.close_notify.notify_waiters();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        match task {
            Some(mut t) => {
                let bound = self.shared.cfg.close_timeout + Duration::from_millis(200);
                if tokio::time::timeout(bound, &mut t).await.is_err() {
                    t.abort();
                    tracing::warn!(target: LOG, logger = self.shared.cfg.reconnect.logger.as_deref(), "close did not finish within {:.1}s; connection aborted", bound.as_secs_f64());
                    finish(&self.shared, Err(None));
                }
            }
            None => finish(&self.shared, Ok(())),
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let connects = c.connects.load(Ordering::Relaxed);
        let (send_queue, last_rtt) = {
            let p = self.shared.lock_proto();
            (p.pending(), p.last_rtt())
        };
        Stats {
            state: self.shared.state(),
            messages_in: c.messages_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            connects,
            reconnects: connects.saturating_sub(1),
            losses: c.losses.load(Ordering::Relaxed),
            pings_sent: c.pings_sent.load(Ordering::Relaxed),
            last_rtt,
            send_queue,
            recv_queue: self.shared.inbound_len.load(Ordering::SeqCst),
            last_loss: self.shared.last_loss.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            connected_for: if self.shared.live.load(Ordering::SeqCst) {
                self.shared.connected_at.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
            } else {
                None
            },
        }
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

fn ended(shared: &Shared) -> SendError {
    SendError::Ended(shared.terminal.get().cloned().unwrap_or_else(Terminal::closed))
}

/// Record the terminal outcome (once) with what was never delivered, fail every queued send, wake every
/// waiter.
fn finish(shared: &Shared, outcome: Result<(), Option<Terminal>>) {
    let term = match outcome {
        Ok(()) | Err(None) => Terminal::closed(),
        Err(Some(t)) => t,
    };
    let (term, pending, first) = {
        // under the send queue's lock, under which `enqueue` and `flush` check the terminal: nothing is
        // accepted after the list of what was never delivered was made
        let mut proto = shared.lock_proto();
        let (pending, undelivered) = proto.finish();
        let first = shared.terminal.set(term.with_undelivered(undelivered)).is_ok();
        (shared.terminal.get().cloned().unwrap_or_else(Terminal::closed), pending, first)
    };
    let closed = matches!(term, Terminal::Closed { .. } | Terminal::PeerClosed { .. });
    shared.set_state(if closed { State::Closed } else { State::Failed });
    let u = term.undelivered();
    if first && !u.is_empty() {
        let (unconfirmed, failed) = (u.unconfirmed.len(), u.failures.len());
        let mut what = vec![];
        if unconfirmed > 0 {
            what.push(format!("{unconfirmed} sent message(s) were never confirmed by the peer"));
        }
        if failed > 0 {
            what.push(format!("{failed} failed with no flush() reporting it"));
        }
        tracing::warn!(target: LOG, logger = shared.cfg.reconnect.logger.as_deref(), unconfirmed = unconfirmed as u64,
            failed = failed as u64,
            "{} when the connection ended; the error it raises from now on names them (.messages, .failures)",
            what.join(" and "));
    }
    for tx in pending {
        let _ = tx.send(Err(SendError::Ended(term.clone())));
    }
    shared.live.store(false, Ordering::SeqCst);
    shared.inbound_ready.notify_waiters();
    shared.room.notify_waiters();
    if let Some(tx) = shared.events.get() {
        let _ = tx.send(Event::Closed);
    }
}

async fn supervise(shared: Arc<Shared>, provider: Arc<dyn TargetProvider>) {
    let hook_shared = shared.clone();
    let events = Events::new(shared.events().clone()).with_hook(move |ev| match ev {
        Event::Connecting { .. } if hook_shared.counters.connects.load(Ordering::SeqCst) > 0 => {
            hook_shared.set_state(State::Reconnecting)
        }
        Event::Connected { .. } => {
            hook_shared.counters.connects.fetch_add(1, Ordering::SeqCst);
            hook_shared.set_state(State::Connected)
        }
        Event::ConnectionLost { reason } => {
            hook_shared.counters.losses.fetch_add(1, Ordering::SeqCst);
            *hook_shared.last_loss.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
            hook_shared.set_state(State::Reconnecting)
        }
        _ => {}
    });
    let cfg = &shared.cfg;
    // the watchdog's alarms become connection events
    let forward = cfg.watchdog.as_ref().map(|wd| {
        let mut rx = wd.subscribe();
        let events = shared.events().clone();
        tokio::spawn(async move {
            while let Ok(a) = rx.recv().await {
                let _ = events.send(Event::Alarm {
                    kind: a.kind.as_str(),
                    name: a.name,
                    elapsed: a.elapsed,
                    limit: a.limit,
                    message: a.message,
                });
            }
        })
    });
    let run = reconnect::run(
        &cfg.reconnect,
        &events,
        // Ok(Some(close)): the server closed with a final code, which ends the loop like a close on request
        |attempt| {
            session(shared.clone(), provider.clone(), attempt).map(|r| match r {
                Ok(()) => Ok(None),
                Err(e) if e.final_close => Ok(Some(e)),
                Err(e) => Err(e),
            })
        },
        |e: &WsError| e.fatal,
        |e: &WsError| e.text.clone(),
        |n, t| WsError::retry(format!("attempt {n} made no progress within {:.1}s", t.as_secs_f64())),
    );
    tokio::pin!(run);
    // A close request while no connection is live ends the loop at once; a live session closes itself.
    let idle_close = async {
        shared.wait_close().await;
        if shared.live.load(Ordering::SeqCst) {
            // live: the session handles the close; give it its bound, then stop anyway
            tokio::time::sleep(shared.cfg.close_timeout).await;
        }
    };
    let outcome = tokio::select! {
        r = &mut run => r,
        _ = idle_close => Ok(None),
    };
    let outcome = match outcome {
        Ok(None) => Ok(()),
        Ok(Some(close)) => {
            tracing::info!(target: LOG, logger = cfg.reconnect.logger.as_deref(), error = %close.text,
                "{}: {} is in final_close_codes, so the connection ends here (no reconnect)", close.text,
                close.close_code.unwrap_or_default());
            Err(Some(Terminal::PeerClosed {
                code: close.close_code.unwrap_or_default(),
                text: close.text,
                undelivered: Arc::default(),
            }))
        }
        Err(g) => {
            let message = g.message();
            Err(Some(Terminal::GaveUp {
                message,
                attempts: g.attempts,
                elapsed: g.elapsed,
                reason: g.reason,
                last: g.last_error,
                undelivered: Arc::default(),
            }))
        }
    };
    if shared.close_requested.load(Ordering::SeqCst) && outcome.is_err() {
        // closing raced with a give-up: the user asked to close, report Closed
        finish(&shared, Ok(()));
    } else {
        finish(&shared, outcome);
    }
    if let Some(f) = forward {
        f.abort();
    }
}

/// A measured connection's gauges (`tether.metrics`), read at collection: its state, and what it
/// accepted that the peer has not confirmed yet. Its counters come from the reconnect loop's reports,
/// the protocol's losses and the `on_connect` hook.
impl crate::metrics::Source for Shared {
    fn observe(&self, instrument: crate::metrics::Instrument, out: &mut crate::metrics::Gauges) {
        use crate::metrics::{Instrument, STATES};
        let Some(m) = &self.cfg.reconnect.metrics else { return };
        match instrument {
            Instrument::Connections => out.states(m.labels(), instrument, &STATES, self.state().as_str()),
            Instrument::SendsUnconfirmed => out.add(m.labels(), instrument, None, self.lock_proto().pending() as f64),
            _ => {}
        }
    }
}

/// The port of a ws:// or wss:// URI: explicit (1..=65535) or the scheme's default.
pub fn port_of(uri: &tungstenite::http::Uri) -> Result<u16, String> {
    // read from the authority text: `Uri::port()` silently drops a port that does not fit in a u16
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    // userinfo (`user:password@`) may hold colons too
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host_end = authority.rfind(']').unwrap_or(0);
    match authority[host_end..].rfind(':').map(|i| &authority[host_end + i + 1..]) {
        None | Some("") => Ok(if uri.scheme_str() == Some("wss") { 443 } else { 80 }),
        Some(p) => match p.parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            _ => Err(format!("port {p} is outside 1..65535")),
        },
    }
}

/// The kernel backs up the ping deadline (keepalive, TCP_USER_TIMEOUT); an option the kernel refuses
/// (e.g. a keepalive idle time above its maximum) leaves only the ping deadline, which still works.
fn set_socket_options(tcp: &TcpStream, cfg: &WsConfig) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), error = %e, "could not set TCP_NODELAY: {e}");
    }
    let sock = socket2::SockRef::from(tcp);
    let ka = socket2::TcpKeepalive::new()
        .with_time(cfg.ping_interval.max(Duration::from_secs(1)))
        .with_interval((cfg.ping_timeout / 3).max(Duration::from_secs(1)));
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let ka = ka.with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), error = %e,
            "could not enable TCP keepalive (idle {:.0}s): {e}; relying on the ping deadline", cfg.ping_interval.as_secs_f64());
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(cfg.ping_interval + cfg.ping_timeout)) {
        tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), error = %e,
            "could not set TCP_USER_TIMEOUT ({:.0}s): {e}; relying on the ping deadline",
            (cfg.ping_interval + cfg.ping_timeout).as_secs_f64());
    }
}

fn ws_config(cfg: &WsConfig) -> tungstenite::protocol::WebSocketConfig {
    // one frame may carry a whole message; neither may exceed max_message_size
    tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(cfg.max_message_size))
        .max_frame_size(Some(cfg.max_message_size))
        .read_buffer_size(cfg.read_buffer_size)
        .write_buffer_size(cfg.write_buffer_size)
}

/// HTTP statuses worth retrying even before the first connection: the server is there but busy or
/// failing for now (a deploy's 502/503, a rate limit). Any other non-101 answer means the URL is not a
/// WebSocket endpoint (404, a 200 page) and retrying will not change it.
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// An answer that retrying will not change fails a first connect at once (the application is told the
/// URL is wrong instead of waiting on retries); once a connection has succeeded the URL is known to be
/// right, so the same answer is a passing fault and the policy retries it.
fn not_retried_first(mut e: WsError, first: bool) -> WsError {
    if first && !e.fatal {
        e.fatal = true;
        e.text.push_str(" (a first connect does not retry this answer)");
    }
    e
}

/// Why a handshake failed; `first`: no connection has succeeded yet.
fn handshake_error(e: tungstenite::Error, cfg: &WsConfig, first: bool) -> WsError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let mut err = WsError::retry(format!(
                "handshake rejected with HTTP {status} {}",
                resp.status().canonical_reason().unwrap_or("")
            ));
            err.http_status = Some(status);
            err.fatal = cfg.fatal_http_statuses.contains(&status);
            if retryable_status(status) {
                err
            } else {
                not_retried_first(err, first)
            }
        }
        tungstenite::Error::Url(u) => WsError::fatal(format!("invalid URL: {u}")),
        tungstenite::Error::Tls(t) => {
            let text = format!("TLS handshake failed: {t}");
            // certificate problems do not heal by retrying
            if text.contains("certificate") {
                WsError::fatal(text)
            } else {
                WsError::retry(text)
            }
        }
        tungstenite::Error::Io(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            // rustls reports through the TLS stream's io::Error; a certificate does not heal by retrying
            Some(t @ rustls::Error::InvalidCertificate(_)) => WsError::fatal(format!(
                "TLS handshake failed: {t} (to trust a private CA or the system store, pass ssl=)"
            )),
            Some(t) => WsError::retry(format!("TLS handshake failed: {t}")),
            None => WsError::retry(format!("handshake failed: IO error: {e}")),
        },
        // the server hung up before answering: a restart, an overloaded accept queue
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::HandshakeIncomplete) => {
            WsError::retry("handshake failed: the server closed the connection before answering")
        }
        // an answer that is not a WebSocket upgrade: a wrong Sec-WebSocket-Accept, no Upgrade header,
        // a subprotocol not asked for, a response that is not HTTP
        other @ (tungstenite::Error::Protocol(_)
        | tungstenite::Error::Capacity(_)
        | tungstenite::Error::HttpFormat(_)
        | tungstenite::Error::Utf8(_)) => not_retried_first(
            WsError::retry(format!("handshake failed: the answer is not a WebSocket upgrade: {other}")),
            first,
        ),
        other => WsError::retry(format!("handshake failed: {other}")),
    }
}

/// The `Location` of a redirect answer (without one, or unreadable, it is not a redirect to follow).
fn location(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> Option<&str> {
    resp.headers().get("location").and_then(|l| l.to_str().ok())
}

type WsStream = tokio_tungstenite::WebSocketStream<Tap<MaybeTlsStream<TcpStream>>>;

/// What one HTTP exchange of the opening handshake gave.
enum Answer {
    Open(Box<(WsStream, CloseSeen)>),
    Redirect { status: u16, location: String },
}

/// Open the WebSocket of one attempt: the target's URL, then each redirect (see `ws_redirect`), all
/// within `open_timeout`.
async fn open(
    shared: &Shared,
    provider: &Arc<dyn TargetProvider>,
    attempt: &Attempt,
) -> Result<(WsStream, CloseSeen), WsError> {
    let cfg = &shared.cfg;
    let deadline = Instant::now() + cfg.open_timeout;
    let bound = cfg.open_timeout.as_secs_f64();
    let target = tokio::time::timeout_at(deadline, provider.target(&attempt.strategy, attempt.number))
        .await
        .map_err(|_| WsError::retry(format!("url_for did not return within open_timeout ({bound}s)")))??;
    let first = shared.counters.connects.load(Ordering::SeqCst) == 0;
    let mut url = target.url;
    let mut headers: Vec<(String, String)> = cfg.headers.iter().chain(target.headers.iter()).cloned().collect();
    let mut redirects = 0;
    loop {
        let (status, location) = match exchange(cfg, &url, &headers, deadline, attempt, first).await? {
            Answer::Open(ws) => return Ok(*ws),
            Answer::Redirect { status, location } => (status, location),
        };
        let refused = |why: String| {
            let mut e = WsError::retry(format!("HTTP {status} redirect not followed: {why}"));
            e.http_status = Some(status);
            not_retried_first(e, first)
        };
        if redirects == ws_redirect::MAX_REDIRECTS {
            return Err(refused(format!("more than {} redirects", ws_redirect::MAX_REDIRECTS)));
        }
        let hop = ws_redirect::follow(&url, &location).map_err(refused)?;
        redirects += 1;
        let before = headers.len();
        ws_redirect::headers_for(&hop, &mut headers);
        let dropped = before - headers.len();
        tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), http_status = status, redirects = redirects as u64,
            "HTTP {status} redirect from {} to {}{}", redact_url(&url), redact_url(&hop.url),
            if dropped > 0 { format!(" (another origin: {dropped} credential header(s) not forwarded)") } else { String::new() });
        url = hop.url;
    }
}

/// One HTTP exchange of the opening handshake: TCP (and TLS) to `url`, the upgrade request, its answer.
async fn exchange(
    cfg: &WsConfig,
    url: &str,
    headers: &[(String, String)],
    deadline: Instant,
    attempt: &Attempt,
    first: bool,
) -> Result<Answer, WsError> {
    let bound = cfg.open_timeout.as_secs_f64();
    let mut request = url.into_client_request().map_err(|e| WsError::fatal(format!("invalid URL {url}: {e}")))?;
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| WsError::fatal(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(v).map_err(|_| WsError::fatal(format!("invalid value for header {k:?}")))?;
        request.headers_mut().insert(name, value);
    }
    let uri = request.uri().clone();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => {
            let got = other.map_or_else(|| "no scheme".to_string(), |s| format!("{s:?}"));
            return Err(WsError::fatal(format!("unsupported URL scheme {got} in {url}; use ws:// or wss://")));
        }
    };
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_string();
    let shown = redact_url(url);
    let port = port_of(&uri).map_err(|e| WsError::fatal(format!("{e} in {shown}")))?;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect((host.as_str(), port))).await {
        Err(_) => {
            return Err(WsError::retry(format!("TCP connect to {host}:{port} timed out (open_timeout {bound}s)")))
        }
        Ok(Err(e)) => return Err(WsError::retry(format!("TCP connect to {host}:{port} failed: {e}"))),
        Ok(Ok(t)) => t,
    };
    set_socket_options(&tcp, cfg);
    tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), url = %shown, strategy = &*attempt.strategy, attempt = attempt.number, "opening WebSocket to {shown}");
    let seen = CloseSeen::default();
    // TLS here rather than in tokio-tungstenite, so that the tap reads the decrypted frames
    let handshake = async {
        let stream = if tls {
            let config = cfg.tls.clone().unwrap_or_else(crate::ws_tls::default_config);
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| tungstenite::Error::Tls(tungstenite::error::TlsError::InvalidDnsName))?;
            let tls =
                tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(tungstenite::Error::Io)?;
            MaybeTlsStream::Rustls(tls)
        } else {
            MaybeTlsStream::Plain(tcp)
        };
        tokio_tungstenite::client_async_with_config(request, Tap::new(stream, seen.clone()), Some(ws_config(cfg))).await
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Err(_) => Err(WsError::retry(format!("WebSocket handshake with {shown} timed out (open_timeout {bound}s)"))),
        Ok(Err(tungstenite::Error::Http(resp)))
            if ws_redirect::is_redirect(resp.status().as_u16()) && location(&resp).is_some() =>
        {
            let location = location(&resp).unwrap_or_default().to_string();
            Ok(Answer::Redirect { status: resp.status().as_u16(), location })
        }
        Ok(Err(e)) => Err(handshake_error(e, cfg, first)),
        Ok(Ok((ws, _resp))) => Ok(Answer::Open(Box::new((ws, seen)))),
    }
}

/// One attempt: open, then pump until the connection is lost (Err) or closed on request (Ok).
async fn session(shared: Arc<Shared>, provider: Arc<dyn TargetProvider>, attempt: Attempt) -> Result<(), WsError> {
    if shared.close_requested.load(Ordering::SeqCst) {
        return Ok(());
    }
    let cfg = &shared.cfg;
    let (ws, seen) = open(&shared, &provider, &attempt).await?;
    let (mut sink, mut stream) = ws.split();
    // a message read during on_connect but not taken by the hook is the first message
    let mut first_seen = false;
    if let Some(hook) = &cfg.on_connect {
        let info = HandshakeInfo {
            attempt: attempt.number,
            strategy: attempt.strategy.clone(),
            reconnect: shared.counters.connects.load(Ordering::SeqCst) > 0,
        };
        let mut unread = run_on_connect(hook, info, cfg, &mut sink, &mut stream, &seen).await?;
        first_seen = !unread.is_empty();
        push_inbound_all(&shared, &mut unread);
    }

    if let Some(fm) = cfg.first_message_timeout.filter(|_| !first_seen) {
        let mut peer_closed = false;
        // the close frame that fails the connection, written after the wait (see `read_error`)
        let mut failing = None;
        let first = tokio::time::timeout(fm, async {
            loop {
                match stream.next().await {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
                    Some(Ok(Message::Close(f))) => {
                        peer_closed = true;
                        return Err(close_error(f, seen.code_and_reason(), cfg));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        let (err, answer) = read_error(e, cfg);
                        failing = answer;
                        return Err(err);
                    }
                    None => return Err(WsError::retry(CLOSED_WITHOUT_CLOSE_FRAME)),
                }
            }
        })
        .await
        .map_err(|_| {
            WsError::retry(format!("no first message within first_message_timeout ({}s)", fm.as_secs_f64()))
        })?;
        if peer_closed {
            answer_close(&mut sink, cfg.close_timeout).await;
        }
        if let Some(frame) = failing {
            fail_connection(&mut sink, frame, cfg.close_timeout).await;
        }
        push_inbound(&shared, first?);
    }

    *shared.connected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    shared.lock_proto().connected(Instant::now().into_std());
    shared.live.store(true, Ordering::SeqCst);
    attempt.connected();
    // from here on a close request is a graceful close by the pump (one that came earlier, while `live`
    // was false, made the supervisor drop this attempt without a close frame: see `idle_close`)
    let result = pump(&shared, &mut sink, &mut stream, &seen).await;
    shared.live.store(false, Ordering::SeqCst);
    if let Err(e) = &result {
        let ((waiters, failures), resend) = {
            let mut p = shared.lock_proto();
            let ending = if e.close_frame { Ending::Closed(e.close_code) } else { Ending::Cut };
            let lost = p.lost(ending, &e.text);
            (lost, p.pending())
        };
        for f in failures {
            tracing::warn!(target: LOG, logger = shared.cfg.reconnect.logger.as_deref(), error = %e.text, seq = f.seq,
                "message #{} was removed from the send queue: {}", f.seq, f.why.message());
        }
        resolve(&shared, waiters);
        tracing::debug!(target: LOG, logger = shared.cfg.reconnect.logger.as_deref(), error = %e.text, pending = resend as u64,
            "connection lost: {}; {resend} accepted message(s) not yet confirmed will be (re-)sent after the reconnect", e.text);
    }
    result
}

/// A per-connection random value that tells its pings from any other's (not a secret).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

type Sink = futures_util::stream::SplitSink<WsStream, Message>;
type Stream = futures_util::stream::SplitStream<WsStream>;

/// RFC 6455 §5.5.1: answer the peer's close frame. tungstenite queued the reply when it read the frame;
/// it leaves with this flush, bounded by `close_timeout` (a peer that stopped reading gets no answer).
pub(crate) async fn answer_close<S>(sink: &mut S, close_timeout: Duration)
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let _ = tokio::time::timeout(close_timeout, sink.flush()).await;
}

/// What a close frame from the server says, on every read path. `sent`: its code and reason as they came
/// off the wire (`ws_close_tap`): tungstenite hands a code it does not allow over as its own 1002
/// "Protocol violation" (also 1014, bad gateway, a code it does not know), which it also sends back.
pub(crate) fn close_error(frame: Option<CloseFrame>, sent: Option<(u16, String)>, cfg: &WsConfig) -> WsError {
    let mut e = match frame {
        Some(f) => {
            let (code, reason) = sent.unwrap_or_else(|| (u16::from(f.code), f.reason.to_string()));
            if valid_close_code(code) {
                let mut e = WsError::retry(format!("server closed the connection: {code} {reason}").trim_end());
                e.close_code = Some(code);
                e.fatal = cfg.fatal_close_codes.contains(&code);
                e.final_close = cfg.final_close_codes.contains(&code);
                e
            } else {
                WsError::retry(format!(
                    "server closed the connection with an invalid close code {code} (RFC 6455 §7.4 does not allow \
                     it on the wire); tether answered 1002 (protocol error)"
                ))
            }
        }
        None => WsError::retry("server closed the connection without a status code"),
    };
    e.close_frame = true;
    e
}

/// A TCP FIN, or reset, where a close frame was due.
pub(crate) const CLOSED_WITHOUT_CLOSE_FRAME: &str = "server closed without a close frame (TCP FIN)";
pub(crate) const RESET_WITHOUT_CLOSE_FRAME: &str = "server reset the connection (TCP RST) without a close frame";

/// What a read error says, on every read path (the `on_connect` hook's, the first message's, the pump's):
/// the loss to report and, when the peer broke the protocol, the close frame to fail the connection with
/// (RFC 6455 §7.4.1: 1002 protocol error, 1007 invalid data, 1009 too big), written by `fail_connection`.
/// The end of the stream is `CLOSED_WITHOUT_CLOSE_FRAME` on every path too.
pub(crate) fn read_error(e: tungstenite::Error, cfg: &WsConfig) -> (WsError, Option<CloseFrame>) {
    use tungstenite::error::ProtocolError;
    let fail = |code: CloseCode, why: &'static str, text: String| {
        (WsError::retry(text), Some(CloseFrame { code, reason: why.into() }))
    };
    match e {
        // tungstenite's word for an EOF before any close frame
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            (WsError::retry(CLOSED_WITHOUT_CLOSE_FRAME), None)
        }
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset => {
            (WsError::retry(RESET_WITHOUT_CLOSE_FRAME), None)
        }
        tungstenite::Error::Capacity(c) => fail(
            CloseCode::Size,
            "message too big",
            format!(
                "the server sent a message over max_message_size ({} bytes): {c}; tether closed the connection with 1009",
                cfg.max_message_size
            ),
        ),
        tungstenite::Error::Utf8(u) => fail(
            CloseCode::Invalid,
            "invalid UTF-8",
            format!("the server sent text that is not valid UTF-8 ({u}); tether closed the connection with 1007"),
        ),
        tungstenite::Error::Protocol(p) => fail(
            CloseCode::Protocol,
            "protocol error",
            format!("the server broke the WebSocket protocol ({p}); tether closed the connection with 1002"),
        ),
        other => (WsError::retry(format!("read error: {other}")), None),
    }
}

/// RFC 6455 §7.1.7: fail the connection with the close code that says why, then drop it (the peer's
/// answer is not awaited); a peer that does not read cannot hold this past `close_timeout`.
pub(crate) async fn fail_connection<S>(sink: &mut S, frame: CloseFrame, close_timeout: Duration)
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let _ = tokio::time::timeout(close_timeout, sink.send(Message::Close(Some(frame)))).await;
}

fn push_inbound(shared: &Shared, m: Message) {
    push_inbound_all(shared, &mut vec![m]);
}

/// Hand messages read in one burst to the application: one lock, and one wake-up, only if someone
/// waits. A waiter announces itself (`inbound_waiters`) before it checks the buffer, and the count is
/// read after the push under the buffer's lock, so a waiter either sees the messages or is woken.
fn push_inbound_all(shared: &Shared, batch: &mut Vec<Message>) {
    if batch.is_empty() {
        return;
    }
    let bytes: usize = batch.iter().map(size_of).sum();
    shared.counters.messages_in.fetch_add(batch.len() as u64, Ordering::Relaxed);
    shared.counters.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    shared.inbound_bytes.fetch_add(bytes, Ordering::SeqCst);
    {
        let mut q = shared.lock_in();
        q.extend(batch.drain(..));
        shared.inbound_len.store(q.len(), Ordering::SeqCst);
    }
    if shared.inbound_waiters.load(Ordering::SeqCst) > 0 {
        shared.inbound_ready.notify_waiters();
    }
}

/// Messages taken from the socket in one burst before they are handed over (the byte cap keeps a burst
/// of big messages from overshooting the inbound buffer's bound by much).
const BURST_MESSAGES: usize = 256;
const BURST_BYTES: usize = 256 << 10;

/// Run one live connection until it is lost (Err) or closed on request (Ok). The reader, the writer
/// and the timer task run together throughout, the close handshake included, so pongs confirm sends
/// until the very end.
async fn pump(shared: &Arc<Shared>, sink: &mut Sink, stream: &mut Stream, seen: &CloseSeen) -> Result<(), WsError> {
    let cfg = &shared.cfg;
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel::<Ctrl>();
    let beats = HeartbeatWatch::default();
    // set when the peer started the close: tungstenite queued the reply, which must be flushed
    let peer_closed = AtomicBool::new(false);
    // set when the peer broke the protocol: the close frame that says how, written before the drop
    let failing: OnceLock<CloseFrame> = OnceLock::new();

    // counting the burst not handed over yet, so the bounds hold to within one message
    let full = |burst: usize, burst_bytes: usize| {
        shared.inbound_len.load(Ordering::SeqCst) + burst >= cfg.recv_buffer
            || shared.inbound_bytes.load(Ordering::SeqCst) + burst_bytes >= cfg.recv_buffer_bytes
    };
    let reader = async {
        let mut burst: Vec<Message> = Vec::new();
        let mut burst_bytes = 0;
        loop {
            if full(burst.len(), burst_bytes) {
                // nothing is held back across an await: the pump may be dropped there
                push_inbound_all(shared, &mut burst);
                burst_bytes = 0;
                shared.reader_paused.store(true, Ordering::SeqCst);
                shared.lock_proto().pause();
                beats.pause();
                let n = shared.inbound_space.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if full(0, 0) {
                    n.await;
                }
                shared.reader_paused.store(false, Ordering::SeqCst);
                shared.lock_proto().resume(Instant::now().into_std());
                beats.resume();
                shared.timers_changed.notify_one();
                continue;
            }
            // what is already readable joins the burst; before waiting on the socket, hand the burst over
            let next = match stream.next().now_or_never() {
                Some(next) => next,
                None => {
                    push_inbound_all(shared, &mut burst);
                    burst_bytes = 0;
                    stream.next().await
                }
            };
            if !matches!(next, Some(Ok(Message::Text(_) | Message::Binary(_)))) {
                // control frames, errors and the end come after the data read before them
                push_inbound_all(shared, &mut burst);
                burst_bytes = 0;
            }
            let msg = match next {
                None => return Err(WsError::retry(CLOSED_WITHOUT_CLOSE_FRAME)),
                Some(Err(e)) => {
                    let (err, answer) = read_error(e, cfg);
                    if let Some(frame) = answer {
                        let _ = failing.set(frame);
                    }
                    return Err(err);
                }
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    beats.on_inbound(&msg);
                    burst_bytes += size_of(&msg);
                    burst.push(msg);
                    if burst.len() >= BURST_MESSAGES || burst_bytes >= BURST_BYTES {
                        push_inbound_all(shared, &mut burst);
                        burst_bytes = 0;
                    }
                }
                Message::Ping(_) => {
                    let _ = ctrl_tx.send(Ctrl::Flush);
                }
                Message::Pong(p) => {
                    let (resolved, more) = {
                        let mut proto = shared.lock_proto();
                        (proto.on_pong(&p, Instant::now().into_std()), proto.can_write())
                    };
                    resolve(shared, resolved);
                    // the confirmation may have opened the window of a re-send (see ws_protocol)
                    if more {
                        shared.wake_writer();
                    }
                    if shared.room_waiters.load(Ordering::SeqCst) > 0 {
                        shared.room.notify_waiters();
                    }
                }
                Message::Close(f) => {
                    return match shared.lock_proto().on_close_frame() {
                        PeerClose::Complete => Ok(()),
                        PeerClose::Answer => {
                            peer_closed.store(true, Ordering::SeqCst);
                            Err(close_error(f, seen.code_and_reason(), cfg))
                        }
                    }
                }
                Message::Frame(_) => {}
            }
        }
    };

    let writer = async {
        let wr = |e: tungstenite::Error| match e {
            tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset => {
                WsError::retry(RESET_WITHOUT_CLOSE_FRAME)
            }
            e => WsError::retry(format!("write error: {e}")),
        };
        let mut pending_ctrl: Option<Ctrl> = None;
        loop {
            // control frames first: one that woke us, then any others queued
            while let Some(c) = pending_ctrl.take().or_else(|| ctrl_rx.try_recv().ok()) {
                match c {
                    Ctrl::Flush => sink.flush().await.map_err(wr)?,
                    Ctrl::Send(m) => {
                        sink.feed(m).await.map_err(wr)?;
                        sink.flush().await.map_err(wr)?;
                    }
                }
            }
            // the whole queue (or what the window lets out) in one batch, with its pings: one flush
            let step = shared.lock_proto().next_write(Instant::now().into_std());
            match step {
                Write::Batch(frames) => {
                    let (mut n, mut bytes, mut pings) = (0u64, 0u64, 0u64);
                    for m in frames {
                        if matches!(m, Message::Ping(_)) {
                            pings += 1;
                        } else {
                            n += 1;
                            bytes += size_of(&m) as u64;
                        }
                        sink.feed(m).await.map_err(wr)?;
                    }
                    sink.flush().await.map_err(wr)?;
                    let sent = shared.lock_proto().written();
                    resolve(shared, sent);
                    shared.counters.messages_out.fetch_add(n, Ordering::Relaxed);
                    shared.counters.bytes_out.fetch_add(bytes, Ordering::Relaxed);
                    shared.counters.pings_sent.fetch_add(pings, Ordering::Relaxed);
                    shared.timers_changed.notify_one();
                }
                Write::Ping(ping) => {
                    sink.send(Message::Ping(ping)).await.map_err(wr)?;
                    shared.counters.pings_sent.fetch_add(1, Ordering::Relaxed);
                    shared.timers_changed.notify_one();
                }
                Write::Close => {
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    sink.send(Message::Close(Some(frame))).await.map_err(wr)?;
                }
                Write::Idle => {
                    if !shared.writer_idle.swap(true, Ordering::SeqCst) {
                        // look once more with the flag up: a send queued before it did not notify
                        continue;
                    }
                    tokio::select! {
                        _ = shared.outbound_ready.notified() => {}
                        c = ctrl_rx.recv() => match c {
                            Some(c) => pending_ctrl = Some(c),
                            // the pump owns the sender, so this only happens while it is being torn down
                            None => std::future::pending::<()>().await,
                        },
                    }
                }
            }
        }
    };

    // Liveness and ping schedule (see ws_protocol): a due ping wakes the writer; a ping not echoed
    // within ping_timeout ends the connection.
    let pinger = async {
        loop {
            let changed = shared.timers_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (wake, due) = {
                let mut p = shared.lock_proto();
                let wake = p.poll(Instant::now().into_std()).map_err(WsError::retry)?;
                (wake, p.ping_due())
            };
            if due {
                shared.wake_writer();
            }
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(wake)) => {}
                _ = changed => {}
            }
        }
    };

    let heartbeat = ws_heartbeat::run(
        cfg.heartbeat.as_ref(),
        &beats,
        |m| ctrl_tx.send(Ctrl::Send(m)).is_ok(),
        cfg.reconnect.metrics.as_deref(),
    );

    let outcome = {
        tokio::pin!(reader, writer, pinger, heartbeat);
        let mut close_by: Option<Instant> = None;
        loop {
            tokio::select! {
                r = &mut reader => break r,
                r = &mut writer => break r,
                r = &mut pinger => break r,
                // disarmed once closing: a heartbeat written after our close frame would fail the writer
                // and cut the close handshake short
                r = &mut heartbeat, if close_by.is_none() => break r,
                _ = shared.wait_close(), if close_by.is_none() => {
                    // Closing on request: the writer flushes what was accepted, a ping and the close
                    // frame; the reader confirms and ends at the peer's close. All within close_timeout.
                    shared.set_state(State::Closing);
                    shared.lock_proto().request_close();
                    shared.wake_writer();
                    close_by = Some(Instant::now() + cfg.close_timeout);
                }
                _ = tokio::time::sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => {
                    tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), "the peer did not complete the close handshake within close_timeout ({:.3}s)",
                        cfg.close_timeout.as_secs_f64());
                    break Ok(());
                }
            }
        }
    };
    if peer_closed.load(Ordering::SeqCst) {
        answer_close(sink, cfg.close_timeout).await;
    }
    if let Some(frame) = failing.into_inner() {
        fail_connection(sink, frame, cfg.close_timeout).await;
    }
    if shared.close_requested.load(Ordering::SeqCst) && outcome.is_err() {
        // a loss during the close handshake: the close is what the user asked for
        return Ok(());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::{Backoff, Jitter};
    use crate::testing::signal_server::SignalServer;

    fn client(url: String, tweak: impl FnOnce(&mut WsConfig)) -> Arc<WsClient> {
        let mut cfg = WsConfig {
            url: url.clone(),
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(200),
            close_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        cfg.reconnect.policy = Backoff {
            initial: 0.02,
            factor: 2.0,
            max_delay: 0.1,
            jitter: Jitter::None,
            max_attempts: Some(20),
            ..Default::default()
        };
        tweak(&mut cfg);
        WsClient::new(cfg, Arc::new(StaticTarget(Target { url, headers: vec![] })))
    }

    async fn recv_text(c: &WsClient) -> String {
        match tokio::time::timeout(Duration::from_secs(5), c.recv()).await.expect("recv timed out").expect("closed") {
            Message::Text(t) => t.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn echo_then_server_drop_reconnects_and_keeps_order() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        let c = client(srv.url(), |_| {});
        let mut events = c.subscribe();
        c.start();
        c.wait_connected().await.unwrap();
        c.send(Message::text("a")).await.unwrap();
        assert_eq!(recv_text(&c).await, "a");
        // confirmed, so the reconnect does not send it again (at-least-once re-sends the unconfirmed)
        c.flush().unwrap().await.unwrap();
        srv.drop_all();
        // sends during the outage are delivered after the reconnect, in order
        for i in 0..5 {
            c.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        for i in 0..5 {
            assert_eq!(recv_text(&c).await, format!("m{i}"));
        }
        assert_eq!(c.stats().connects, 2);
        let mut lost = 0;
        while let Ok(ev) = events.try_recv() {
            if matches!(ev, Event::ConnectionLost { .. }) {
                lost += 1;
            }
        }
        assert_eq!(lost, 1);
        c.close().await;
        assert_eq!(c.state(), State::Closed);
        assert!(matches!(c.send(Message::text("late")).await, Err(SendError::Ended(Terminal::Closed { .. }))));
    }

    #[tokio::test]
    async fn frozen_server_is_detected_by_ping_timeout() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        let c = client(srv.url(), |_| {});
        let mut events = c.subscribe();
        c.start();
        c.wait_connected().await.unwrap();
        srv.freeze();
        let t0 = Instant::now();
        let reason = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(Event::ConnectionLost { reason }) = events.recv().await {
                    return reason;
                }
            }
        })
        .await
        .unwrap();
        assert!(reason.contains("ping timeout"), "{reason}");
        assert!(t0.elapsed() <= Duration::from_millis(300) + Duration::from_millis(400), "{:?}", t0.elapsed());
        srv.unfreeze();
        c.close().await;
    }

    #[tokio::test]
    async fn fatal_http_status_gives_up_at_once() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        srv.refuse(401, None);
        let c = client(format!("{}?access_token=SECRET", srv.url()), |_| {});
        c.start();
        let t = c.wait_connected().await.unwrap_err();
        match t {
            Terminal::GaveUp { reason, last, attempts, message, .. } => {
                assert_eq!(reason, GiveUpReason::Fatal);
                assert_eq!(last.http_status, Some(401));
                assert_eq!(attempts, 1);
                assert!(!message.contains("SECRET"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.state(), State::Failed);
    }

    #[tokio::test]
    async fn a_not_found_ends_a_first_connect_but_is_retried_once_connected() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        srv.refuse(404, None);
        let c = client(srv.url(), |_| {});
        c.start();
        match c.wait_connected().await.unwrap_err() {
            Terminal::GaveUp { reason, last, attempts, .. } => {
                assert_eq!((reason, attempts, last.http_status), (GiveUpReason::Fatal, 1, Some(404)));
                assert!(last.text.contains("first connect"), "{}", last.text);
            }
            other => panic!("{other:?}"),
        }
        srv.behave();
        let c = client(srv.url(), |_| {});
        c.start();
        c.wait_connected().await.unwrap();
        srv.refuse(404, Some(2));
        srv.drop_all();
        c.send(Message::text("after")).await.unwrap();
        assert_eq!(recv_text(&c).await, "after");
        assert_eq!(c.stats().connects, 2);
        c.close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_connect_to_a_down_server_gives_up_by_the_default_connect_timeout() {
        let url = "ws://127.0.0.1:1/".to_string();
        let cfg = WsConfig { url: url.clone(), ..Default::default() };
        let c = WsClient::new(cfg, Arc::new(StaticTarget(Target { url, headers: vec![] })));
        let t0 = Instant::now();
        c.start();
        match c.wait_connected().await.unwrap_err() {
            Terminal::GaveUp { reason, elapsed, .. } => {
                assert_eq!(reason, GiveUpReason::ConnectTimeout);
                assert!(elapsed <= DEFAULT_CONNECT_TIMEOUT, "{elapsed:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() <= DEFAULT_CONNECT_TIMEOUT, "{:?}", t0.elapsed());
        assert_eq!(c.state(), State::Failed);
    }

    #[test]
    fn debug_output_redacts_the_url_and_secret_headers() {
        let headers = vec![("Authorization".to_string(), "Bearer SECRET1".to_string())];
        let url = "wss://h/ws?access_token=SECRET2".to_string();
        let cfg = WsConfig { url: url.clone(), headers: headers.clone(), ..Default::default() };
        for shown in [format!("{cfg:?}"), format!("{:?}", Target { url, headers })] {
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("wss://h/ws"), "{shown}");
        }
    }

    #[test]
    fn a_peer_that_breaks_the_protocol_is_answered_with_the_close_code_that_says_how() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let cfg = WsConfig::default();
        let answer = |e| read_error(e, &cfg).1.map(|f| u16::from(f.code));
        assert_eq!(answer(tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits)), Some(1002));
        assert_eq!(answer(tungstenite::Error::Protocol(ProtocolError::MaskedFrameFromServer)), Some(1002));
        assert_eq!(answer(tungstenite::Error::Utf8("invalid utf-8 sequence".into())), Some(1007));
        let big = CapacityError::MessageTooLong { size: 2000, max_size: 1000 };
        assert_eq!(answer(tungstenite::Error::Capacity(big)), Some(1009));
        // the connection is gone: nothing to answer, and the loss says what happened on the wire
        let fin = read_error(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake), &cfg);
        assert_eq!((fin.0.text.as_str(), fin.1), (CLOSED_WITHOUT_CLOSE_FRAME, None));
        let rst = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let (e, frame) = read_error(tungstenite::Error::Io(rst), &cfg);
        assert!(e.text.contains("TCP RST") && frame.is_none(), "{}", e.text);
    }

    #[test]
    fn a_close_code_is_reported_as_the_server_sent_it_not_as_tungstenite_replaced_it() {
        let cfg = WsConfig { fatal_close_codes: vec![1002, 1014], ..Default::default() };
        // what tungstenite hands over for a code it does not allow
        let replaced = || Some(CloseFrame { code: CloseCode::Protocol, reason: "Protocol violation".into() });
        let e = close_error(replaced(), Some((999, "bye".into())), &cfg);
        assert!(e.text.contains("invalid close code 999 ") && e.close_code.is_none() && !e.fatal, "{e:?}");
        // the server's own 1002 with those very words, and 1014, which tungstenite does not know
        let e = close_error(replaced(), Some((1002, "Protocol violation".into())), &cfg);
        assert_eq!(
            (e.text.as_str(), e.close_code, e.fatal),
            ("server closed the connection: 1002 Protocol violation", Some(1002), true)
        );
        let e = close_error(replaced(), Some((1014, "bad gateway".into())), &cfg);
        assert_eq!(
            (e.text.as_str(), e.close_code, e.fatal),
            ("server closed the connection: 1014 bad gateway", Some(1014), true)
        );
        let own = close_error(
            Some(CloseFrame { code: CloseCode::Library(4001), reason: "go away".into() }),
            Some((4001, "go away".into())),
            &cfg,
        );
        assert_eq!((own.text.as_str(), own.close_code), ("server closed the connection: 4001 go away", Some(4001)));
        assert!(close_error(None, None, &cfg).close_frame);
    }

    #[tokio::test]
    async fn close_is_bounded_when_server_is_frozen() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        let c = client(srv.url(), |cfg| cfg.ping_interval = Duration::from_secs(60));
        c.start();
        c.wait_connected().await.unwrap();
        srv.freeze();
        let t0 = Instant::now();
        c.close().await;
        assert!(t0.elapsed() < Duration::from_millis(500 + 400), "{:?}", t0.elapsed());
        assert_eq!(c.state(), State::Closed);
    }
}
