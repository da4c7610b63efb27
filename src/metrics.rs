//! Metrics of tether's objects: counted here when something happens (a connect, a loss, a spawn,
//! an alarm; never per message), read when an exporter collects.
//!
//! * Counters are totals in a process-wide registry keyed by instrument and attributes, so a series
//!   keeps counting across the objects that share its attributes and never goes back when one of them
//!   is dropped.
//! * Gauges (connections by state, unconfirmed sends, pool processes, pool health) are read from the
//!   live objects at collection ([`Source`]); a dropped object stops reporting.
//! * Histogram values are queued here (bounded) and handed over at collection, so the exporter's own
//!   histogram (its buckets, its temporality) aggregates them.
//!
//! Nothing is measured unless an exporter is attached ([`set_enabled`], from `tether.metrics.enable()`):
//! an object created before that gets no [`Labels`] and costs one `None` check where it would count.
//! Attributes are bounded by construction: names given by the application, the server's host, ladder
//! rungs, and the closed sets below (loss reasons, alarm kinds, states); URLs and tokens never.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

// tokio's clock (paused in tests), which is the system's outside a runtime (the bindings' calls)
use tokio::time::Instant;

/// What an instrument is, as the OpenTelemetry API creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic total, read at collection (an observable counter).
    Counter,
    /// A current, additive count, read at collection (an observable up-down counter).
    UpDownCounter,
    /// Values handed over at collection and aggregated by the exporter's histogram.
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::UpDownCounter => "updowncounter",
            Kind::Histogram => "histogram",
        }
    }
}

/// Every instrument tether reports; [`Instrument::spec`] says how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instrument {
    Connects,
    Losses,
    Retries,
    GiveUps,
    SendsResent,
    SendsFailed,
    Connections,
    SendsUnconfirmed,
    Downtime,
    Detection,
    Handshake,
    OnConnect,
    Spawns,
    SpawnFailures,
    PoolProcesses,
    PoolHealthy,
    AcquireWait,
    Alarms,
    StageDuration,
}

/// Name, instrument kind, unit, description and attributes of an instrument: the one source for the
/// OpenTelemetry instruments the Python package creates and for the README's table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub description: &'static str,
    pub attributes: &'static [&'static str],
    /// Advisory bucket boundaries of a histogram (seconds).
    pub boundaries: &'static [f64],
}

const CONN: &[&str] = &["name", "server.address"];
const SHORT: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const LONG: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

impl Instrument {
    pub const ALL: [Instrument; 19] = [
        Instrument::Connects,
        Instrument::Losses,
        Instrument::Retries,
        Instrument::GiveUps,
        Instrument::SendsResent,
        Instrument::SendsFailed,
        Instrument::Connections,
        Instrument::SendsUnconfirmed,
        Instrument::Downtime,
        Instrument::Detection,
        Instrument::Handshake,
        Instrument::OnConnect,
        Instrument::Spawns,
        Instrument::SpawnFailures,
        Instrument::PoolProcesses,
        Instrument::PoolHealthy,
        Instrument::AcquireWait,
        Instrument::Alarms,
        Instrument::StageDuration,
    ];

    pub fn spec(self) -> Spec {
        use Kind::*;
        let (name, kind, unit, description, attributes, boundaries): (_, _, _, _, &'static [&'static str], _) =
            match self {
                Instrument::Connects => (
                    "tether.connection.connects",
                    Counter,
                    "{connection}",
                    "Connections established: the first connect and every reconnect",
                    CONN,
                    &[][..],
                ),
                Instrument::Losses => (
                    "tether.connection.losses",
                    Counter,
                    "{connection}",
                    "Established connections lost, by reason (close_frame, eof, reset, ping_timeout, \
                     heartbeat_timeout, protocol_error, io_error, timeout, closed, error)",
                    &["name", "server.address", "reason"],
                    &[],
                ),
                Instrument::Retries => (
                    "tether.connection.retries",
                    Counter,
                    "{attempt}",
                    "Attempts scheduled after a failed attempt or a loss, by the ladder rung they use",
                    &["name", "server.address", "strategy"],
                    &[],
                ),
                Instrument::GiveUps => (
                    "tether.connection.give_ups",
                    Counter,
                    "{connection}",
                    "Reconnect loops that gave up (tether.GaveUp)",
                    CONN,
                    &[],
                ),
                Instrument::SendsResent => (
                    "tether.connection.sends.resent",
                    Counter,
                    "{message}",
                    "Messages written on a connection that was lost before the peer confirmed them: \
                     written again first after the reconnect",
                    CONN,
                    &[],
                ),
                Instrument::SendsFailed => (
                    "tether.connection.sends.failed",
                    Counter,
                    "{message}",
                    "Messages removed from the send queue and reported in tether.SendFailed (close 1009, \
                     or in flight at consecutive losses)",
                    CONN,
                    &[],
                ),
                Instrument::Connections => (
                    "tether.connection.count",
                    UpDownCounter,
                    "{connection}",
                    "Connections (tether.connect) and reconnect loops (tether.Reconnector) by state: 1 under \
                     the current state, 0 under the others",
                    &["name", "server.address", "state"],
                    &[],
                ),
                Instrument::SendsUnconfirmed => (
                    "tether.connection.sends.unconfirmed",
                    UpDownCounter,
                    "{message}",
                    "Messages accepted by send() and not yet confirmed by the peer",
                    CONN,
                    &[],
                ),
                Instrument::Downtime => (
                    "tether.connection.downtime",
                    Histogram,
                    "s",
                    "From the loss of an established connection to the next connection (each gap of a \
                     flapping link on its own)",
                    CONN,
                    LONG,
                ),
                Instrument::Detection => (
                    "tether.connection.detection.duration",
                    Histogram,
                    "s",
                    "Per loss declared by a liveness deadline: from the last sign of life (the last pong for \
                     ping_timeout, the last heartbeat reply for heartbeat_timeout, or the connection's start) \
                     to the loss",
                    &["name", "server.address", "reason"],
                    &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0],
                ),
                Instrument::Handshake => (
                    "tether.connection.handshake.duration",
                    Histogram,
                    "s",
                    "Per successful attempt: from its start to the connection counting as up (URL, TCP, TLS, \
                     WebSocket upgrade, on_connect, first message)",
                    CONN,
                    SHORT,
                ),
                Instrument::OnConnect => (
                    "tether.connection.on_connect.duration",
                    Histogram,
                    "s",
                    "Per successful run of the on_connect hook (the application's handshake)",
                    CONN,
                    SHORT,
                ),
                Instrument::Spawns => (
                    "tether.pool.spawns",
                    Counter,
                    "{process}",
                    "Processes a ProcPool spawned and initialized",
                    &["name"],
                    &[],
                ),
                Instrument::SpawnFailures => (
                    "tether.pool.spawn_failures",
                    Counter,
                    "{process}",
                    "Spawns that failed or did not initialize within initialize_timeout",
                    &["name"],
                    &[],
                ),
                Instrument::PoolProcesses => (
                    "tether.pool.processes",
                    UpDownCounter,
                    "{process}",
                    "A ProcPool's processes by state (idle, in_use, starting)",
                    &["name", "state"],
                    &[],
                ),
                Instrument::PoolHealthy => (
                    "tether.pool.healthy",
                    UpDownCounter,
                    "{pool}",
                    "1 while the pool can produce processes, 0 after consecutive spawn failures",
                    &["name"],
                    &[],
                ),
                Instrument::AcquireWait => (
                    "tether.pool.acquire.duration",
                    Histogram,
                    "s",
                    "Per acquire(): the wait for a process, by outcome (acquired, exhausted, timeout, closed)",
                    &["name", "outcome"],
                    &[0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                ),
                Instrument::Alarms => (
                    "tether.watchdog.alarms",
                    Counter,
                    "{alarm}",
                    "Watchdog alarms, by kind (dwell, progress, liveness)",
                    &["name", "kind"],
                    &[],
                ),
                Instrument::StageDuration => (
                    "tether.readiness.stage.duration",
                    Histogram,
                    "s",
                    "Per stage a dispatch reached: its time since the previous stage (the first: since the \
                     dispatch call started)",
                    &["name", "stage"],
                    LONG,
                ),
            };
        Spec { name, kind, unit, description, attributes, boundaries }
    }
}

/// Why an established connection was lost: a closed set, so a reason is an attribute, never free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// The server sent a close frame.
    CloseFrame,
    /// TCP FIN without a close frame.
    Eof,
    /// TCP RST.
    Reset,
    /// A ping was not echoed within `ping_timeout`.
    PingTimeout,
    /// The application heartbeat got no reply within its timeout.
    HeartbeatTimeout,
    /// The server broke the WebSocket protocol (tether closed with 1002, 1007 or 1009).
    ProtocolError,
    /// Another read or write error (the kernel's TCP_USER_TIMEOUT among them).
    IoError,
    /// A Reconnector's connection ended with a TimeoutError.
    Timeout,
    /// `Reconnector.closed()`: the connection ended without an error.
    Closed,
    /// Anything else (a Reconnector's other exceptions).
    Error,
}

impl LossKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LossKind::CloseFrame => "close_frame",
            LossKind::Eof => "eof",
            LossKind::Reset => "reset",
            LossKind::PingTimeout => "ping_timeout",
            LossKind::HeartbeatTimeout => "heartbeat_timeout",
            LossKind::ProtocolError => "protocol_error",
            LossKind::IoError => "io_error",
            LossKind::Timeout => "timeout",
            LossKind::Closed => "closed",
            LossKind::Error => "error",
        }
    }

    /// The kind of a loss from the reason the loop reports (`ConnectionLost.reason`): the texts of
    /// `tether.connect` (`ws::protocol`, `ws::heartbeat`, `ws::error`; the tests in this module feed each
    /// of them), and for a `Reconnector` the exception's type, which its reason starts with.
    pub fn classify(reason: &str) -> LossKind {
        let starts = |p: &str| reason.starts_with(p);
        if starts(crate::ws::protocol::PING_TIMEOUT) {
            LossKind::PingTimeout
        } else if starts(crate::ws::heartbeat::HEARTBEAT_TIMEOUT) {
            LossKind::HeartbeatTimeout
        } else if starts(PEER_CLOSE) {
            LossKind::CloseFrame
        } else if reason == crate::ws::error::CLOSED_WITHOUT_CLOSE_FRAME {
            LossKind::Eof
        } else if reason == crate::ws::error::RESET_WITHOUT_CLOSE_FRAME {
            LossKind::Reset
        } else if reason.contains(FAILED_BY_TETHER) {
            LossKind::ProtocolError
        } else if starts("read error") || starts("write error") {
            LossKind::IoError
        } else if reason == "closed" {
            LossKind::Closed
        } else {
            // a Python exception, described as "Type: message"
            match reason.split(':').next().unwrap_or_default() {
                "TimeoutError" => LossKind::Timeout,
                "ConnectionResetError" | "ConnectionAbortedError" | "BrokenPipeError" => LossKind::Reset,
                "EOFError" | "IncompleteReadError" => LossKind::Eof,
                _ => LossKind::Error,
            }
        }
    }
}

/// How the texts of `ws::error` (`peer_close`, `violation`) say who ended the connection.
const PEER_CLOSE: &str = "server closed the connection";
const FAILED_BY_TETHER: &str = "tether closed the connection with 10";

/// The states of `tether.connection.count`: those of a connection (`ws::State`), which a Reconnector's
/// loop uses too (it is never idle once used, nor closing).
pub const STATES: [&str; 7] = ["idle", "connecting", "connected", "reconnecting", "closing", "closed", "failed"];

/// An attribute value: a `&'static str` of a closed set, or a name given by the application.
pub type Value = Cow<'static, str>;

/// The attributes an object's series carry (`name`, and `server.address` for a connection), fixed
/// at its creation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[(&'static str, Arc<str>)]>);

impl Labels {
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, &**v))
    }
}

/// The labels of a new object, or None when no exporter is attached (the object is then never
/// measured, and pays nothing for it).
pub fn labels(pairs: &[(&'static str, &str)]) -> Option<Labels> {
    enabled().then(|| Labels(pairs.iter().map(|(k, v)| (*k, Arc::from(*v))).collect()))
}

/// One series: an instrument with the object's labels and at most one attribute of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    instrument: Instrument,
    labels: Labels,
    extra: Option<(&'static str, Value)>,
}

/// Attributes of one series, as handed to the exporter.
pub type Attributes = Vec<(&'static str, String)>;

impl Key {
    fn attributes(&self) -> Attributes {
        let mut a: Attributes = self.labels.pairs().map(|(k, v)| (k, v.to_string())).collect();
        if let Some((k, v)) = &self.extra {
            a.push((k, v.to_string()));
        }
        a
    }
}

/// Series per instrument beyond which new attribute sets are counted under one overflow series, as
/// the OpenTelemetry SDK does (objects named per call or per room would otherwise grow the registry
/// for ever).
pub const CARDINALITY_LIMIT: usize = 2000;
/// Histogram values held for the next collection; older ones are dropped beyond it (an exporter that
/// never collects must not make tether grow).
pub const SAMPLES_LIMIT: usize = 10_000;

struct Registry {
    /// The process the totals belong to: a forked child starts from nothing.
    pid: u32,
    counters: HashMap<Key, u64>,
    series: HashMap<Instrument, usize>,
    samples: VecDeque<(Key, f64)>,
    dropped: u64,
    sources: Vec<Weak<dyn Source>>,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            pid: std::process::id(),
            counters: HashMap::new(),
            series: HashMap::new(),
            samples: VecDeque::new(),
            dropped: 0,
            sources: vec![],
        }
    }

    /// The key to count under: `key` itself while its instrument has room for a new series.
    fn admit(&mut self, key: Key) -> Key {
        if self.counters.contains_key(&key) {
            return key;
        }
        let n = self.series.entry(key.instrument).or_default();
        if *n < CARDINALITY_LIMIT {
            *n += 1;
            return key;
        }
        let overflow = Labels(Arc::new([("otel.metric.overflow", Arc::from("true"))]));
        Key { instrument: key.instrument, labels: overflow, extra: None }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn registry() -> MutexGuard<'static, Option<Registry>> {
    let mut r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if !matches!(&*r, Some(reg) if reg.pid == pid) {
        *r = Some(Registry::new());
    }
    r
}

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut r = registry();
    f(r.as_mut().expect("registry() fills it"))
}

/// Whether an exporter is attached: new objects get labels, histogram values are kept.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Attach (true) or detach (false) the exporter. Detaching drops the values not handed over yet; the
/// totals stay (an exporter attached again reads them on, as cumulative counters).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
    if !on {
        with_registry(|r| r.samples.clear());
    }
}

fn key(labels: &Labels, instrument: Instrument, extra: Option<(&'static str, Value)>) -> Key {
    Key { instrument, labels: labels.clone(), extra }
}

/// Add `n` to a counter.
pub fn count(labels: &Labels, instrument: Instrument, extra: Option<(&'static str, Value)>, n: u64) {
    if n == 0 {
        return;
    }
    with_registry(|r| {
        let k = r.admit(key(labels, instrument, extra));
        *r.counters.entry(k).or_default() += n;
    });
}

/// A histogram value, handed to the exporter at its next collection.
pub fn record(labels: &Labels, instrument: Instrument, extra: Option<(&'static str, Value)>, value: f64) {
    if !enabled() {
        return;
    }
    let first_drop = with_registry(|r| {
        let mut first = false;
        if r.samples.len() >= SAMPLES_LIMIT {
            r.samples.pop_front();
            r.dropped += 1;
            first = r.dropped == 1;
        }
        r.samples.push_back((key(labels, instrument, extra), value));
        first
    });
    // logged with the registry unlocked: the record goes to Python (the GIL), and a thread holding the
    // GIL may be waiting for the registry (a collection): the two would wait on each other for ever
    if first_drop {
        tracing::warn!(target: "tether::metrics",
            "{SAMPLES_LIMIT} histogram values are waiting for a collection; the oldest are dropped \
             (is a metric reader collecting?)");
    }
}

/// A live object's gauges, read at each collection. It must not call into this module while
/// observing (the registry is not locked meanwhile, but an object's own locks may be).
pub trait Source: Send + Sync {
    /// Add the object's values of `instrument` (an up-down counter) to `out`, if it has any.
    fn observe(&self, instrument: Instrument, out: &mut Gauges);
}

/// Register a live object's gauges; it stops reporting once dropped.
pub fn observe(source: Weak<dyn Source>) {
    with_registry(|r| {
        r.sources.retain(|s| s.strong_count() > 0);
        r.sources.push(source);
    });
}

/// What sources report at one collection: values of the same series are added up (two connections
/// with the same name and host are one series).
#[derive(Default)]
pub struct Gauges {
    values: HashMap<Key, f64>,
}

impl Gauges {
    pub fn add(&mut self, labels: &Labels, instrument: Instrument, extra: Option<(&'static str, Value)>, v: f64) {
        *self.values.entry(key(labels, instrument, extra)).or_default() += v;
    }

    /// 1 under `current`, 0 under every other state of `states` (a series for each, so a state that
    /// empties reads 0 rather than disappearing).
    pub fn states(&mut self, labels: &Labels, instrument: Instrument, states: &[&'static str], current: &str) {
        for s in states {
            self.add(labels, instrument, Some(("state", Cow::Borrowed(*s))), f64::from(u8::from(*s == current)));
        }
    }
}

/// The current values of a counter or an up-down counter, one per series, in a stable order.
pub fn read(instrument: Instrument) -> Vec<(Attributes, f64)> {
    let mut out: Vec<(Attributes, f64)> = match instrument.spec().kind {
        Kind::Counter => with_registry(|r| {
            r.counters
                .iter()
                .filter(|(k, _)| k.instrument == instrument)
                .map(|(k, v)| (k.attributes(), *v as f64))
                .collect()
        }),
        Kind::UpDownCounter => {
            // observed without the registry's lock: a source takes its own locks, under which it may count
            let sources: Vec<Arc<dyn Source>> = with_registry(|r| {
                r.sources.retain(|s| s.strong_count() > 0);
                r.sources.iter().filter_map(Weak::upgrade).collect()
            });
            let mut g = Gauges::default();
            for s in sources {
                s.observe(instrument, &mut g);
            }
            g.values.into_iter().filter(|(k, _)| k.instrument == instrument).map(|(k, v)| (k.attributes(), v)).collect()
        }
        Kind::Histogram => vec![],
    };
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every histogram value recorded since the last call, in order.
pub fn drain() -> Vec<(Instrument, Attributes, f64)> {
    let samples = with_registry(|r| std::mem::take(&mut r.samples));
    samples.into_iter().map(|(k, v)| (k.instrument, k.attributes(), v)).collect()
}

/// The metrics of one reconnect loop, fed by the loop's reports (`reconnect::report`, shared by
/// `tether.connect` and `tether.Reconnector`) and, for a connection, by its protocol, heartbeat and
/// `on_connect` hook. A Reconnector's gauge reads the state kept here; a connection reports its own.
#[derive(Debug)]
pub struct Loop {
    labels: Labels,
    state: AtomicU8,
    up_once: AtomicBool,
    clock: Mutex<Clock>,
}

#[derive(Debug, Default)]
struct Clock {
    /// When the current attempt began (the run form reports it; the step-wise form does not).
    attempt_started: Option<Instant>,
    /// When the established connection was lost, until the next one.
    down_since: Option<Instant>,
}

fn state_index(s: &str) -> u8 {
    STATES.iter().position(|x| *x == s).unwrap_or(0) as u8
}

impl Loop {
    pub fn new(labels: Labels) -> Arc<Loop> {
        Arc::new(Loop {
            labels,
            state: AtomicU8::new(0),
            up_once: AtomicBool::new(false),
            clock: Mutex::new(Clock::default()),
        })
    }

    fn clock(&self) -> MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    fn set_state(&self, s: &str) {
        self.state.store(state_index(s), Ordering::Relaxed);
    }

    fn was_up(&self) -> bool {
        self.up_once.load(Ordering::Relaxed)
    }

    pub fn attempt_started(&self) {
        self.clock().attempt_started = Some(Instant::now());
        self.set_state(if self.was_up() { "reconnecting" } else { "connecting" });
    }

    /// The attempt connected: its handshake's time, and the downtime it ends (each gap of a flapping
    /// link on its own, so the values add up to the time spent without a connection).
    pub fn up(&self) {
        count(&self.labels, Instrument::Connects, None, 1);
        let (started, down_since) = {
            let mut c = self.clock();
            (c.attempt_started.take(), c.down_since.take())
        };
        if let Some(t) = started {
            record(&self.labels, Instrument::Handshake, None, t.elapsed().as_secs_f64());
        }
        if let Some(t) = down_since {
            record(&self.labels, Instrument::Downtime, None, t.elapsed().as_secs_f64());
        }
        self.up_once.store(true, Ordering::Relaxed);
        self.set_state("connected");
    }

    /// An established connection was lost, for `reason` (see `LossKind::classify`).
    pub fn lost(&self, reason: &str) {
        let kind = LossKind::classify(reason);
        count(&self.labels, Instrument::Losses, Some(("reason", Cow::Borrowed(kind.as_str()))), 1);
        self.clock().down_since.get_or_insert_with(Instant::now);
        self.set_state("reconnecting");
    }

    pub fn retry(&self, strategy: &str) {
        count(&self.labels, Instrument::Retries, Some(("strategy", Cow::Owned(strategy.to_string()))), 1);
        self.set_state(if self.was_up() { "reconnecting" } else { "connecting" });
    }

    pub fn gave_up(&self) {
        count(&self.labels, Instrument::GiveUps, None, 1);
        self.set_state("failed");
    }

    /// The loop's run returned (a Reconnector's `run()`): nothing is connected through it any more.
    pub fn ended(&self) {
        if STATES[usize::from(self.state.load(Ordering::Relaxed))] != "failed" {
            self.set_state("closed");
        }
    }

    /// A liveness deadline declared the connection lost after `silence` without a sign of life.
    pub fn detected(&self, kind: LossKind, silence: Duration) {
        record(
            &self.labels,
            Instrument::Detection,
            Some(("reason", Cow::Borrowed(kind.as_str()))),
            silence.as_secs_f64(),
        );
    }

    pub fn resent(&self, n: usize) {
        count(&self.labels, Instrument::SendsResent, None, n as u64);
    }

    pub fn failed_sends(&self, n: usize) {
        count(&self.labels, Instrument::SendsFailed, None, n as u64);
    }

    pub fn on_connect(&self, took: Duration) {
        record(&self.labels, Instrument::OnConnect, None, took.as_secs_f64());
    }
}

/// What the protocol counts of a measured connection's losses.
impl crate::ws::protocol::LossMeter for Loop {
    fn ping_silence(&self, silence: Duration) {
        self.detected(LossKind::PingTimeout, silence);
    }

    fn resent(&self, n: usize) {
        Loop::resent(self, n);
    }

    fn failed_sends(&self, n: usize) {
        Loop::failed_sends(self, n);
    }
}

impl Source for Loop {
    fn observe(&self, instrument: Instrument, out: &mut Gauges) {
        if instrument == Instrument::Connections {
            let current = STATES[usize::from(self.state.load(Ordering::Relaxed))];
            out.states(&self.labels, instrument, &STATES, current);
        }
    }
}

/// The `server.address` of a WebSocket URL: its host, without userinfo, port, path or query.
pub fn server_address(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tests that attach the exporter share the process-wide registry (one drains what another
    /// recorded, one detaches while another records): one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    pub(crate) fn attached() -> tokio::sync::MutexGuard<'static, ()> {
        let g = SERIAL.blocking_lock();
        set_enabled(true);
        g
    }

    pub(crate) async fn attached_async() -> tokio::sync::MutexGuard<'static, ()> {
        let g = SERIAL.lock().await;
        set_enabled(true);
        g
    }

    pub(crate) fn total(instrument: Instrument, attr: (&str, &str)) -> f64 {
        read(instrument)
            .iter()
            .filter(|(a, _)| a.iter().any(|(k, v)| *k == attr.0 && v == attr.1))
            .map(|(_, v)| v)
            .sum()
    }

    #[test]
    fn instruments_follow_the_naming_rules() {
        let mut names = std::collections::HashSet::new();
        for i in Instrument::ALL {
            let s = i.spec();
            assert!(names.insert(s.name), "{} twice", s.name);
            assert!(s.name.starts_with("tether."), "{}", s.name);
            assert!(s.name.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'), "{}", s.name);
            assert!(!s.name.ends_with("_total"), "{}", s.name);
            match s.kind {
                Kind::Histogram => {
                    assert_eq!(s.unit, "s", "{}", s.name);
                    assert!(s.boundaries.windows(2).all(|w| w[0] < w[1]), "{}", s.name);
                }
                _ => assert!(s.unit.starts_with('{') && s.boundaries.is_empty(), "{}", s.name),
            }
            assert!(s.attributes.contains(&"name"), "{}", s.name);
        }
    }

    #[test]
    fn server_address_is_the_host_alone() {
        assert_eq!(server_address("wss://user:pw@SFU.example.com:443/rtc?access_token=x"), "sfu.example.com");
        assert_eq!(server_address("ws://[::1]:8080/"), "::1");
        assert_eq!(server_address("ws://127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn a_reconnector_loss_is_classified_by_its_exception_type() {
        assert_eq!(LossKind::classify("TimeoutError: registration took too long"), LossKind::Timeout);
        assert_eq!(LossKind::classify("ConnectionResetError: [Errno 104] reset by peer"), LossKind::Reset);
        assert_eq!(LossKind::classify("IncompleteReadError: 0 bytes read"), LossKind::Eof);
        assert_eq!(LossKind::classify("closed"), LossKind::Closed);
        assert_eq!(LossKind::classify("ValueError: bad frame"), LossKind::Error);
    }

    #[test]
    fn counters_add_up_per_series_and_overflow_into_one() {
        let _g = attached();
        let a = labels(&[("name", "metrics-test-a")]).unwrap();
        count(&a, Instrument::Alarms, Some(("kind", "dwell".into())), 2);
        count(&a, Instrument::Alarms, Some(("kind", "dwell".into())), 1);
        assert_eq!(total(Instrument::Alarms, ("name", "metrics-test-a")), 3.0);
        for i in 0..CARDINALITY_LIMIT + 5 {
            let l = labels(&[("name", &format!("metrics-test-many-{i}"))]).unwrap();
            count(&l, Instrument::SpawnFailures, None, 1);
        }
        let series = read(Instrument::SpawnFailures);
        assert!(series.len() <= CARDINALITY_LIMIT + 1, "{}", series.len());
        assert!(total(Instrument::SpawnFailures, ("otel.metric.overflow", "true")) >= 5.0);
    }

    #[test]
    fn histogram_values_wait_for_a_collection_only_while_attached() {
        let _g = attached();
        let l = labels(&[("name", "metrics-test-h")]).unwrap();
        drain();
        record(&l, Instrument::Downtime, None, 1.5);
        let got = drain();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].2), (Instrument::Downtime, 1.5));
        assert!(drain().is_empty(), "handed over once");
        set_enabled(false);
        record(&l, Instrument::Downtime, None, 2.0);
        assert!(labels(&[("name", "x")]).is_none(), "objects made while detached are not measured");
        set_enabled(true);
        assert!(drain().is_empty());
    }

    #[test]
    fn a_loop_reports_its_state_until_dropped() {
        let _g = attached();
        let m = Loop::new(labels(&[("name", "metrics-test-loop")]).unwrap());
        observe(Arc::downgrade(&(m.clone() as Arc<dyn Source>)));
        let state = || {
            read(Instrument::Connections)
                .into_iter()
                .filter(|(a, v)| *v == 1.0 && a.contains(&("name", "metrics-test-loop".to_string())))
                .map(|(a, _)| a.iter().find(|(k, _)| *k == "state").unwrap().1.clone())
                .collect::<Vec<_>>()
        };
        m.retry("connect");
        assert_eq!(state(), ["connecting"]);
        m.up();
        assert_eq!(state(), ["connected"]);
        m.lost("ConnectionResetError: boom");
        assert_eq!(state(), ["reconnecting"]);
        assert_eq!(total(Instrument::Losses, ("name", "metrics-test-loop")), 1.0);
        m.gave_up();
        m.ended();
        assert_eq!(state(), ["failed"]);
        drop(m);
        assert!(state().is_empty());
    }

    #[test]
    fn every_loss_text_of_a_connection_has_its_kind() {
        use crate::ws::error::{peer_close, violation, CLOSED_WITHOUT_CLOSE_FRAME, RESET_WITHOUT_CLOSE_FRAME};
        use crate::ws::frame::Violation;
        use crate::ws::heartbeat::{Beat, HeartbeatClock};
        use crate::ws::WsConfig;
        let cfg = WsConfig::default();
        let kind = |e: crate::ws::WsError| LossKind::classify(&e.text);
        assert_eq!(kind(peer_close(Some((1013, "restarting")), &cfg)), LossKind::CloseFrame);
        assert_eq!(kind(peer_close(Some((1002, "Protocol violation")), &cfg)), LossKind::CloseFrame);
        assert_eq!(kind(peer_close(None, &cfg)), LossKind::CloseFrame);
        // an invalid code read off the wire is named, and still a close frame
        assert_eq!(kind(violation(&Violation::InvalidCloseCode(999), &cfg)), LossKind::CloseFrame);
        assert_eq!(LossKind::classify(CLOSED_WITHOUT_CLOSE_FRAME), LossKind::Eof);
        assert_eq!(LossKind::classify(RESET_WITHOUT_CLOSE_FRAME), LossKind::Reset);
        assert_eq!(kind(violation(&Violation::Protocol("reserved bits".into()), &cfg)), LossKind::ProtocolError);
        assert_eq!(kind(violation(&Violation::InvalidUtf8, &cfg)), LossKind::ProtocolError);
        assert_eq!(kind(violation(&Violation::TooBig { size: 2, max: 1 }, &cfg)), LossKind::ProtocolError);
        // the kernel's TCP_USER_TIMEOUT, on a read or a write
        assert_eq!(LossKind::classify("read error: Connection timed out (os error 110)"), LossKind::IoError);
        assert_eq!(LossKind::classify("write error: Broken pipe (os error 32)"), LossKind::IoError);
        // the liveness rules' own texts
        let t0 = std::time::Instant::now();
        let mut hb = HeartbeatClock::new(Duration::from_secs(1), Duration::from_secs(1), t0);
        hb.sent(t0 + Duration::from_secs(1));
        let Beat::Lost { text, .. } = hb.poll(t0 + Duration::from_secs(2)) else { panic!("no loss") };
        assert_eq!(LossKind::classify(&text), LossKind::HeartbeatTimeout);
        let ping = format!("{} no answer to a ping within ping_timeout (5.000s)", crate::ws::protocol::PING_TIMEOUT);
        assert_eq!(LossKind::classify(&ping), LossKind::PingTimeout);
    }
}
