//! The supervised signaling WebSocket (seeds 003, 001): a tokio-tungstenite client driven by the
//! generic reconnect loop.
//!
//! * Loss detection: close frame, read/write error or EOF after the handshake, and ping timeout (a ping
//!   every `ping_interval`; no frame of any kind within `ping_timeout` after it = loss). TCP keepalive
//!   and TCP_USER_TIMEOUT back it up in the kernel. Each loss ends one attempt, so the loop reports it
//!   exactly once.
//! * Every step is bounded: URL minting + TCP connect + TLS + WebSocket handshake by `open_timeout`, the
//!   first server message by `first_message_timeout`, the outage by the policy's budgets, close by
//!   `close_timeout`.
//! * Sends are queued (bounded by `send_buffer`) and written in order; a message leaves the queue only
//!   after the socket accepted it, so a loss mid-write re-sends it after the reconnect. Every accepted
//!   send resolves Ok once written, or fails with the connection's terminal error.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::Connector;

use crate::reconnect::{self, Attempt, Event, Events, GiveUpReason};
use crate::redact::redact_url;
use crate::watchdog::Watchdog;
use crate::ws_handshake::{run_on_connect, HandshakeInfo, OnConnectHook};
use crate::ws_heartbeat::{self, HeartbeatConfig, HeartbeatWatch};

const LOG: &str = "tether::ws";

#[derive(Debug, Clone)]
pub struct WsConfig {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub open_timeout: Duration,
    pub close_timeout: Duration,
    pub first_message_timeout: Option<Duration>,
    pub send_buffer: usize,
    /// Inbound messages buffered before the reader pauses (the ping check is suspended meanwhile).
    pub recv_buffer: usize,
    pub fatal_close_codes: Vec<u16>,
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
}

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
            recv_buffer: 65_536,
            fatal_close_codes: vec![1008],
            fatal_http_statuses: vec![401, 403],
            reconnect: reconnect::Config {
                ladder: vec![(Arc::from("resume"), 1), (Arc::from("restart"), 1)],
                ..Default::default()
            },
            watchdog: None,
            on_connect: None,
            heartbeat: None,
        }
    }
}

/// Where to connect for one attempt.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub headers: Vec<(String, String)>,
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
    pub close_code: Option<u16>,
    pub http_status: Option<u16>,
}

impl WsError {
    pub fn retry(text: impl AsRef<str>) -> Self {
        WsError { text: redact_url(text.as_ref()), fatal: false, close_code: None, http_status: None }
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
    Ended(Terminal),
}

/// How a connection ended for good.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    /// `close()` was called.
    Closed,
    /// The reconnect loop gave up.
    GaveUp { message: String, attempts: u32, elapsed: Duration, reason: GiveUpReason, last: WsError },
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
    last_rtt_us: AtomicU64,
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

struct Outgoing {
    msg: Message,
    done: Option<oneshot::Sender<Result<(), Terminal>>>,
}

enum Ctrl {
    Ping,
    /// An in-band heartbeat: written at once, outside the delivery queue.
    Send(Message),
    Flush,
    Close,
}

struct Shared {
    cfg: WsConfig,
    base: Instant,
    inbound: Mutex<VecDeque<Message>>,
    inbound_ready: Notify,
    inbound_space: Notify,
    reader_paused: AtomicBool,
    outbound: Mutex<VecDeque<Outgoing>>,
    /// Written but not yet confirmed by a pong to a later ping: (write sequence, message).
    unacked: Mutex<VecDeque<(u64, Outgoing)>>,
    written_seq: AtomicU64,
    outbound_ready: Notify,
    state: AtomicU8,
    terminal: OnceLock<Terminal>,
    close_requested: AtomicBool,
    close_notify: Notify,
    live: AtomicBool,
    connected_at: Mutex<Option<Instant>>,
    last_loss: Mutex<Option<String>>,
    last_rx_us: AtomicU64,
    state_change: Notify,
    events: broadcast::Sender<Event>,
    counters: Counters,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }
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
    fn lock_in(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_out(&self) -> std::sync::MutexGuard<'_, VecDeque<Outgoing>> {
        self.outbound.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_unacked(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Outgoing)>> {
        self.unacked.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Every message written up to `seq` reached the peer's WebSocket layer: resolve those sends.
    fn confirm(&self, seq: u64) {
        let done: Vec<Outgoing> = {
            let mut u = self.lock_unacked();
            let n = u.iter().take_while(|(s, _)| *s <= seq).count();
            u.drain(..n).map(|(_, o)| o).collect()
        };
        if done.is_empty() {
            return;
        }
        for mut o in done {
            if let Some(tx) = o.done.take() {
                let _ = tx.send(Ok(()));
            }
        }
    }
    /// After a loss: unconfirmed messages go back to the head of the queue, in order.
    fn requeue_unconfirmed(&self) -> usize {
        let mut out = self.lock_out();
        let mut u = self.lock_unacked();
        let n = u.len();
        while let Some((_, o)) = u.pop_back() {
            out.push_front(o);
        }
        n
    }
    fn ping_payload(&self) -> tungstenite::Bytes {
        let mut p = Vec::with_capacity(16);
        p.extend_from_slice(&self.written_seq.load(Ordering::SeqCst).to_be_bytes());
        p.extend_from_slice(&self.now_us().to_be_bytes());
        p.into()
    }
    async fn wait_close(&self) {
        loop {
            let n = self.close_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.close_requested.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
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
        let (events, _) = broadcast::channel(4096);
        Arc::new(WsClient {
            shared: Arc::new(Shared {
                cfg,
                base: Instant::now(),
                inbound: Mutex::new(VecDeque::new()),
                inbound_ready: Notify::new(),
                inbound_space: Notify::new(),
                reader_paused: AtomicBool::new(false),
                outbound: Mutex::new(VecDeque::new()),
                unacked: Mutex::new(VecDeque::new()),
                written_seq: AtomicU64::new(0),
                outbound_ready: Notify::new(),
                state: AtomicU8::new(State::Idle as u8),
                terminal: OnceLock::new(),
                close_requested: AtomicBool::new(false),
                close_notify: Notify::new(),
                live: AtomicBool::new(false),
                connected_at: Mutex::new(None),
                last_loss: Mutex::new(None),
                last_rx_us: AtomicU64::new(0),
                state_change: Notify::new(),
                events,
                counters: Counters::default(),
            }),
            provider,
            task: Mutex::new(None),
        })
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
        self.shared.events.subscribe()
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
            if let Some(t) = self.shared.terminal.get() {
                return Err(t.clone());
            }
            if self.shared.counters.connects.load(Ordering::SeqCst) > 0 {
                return Ok(());
            }
            n.await;
        }
    }

    /// Next buffered message, if any. `Err` once the connection ended and the buffer is drained.
    pub fn try_recv(&self) -> Result<Option<Message>, Terminal> {
        let (m, len) = {
            let mut q = self.shared.lock_in();
            let m = q.pop_front();
            (m, q.len())
        };
        match m {
            Some(m) => {
                if self.shared.reader_paused.load(Ordering::Relaxed) && len <= self.shared.cfg.recv_buffer / 2 {
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
        loop {
            let n = self.shared.inbound_ready.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.shared.lock_in().is_empty() || self.shared.terminal.get().is_some() {
                return;
            }
            n.await;
        }
    }

    pub async fn recv(&self) -> Result<Message, Terminal> {
        loop {
            let n = self.shared.inbound_ready.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            n.await;
        }
    }

    /// Queue `msg` and wait until the peer confirmed it (after a reconnect if needed).
    pub async fn send(&self, msg: Message) -> Result<(), SendError> {
        let rx = self.enqueue(msg)?;
        match rx.await {
            Ok(r) => r.map_err(SendError::Ended),
            Err(_) => Err(SendError::Ended(self.terminal().unwrap_or(Terminal::Closed))),
        }
    }

    /// Queue `msg` now (order = call order); the receiver resolves once the peer confirmed it.
    /// Fails at once when the connection ended or `send_buffer` messages are already pending.
    pub fn enqueue(&self, msg: Message) -> Result<oneshot::Receiver<Result<(), Terminal>>, SendError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.shared.lock_out();
            // checked under the lock: `finish` fails the queue under this lock when the connection ends
            if let Some(t) = self.shared.terminal.get() {
                return Err(SendError::Ended(t.clone()));
            }
            if self.shared.close_requested.load(Ordering::SeqCst) {
                return Err(SendError::Ended(Terminal::Closed));
            }
            let pending = q.len() + self.shared.lock_unacked().len();
            if pending >= self.shared.cfg.send_buffer {
                return Err(SendError::Full(pending));
            }
            q.push_back(Outgoing { msg, done: Some(tx) });
        }
        self.shared.outbound_ready.notify_one();
        Ok(rx)
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
                    tracing::warn!(target: LOG, "close did not finish within {:.1}s; connection aborted", bound.as_secs_f64());
                    finish(&self.shared, Err(None));
                }
            }
            None => finish(&self.shared, Ok(())),
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let connects = c.connects.load(Ordering::Relaxed);
        let rtt = c.last_rtt_us.load(Ordering::Relaxed);
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
            last_rtt: if rtt == 0 { None } else { Some(Duration::from_micros(rtt)) },
            send_queue: self.shared.lock_out().len() + self.shared.lock_unacked().len(),
            recv_queue: self.shared.lock_in().len(),
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

/// Record the terminal outcome (once), fail every queued send, wake every waiter.
fn finish(shared: &Shared, outcome: Result<(), Option<Terminal>>) {
    let term = match outcome {
        Ok(()) | Err(None) => Terminal::Closed,
        Err(Some(t)) => t,
    };
    let _ = shared.terminal.set(term.clone());
    let term = shared.terminal.get().cloned().unwrap_or(term);
    shared.set_state(if matches!(term, Terminal::Closed) { State::Closed } else { State::Failed });
    let mut pending: Vec<Outgoing> = shared.lock_unacked().drain(..).map(|(_, o)| o).collect();
    pending.extend(shared.lock_out().drain(..));
    for o in pending {
        if let Some(tx) = o.done {
            let _ = tx.send(Err(term.clone()));
        }
    }
    shared.live.store(false, Ordering::SeqCst);
    shared.inbound_ready.notify_waiters();
    let _ = shared.events.send(Event::Closed);
}

async fn supervise(shared: Arc<Shared>, provider: Arc<dyn TargetProvider>) {
    let hook_shared = shared.clone();
    let events = Events::new(shared.events.clone()).with_hook(move |ev| match ev {
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
        let events = shared.events.clone();
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
        |attempt| session(shared.clone(), provider.clone(), attempt),
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
        _ = idle_close => Ok(()),
    };
    let outcome = match outcome {
        Ok(()) => Ok(()),
        Err(g) => {
            let message = g.message();
            Err(Some(Terminal::GaveUp {
                message,
                attempts: g.attempts,
                elapsed: g.elapsed,
                reason: g.reason,
                last: g.last_error,
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

fn tls_connector() -> Connector {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let cfg = CFG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .expect("ring provider supports the default protocol versions");
        Arc::new(cfg)
    });
    Connector::Rustls(cfg.clone())
}

fn set_socket_options(tcp: &TcpStream, cfg: &WsConfig) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let ka = socket2::TcpKeepalive::new()
        .with_time(cfg.ping_interval.max(Duration::from_secs(1)))
        .with_interval((cfg.ping_timeout / 3).max(Duration::from_secs(1)));
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let ka = ka.with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(cfg.ping_interval + cfg.ping_timeout));
}

fn handshake_error(e: tungstenite::Error, cfg: &WsConfig) -> WsError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let mut err = WsError::retry(format!(
                "handshake rejected with HTTP {status} {}",
                resp.status().canonical_reason().unwrap_or("")
            ));
            err.http_status = Some(status);
            err.fatal = cfg.fatal_http_statuses.contains(&status);
            err
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
        other => WsError::retry(format!("handshake failed: {other}")),
    }
}

async fn open(
    shared: &Shared,
    provider: &Arc<dyn TargetProvider>,
    attempt: &Attempt,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>, WsError> {
    let cfg = &shared.cfg;
    let deadline = Instant::now() + cfg.open_timeout;
    let bound = cfg.open_timeout.as_secs_f64();
    let target = tokio::time::timeout_at(deadline, provider.target(&attempt.strategy, attempt.number))
        .await
        .map_err(|_| WsError::retry(format!("url_for did not return within open_timeout ({bound}s)")))??;
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| WsError::fatal(format!("invalid URL {}: {e}", target.url)))?;
    for (k, v) in cfg.headers.iter().chain(target.headers.iter()) {
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
            return Err(WsError::fatal(format!(
                "unsupported URL scheme {other:?} in {}; use ws:// or wss://",
                target.url
            )))
        }
    };
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let shown = redact_url(&target.url);
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect((host.as_str(), port))).await {
        Err(_) => {
            return Err(WsError::retry(format!("TCP connect to {host}:{port} timed out (open_timeout {bound}s)")))
        }
        Ok(Err(e)) => return Err(WsError::retry(format!("TCP connect to {host}:{port} failed: {e}"))),
        Ok(Ok(t)) => t,
    };
    set_socket_options(&tcp, cfg);
    let connector = if tls { tls_connector() } else { Connector::Plain };
    tracing::debug!(target: LOG, url = %shown, strategy = &*attempt.strategy, attempt = attempt.number, "opening WebSocket to {shown}");
    match tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector)),
    )
    .await
    {
        Err(_) => Err(WsError::retry(format!("WebSocket handshake with {shown} timed out (open_timeout {bound}s)"))),
        Ok(Err(e)) => Err(handshake_error(e, cfg)),
        Ok(Ok((ws, _resp))) => Ok(ws),
    }
}

/// One attempt: open, then pump until the connection is lost (Err) or closed on request (Ok).
async fn session(shared: Arc<Shared>, provider: Arc<dyn TargetProvider>, attempt: Attempt) -> Result<(), WsError> {
    if shared.close_requested.load(Ordering::SeqCst) {
        return Ok(());
    }
    let cfg = &shared.cfg;
    let ws = open(&shared, &provider, &attempt).await?;
    let (mut sink, mut stream) = ws.split();
    if let Some(hook) = &cfg.on_connect {
        let info = HandshakeInfo {
            attempt: attempt.number,
            strategy: attempt.strategy.clone(),
            reconnect: shared.counters.connects.load(Ordering::SeqCst) > 0,
        };
        let unread =
            run_on_connect(hook, info, cfg.open_timeout, &mut sink, &mut stream, |f| close_error(f, cfg)).await?;
        for m in unread {
            push_inbound(&shared, m);
        }
    }
    shared.last_rx_us.store(shared.now_us(), Ordering::SeqCst);

    if let Some(fm) = cfg.first_message_timeout {
        let first = tokio::time::timeout(fm, async {
            loop {
                match stream.next().await {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
                    Some(Ok(Message::Close(f))) => return Err(close_error(f, cfg)),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(WsError::retry(format!("read error before the first message: {e}"))),
                    None => return Err(WsError::retry("connection closed before the first message")),
                }
            }
        })
        .await
        .map_err(|_| {
            WsError::retry(format!("no first message within first_message_timeout ({}s)", fm.as_secs_f64()))
        })??;
        push_inbound(&shared, first);
    }

    *shared.connected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    shared.live.store(true, Ordering::SeqCst);
    attempt.connected();
    // a close requested during the handshake is honoured now that we can close gracefully
    let result = pump(&shared, &mut sink, &mut stream).await;
    shared.live.store(false, Ordering::SeqCst);
    if let Err(e) = &result {
        let resend = shared.requeue_unconfirmed();
        tracing::debug!(target: LOG, error = %e.text, unconfirmed = resend as u64,
            "connection lost: {}; {resend} unconfirmed message(s) will be re-sent after the reconnect", e.text);
    }
    result
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    Message,
>;
type Stream =
    futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>;

fn close_error(frame: Option<CloseFrame>, cfg: &WsConfig) -> WsError {
    match frame {
        Some(f) => {
            let code = u16::from(f.code);
            let mut e =
                WsError::retry(format!("server closed the connection: {code} {}", f.reason.as_str()).trim_end());
            e.close_code = Some(code);
            e.fatal = cfg.fatal_close_codes.contains(&code);
            e
        }
        None => WsError::retry("server closed the connection without a status code"),
    }
}

fn push_inbound(shared: &Shared, m: Message) {
    let len = match &m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    };
    shared.counters.messages_in.fetch_add(1, Ordering::Relaxed);
    shared.counters.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    shared.lock_in().push_back(m);
    shared.inbound_ready.notify_waiters();
}

async fn pump(shared: &Arc<Shared>, sink: &mut Sink, stream: &mut Stream) -> Result<(), WsError> {
    let cfg = &shared.cfg;
    let (ctrl_tx, mut ctrl_rx) = mpsc::unbounded_channel::<Ctrl>();
    let beats = HeartbeatWatch::default();

    let reader = async {
        loop {
            if shared.lock_in().len() >= cfg.recv_buffer {
                shared.reader_paused.store(true, Ordering::SeqCst);
                let n = shared.inbound_space.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if shared.lock_in().len() >= cfg.recv_buffer {
                    n.await;
                }
                shared.reader_paused.store(false, Ordering::SeqCst);
                shared.last_rx_us.store(shared.now_us(), Ordering::SeqCst);
                continue;
            }
            let msg = match stream.next().await {
                None => return Err(WsError::retry("connection closed by the peer without a close frame (EOF)")),
                Some(Err(e)) => return Err(WsError::retry(format!("read error: {e}"))),
                Some(Ok(m)) => m,
            };
            shared.last_rx_us.store(shared.now_us(), Ordering::SeqCst);
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    beats.on_inbound(&msg);
                    push_inbound(shared, msg)
                }
                Message::Ping(_) => {
                    let _ = ctrl_tx.send(Ctrl::Flush);
                }
                Message::Pong(p) => {
                    // our pings carry (write sequence, send time): the pong confirms every message
                    // written before that ping, since frames are ordered on the connection
                    if p.len() == 16 {
                        let seq = u64::from_be_bytes(p[..8].try_into().unwrap_or([0; 8]));
                        let sent = u64::from_be_bytes(p[8..].try_into().unwrap_or([0; 8]));
                        let now = shared.now_us();
                        if sent <= now {
                            shared.counters.last_rtt_us.store((now - sent).max(1), Ordering::Relaxed);
                        }
                        shared.confirm(seq);
                    }
                }
                Message::Close(f) => return Err(close_error(f, cfg)),
                Message::Frame(_) => {}
            }
        }
    };

    let writer = async {
        let wr = |e: tungstenite::Error| WsError::retry(format!("write error: {e}"));
        let mut closing = false;
        let mut pending_ctrl: Option<Ctrl> = None;
        loop {
            // control frames first: one that woke us, then any others queued
            while let Some(c) = pending_ctrl.take().or_else(|| ctrl_rx.try_recv().ok()) {
                match c {
                    Ctrl::Ping => {
                        sink.feed(Message::Ping(shared.ping_payload())).await.map_err(wr)?;
                        sink.flush().await.map_err(wr)?;
                    }
                    Ctrl::Flush => sink.flush().await.map_err(wr)?,
                    Ctrl::Send(m) => {
                        sink.feed(m).await.map_err(wr)?;
                        sink.flush().await.map_err(wr)?;
                    }
                    Ctrl::Close => closing = true,
                }
            }
            let batch: Vec<Message> = shared.lock_out().iter().take(64).map(|o| o.msg.clone()).collect();
            if batch.is_empty() {
                if closing {
                    // everything accepted was written; wait for the peer to confirm it, then close
                    if !shared.lock_unacked().is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                    sink.send(Message::Close(Some(frame))).await.map_err(wr)?;
                    return Ok(());
                }
                tokio::select! {
                    _ = shared.outbound_ready.notified() => {}
                    c = ctrl_rx.recv() => match c {
                        Some(c) => pending_ctrl = Some(c),
                        // the pump owns the sender, so this only happens while it is being torn down
                        None => std::future::pending::<()>().await,
                    },
                }
                continue;
            }
            let mut bytes = 0u64;
            for m in &batch {
                bytes += match m {
                    Message::Text(t) => t.len() as u64,
                    Message::Binary(b) => b.len() as u64,
                    _ => 0,
                };
                sink.feed(m.clone()).await.map_err(wr)?;
            }
            // the batch is written: move it to the unconfirmed list, then ask for confirmation
            let n = {
                let mut q = shared.lock_out();
                let mut u = shared.lock_unacked();
                let n = batch.len().min(q.len());
                for o in q.drain(..n) {
                    let seq = shared.written_seq.fetch_add(1, Ordering::SeqCst) + 1;
                    u.push_back((seq, o));
                }
                n
            };
            shared.counters.messages_out.fetch_add(n as u64, Ordering::Relaxed);
            shared.counters.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            sink.feed(Message::Ping(shared.ping_payload())).await.map_err(wr)?;
            sink.flush().await.map_err(wr)?;
        }
    };

    // Liveness: a ping every ping_interval; the connection is lost when nothing at all was received
    // for ping_interval + ping_timeout (a healthy peer answers every ping, so it is never silent that
    // long). Detection is therefore bounded by interval + timeout after the last frame, whatever the
    // phase of the ping cycle when the peer went silent.
    let pinger = async {
        let silence_limit = cfg.ping_interval + cfg.ping_timeout;
        let mut next_ping = Instant::now() + cfg.ping_interval;
        loop {
            let last_rx = shared.base + Duration::from_micros(shared.last_rx_us.load(Ordering::SeqCst));
            let dead_at = last_rx + silence_limit;
            tokio::time::sleep_until(next_ping.min(dead_at)).await;
            let now = Instant::now();
            let last_rx = shared.base + Duration::from_micros(shared.last_rx_us.load(Ordering::SeqCst));
            if now >= last_rx + silence_limit && !shared.reader_paused.load(Ordering::SeqCst) {
                return Err::<(), _>(WsError::retry(format!(
                    "ping timeout: nothing received for {:.3}s (ping_interval {:.3}s + ping_timeout {:.3}s)",
                    now.saturating_duration_since(last_rx).as_secs_f64(),
                    cfg.ping_interval.as_secs_f64(),
                    cfg.ping_timeout.as_secs_f64()
                )));
            }
            if now >= next_ping {
                shared.counters.pings_sent.fetch_add(1, Ordering::Relaxed);
                let _ = ctrl_tx.send(Ctrl::Ping);
                next_ping = now + cfg.ping_interval;
            }
        }
    };

    let heartbeat = ws_heartbeat::run(
        cfg.heartbeat.as_ref(),
        &beats,
        |m| ctrl_tx.send(Ctrl::Send(m)).is_ok(),
        || shared.reader_paused.load(Ordering::SeqCst),
    );

    tokio::pin!(reader, writer, pinger, heartbeat);
    let lost = tokio::select! {
        r = &mut reader => r,
        r = &mut writer => r,
        r = &mut pinger => r,
        r = &mut heartbeat => r,
        _ = shared.wait_close() => Ok(()),
    };
    lost?;
    // Closing on request: the writer flushes what was accepted and sends a close frame; then wait for
    // the peer's close (the reader ends). All of it within close_timeout.
    shared.set_state(State::Closing);
    let _ = ctrl_tx.send(Ctrl::Close);
    let graceful = async {
        if (&mut writer).await.is_ok() {
            let _ = (&mut reader).await;
        }
    };
    let _ = tokio::time::timeout(cfg.close_timeout, graceful).await;
    Ok(())
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
        assert!(matches!(c.send(Message::text("late")).await, Err(SendError::Ended(Terminal::Closed))));
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
