//! The native reconnect loop behind `tether.connect` (the WebSocket), and the events and log records
//! of every reconnect loop (`tether.Reconnector` drives the same state machine from Python).
//!
//! One call of the `connect` closure is one *attempt*: it returns when the connection ends. `Ok` means
//! the caller is done (the loop returns it); `Err` means the attempt failed or the live connection was
//! lost, and the loop retries. While an attempt runs it may call [`Attempt::connected`] once the
//! handshake succeeded, which starts the stability clock and reports `Connected`/`Reconnected`.
//!
//! The policy (stability, quiet retries, escalation, ladder, budgets) is the pure state machine in
//! [`crate::retry_state`]; this module drives it with tokio time and reports its decisions as events
//! and log records ([`report`] functions, shared with the Python step-wise form).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::retry_state::{Decision, Level, RetryState, Settled, Started, Up};
use crate::wording::count;

/// Everything a loop reports, in order. Strings are already redacted.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connecting {
        attempt: u32,
        strategy: Arc<str>,
    },
    Connected {
        attempt: u32,
    },
    ConnectionLost {
        reason: String,
    },
    Reconnecting {
        attempt: u32,
        delay: Duration,
        strategy: Arc<str>,
    },
    Reconnected {
        downtime: Duration,
        attempts: u32,
    },
    GaveUp {
        error: String,
        attempts: u32,
    },
    /// A watchdog alarm attached to this connection (dwell/progress/liveness).
    Alarm {
        kind: &'static str,
        name: String,
        elapsed: Duration,
        limit: Duration,
        message: String,
    },
    /// Terminal marker for event streams: the owner finished (never emitted by `run` itself).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    Fatal,
    Attempts,
    Deadline,
    /// The first connection was not made within `Config::connect_timeout`.
    ConnectTimeout,
}

impl GiveUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Fatal => "fatal error",
            GiveUpReason::Attempts => "attempt budget exhausted",
            GiveUpReason::Deadline => "deadline exceeded",
            GiveUpReason::ConnectTimeout => "connect_timeout exceeded",
        }
    }
}

/// The loop's terminal failure: carries the last error untouched so bindings can chain it.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub name: String,
    pub attempts: u32,
    pub elapsed: Duration,
    pub reason: GiveUpReason,
    pub last_error: E,
    pub last_error_text: String,
}

impl<E> GaveUp<E> {
    pub fn message(&self) -> String {
        gave_up_text(&self.name, self.attempts, self.elapsed, self.reason, &self.last_error_text)
    }
}

/// The one wording of a give-up, for the exception and the ERROR record alike.
fn gave_up_text(name: &str, attempts: u32, elapsed: Duration, reason: GiveUpReason, error: &str) -> String {
    format!(
        "gave up{} after {} over {:.1}s ({}): {error}",
        target("on", name),
        count(attempts, "attempt"),
        elapsed.as_secs_f64(),
        reason.as_str()
    )
}

/// " to {name}" (with `prep`) for a named loop; nothing for an unnamed one (an empty name), whose
/// messages then name no target: a placeholder such as "reconnector" reads like a host in "failed to
/// connect to reconnector".
pub fn target(prep: &str, name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" {prep} {name}")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// What the loop connects to, as its messages name it ("failed to connect to {name}"); empty: the
    /// messages name no target ("failed to connect").
    pub name: String,
    pub policy: Backoff,
    pub stable_after: Duration,
    pub quiet_attempts: u32,
    /// Strategies tried in order during one outage, each for its number of attempts; the last rung
    /// gets all remaining attempts. The first ever attempt uses the strategy "connect".
    pub ladder: Vec<(Arc<str>, u32)>,
    /// Progress deadline per attempt: an attempt that has not called `connected()` within this is
    /// abandoned (counted as a failure, so the ladder escalates) instead of hanging.
    pub attempt_timeout: Option<Duration>,
    /// Bounds the outage before the first connection ever (the first `connect`, all its attempts and
    /// backoff), on top of the policy's `deadline`: a client started against a server that is down or
    /// wrong gets an answer instead of waiting forever, while a connection that once worked keeps
    /// retrying as the policy says. None: only the policy bounds it.
    pub connect_timeout: Option<Duration>,
    /// Quiet retries wait `uniform(0, quiet_jitter)`: clients dropped together (a server restart, a
    /// load balancer recycling) come back spread over this window instead of in one burst.
    pub quiet_jitter: Duration,
    /// Python logger this object's records go to (a key registered by the bindings); None: the
    /// module's `tether.*` logger. Every record carries it as the `logger` field.
    pub logger: Option<Arc<str>>,
    /// Where the loop's reports are counted (`tether.metrics`); None: not measured.
    pub metrics: Option<Arc<crate::metrics::Loop>>,
}

/// Default `quiet_jitter`. 1,000 clients dropped at once come back ~100 per 100 ms, all within ~1.1 s
/// (benches/bench_peers.py herd, 2 cores under load: at most 122-141 in any 100 ms). A 0.5 s window
/// meets the 300 per 100 ms goal only on a quiet machine: a 100 ms stall of the client or the server
/// bunches two slices of arrivals together.
pub const DEFAULT_QUIET_JITTER: Duration = Duration::from_millis(1000);

impl Default for Config {
    fn default() -> Self {
        Config {
            name: String::new(),
            policy: Backoff::default(),
            stable_after: Duration::from_secs(10),
            quiet_attempts: 1,
            ladder: vec![(Arc::from("reconnect"), 1)],
            attempt_timeout: None,
            connect_timeout: None,
            quiet_jitter: DEFAULT_QUIET_JITTER,
            logger: None,
            metrics: None,
        }
    }
}

impl Config {
    /// Strategy for the `retry`-th retry (1-based) of an outage.
    pub fn strategy_for(&self, retry: u32) -> Arc<str> {
        let mut left = retry.max(1);
        for (name, n) in &self.ladder {
            if left <= (*n).max(1) {
                return name.clone();
            }
            left -= (*n).max(1);
        }
        self.ladder.last().map(|(n, _)| n.clone()).unwrap_or_else(|| Arc::from("reconnect"))
    }
}

/// Handed to each attempt. `connected()` may be called at most once per attempt (later calls are no-ops).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1-based attempt number within the current outage (1 for the first ever connect).
    pub number: u32,
    pub strategy: Arc<str>,
    signal: Arc<Mutex<Option<oneshot::Sender<Instant>>>>,
}

impl Attempt {
    pub fn new_detached(number: u32, strategy: Arc<str>) -> (Self, oneshot::Receiver<Instant>) {
        let (tx, rx) = oneshot::channel();
        (Attempt { number, strategy, signal: Arc::new(Mutex::new(Some(tx))) }, rx)
    }

    /// Mark the handshake as done: the connection counts as up from now.
    pub fn connected(&self) {
        let tx = self.signal.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(Instant::now());
        }
    }
}

type Hook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Sink for events; a closed or lagging receiver never blocks the loop. An optional hook sees every
/// event first (owners use it to track their state).
#[derive(Clone, Default)]
pub struct Events {
    tx: Option<broadcast::Sender<Event>>,
    hook: Option<Hook>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("tx", &self.tx.is_some()).field("hook", &self.hook.is_some()).finish()
    }
}

impl Events {
    pub fn new(tx: broadcast::Sender<Event>) -> Self {
        Events { tx: Some(tx), hook: None }
    }
    pub fn none() -> Self {
        Events::default()
    }
    pub fn with_hook(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }
    pub fn emit(&self, ev: Event) {
        if let Some(h) = &self.hook {
            h(&ev);
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(ev);
        }
    }
}

/// Run the loop. `connect` is called once per attempt; `is_fatal` classifies errors; `describe`
/// renders an error for logs and events (it must already be redacted); `stalled` builds the error for
/// an attempt abandoned by `attempt_timeout`.
pub async fn run<T, E, F, Fut>(
    cfg: &Config,
    events: &Events,
    mut connect: F,
    is_fatal: impl Fn(&E) -> bool,
    describe: impl Fn(&E) -> String,
    stalled: impl Fn(u32, Duration) -> E,
) -> Result<T, GaveUp<E>>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut st = RetryState::new(cfg);
    loop {
        let begun = Instant::now();
        let started = st.start(begun.into_std());
        report::started(cfg, events, &started);
        let (attempt, mut connected_rx) = Attempt::new_detached(started.number, started.strategy.clone());
        let deadline = started.deadline.map(Instant::from_std);
        let mut settle_at: Option<Instant> = None;
        let mut listening = true;
        let mut connected = false;
        // The attempt's future lives only in this block: a stalled attempt is dropped (cancelled) at its
        // deadline, before any backoff sleep.
        let result = {
            let fut = connect(attempt);
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    biased;
                    _ = sleep_until_some(deadline), if !connected => {
                        let limit = deadline.map(|d| d.saturating_duration_since(begun)).unwrap_or_default();
                        break Err(stalled(started.number, limit));
                    }
                    at = &mut connected_rx, if listening => {
                        listening = false;
                        // A dropped sender (the attempt let go of its handle without marking) just ends listening.
                        if let Ok(at) = at {
                            connected = true;
                            settle_at = on_up(cfg, events, &mut st, at);
                        }
                    }
                    _ = sleep_until_some(settle_at), if settle_at.is_some() => {
                        settle_at = None;
                        if let Some(s) = st.settle(Instant::now().into_std()) {
                            report::settled(cfg, &s);
                        }
                    }
                    r = &mut fut => break r,
                }
            }
        };
        // The attempt may have marked itself connected and finished within the same poll.
        if listening {
            if let Ok(at) = connected_rx.try_recv() {
                on_up(cfg, events, &mut st, at);
            }
        }

        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let text = describe(&err);
        let decision = st.failed(Instant::now().into_std(), is_fatal(&err));
        report::failure(cfg, events, &decision, &text);
        match decision {
            Decision::Retry { delay, .. } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Decision::GiveUp { reason, attempts, elapsed, .. } => {
                return Err(GaveUp {
                    name: cfg.name.clone(),
                    attempts,
                    elapsed,
                    reason,
                    last_error: err,
                    last_error_text: text,
                })
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Feed a connection mark to the state machine and report it; returns when to check for stability.
fn on_up(cfg: &Config, events: &Events, st: &mut RetryState, at: Instant) -> Option<Instant> {
    let up = st.connected(at.into_std())?;
    report::up(cfg, events, &up);
    Some(Instant::from_std(up.stable_at))
}

/// Events, log records and metrics for the state machine's outputs: one wording for every driver (the
/// native loop above and the Python step-wise form). Records carry `name`, `retry_count`, `max_retry`,
/// `error`, `delay_s`, `strategy`, `downtime_s` as structured fields, and `logger` when the object
/// routes its records to its own Python logger.
pub mod report {
    use super::*;

    const TARGET: &str = "tether::reconnect";

    fn max_retry(cfg: &Config) -> i64 {
        cfg.policy.max_attempts.map(i64::from).unwrap_or(-1)
    }

    pub fn started(cfg: &Config, events: &Events, s: &Started) {
        if let Some(m) = &cfg.metrics {
            m.attempt_started();
        }
        events.emit(Event::Connecting { attempt: s.number, strategy: s.strategy.clone() });
    }

    pub fn up(cfg: &Config, events: &Events, up: &Up) {
        let (name, logger, to) = (cfg.name.as_str(), cfg.logger.as_deref(), target("to", &cfg.name));
        if let Some(m) = &cfg.metrics {
            m.up();
        }
        events.emit(Event::Connected { attempt: up.number });
        let Some((downtime, attempts)) = up.reconnected else {
            tracing::debug!(target: TARGET, logger, name, "connected{to}");
            return;
        };
        events.emit(Event::Reconnected { downtime, attempts });
        let secs = downtime.as_secs_f64();
        // INFO waits for stability (`settled`): a link that keeps flapping must not log recovery.
        tracing::debug!(target: TARGET, logger, name, retry_count = up.retries, downtime_s = secs,
            "reconnected{to} (attempt {attempts}, down for {secs:.3}s); stable after {:.1}s up",
            cfg.stable_after.as_secs_f64());
    }

    pub fn settled(cfg: &Config, s: &Settled) {
        let (name, logger, to) = (cfg.name.as_str(), cfg.logger.as_deref(), target("to", &cfg.name));
        let secs = s.downtime.as_secs_f64();
        let attempts = s.attempts;
        match s.level {
            Level::Info => tracing::info!(target: TARGET, logger, name, retry_count = 0, downtime_s = secs,
                "reconnected{to} after {} (down for {secs:.2}s), stable for {:.1}s",
                count(attempts, "attempt"), cfg.stable_after.as_secs_f64()),
            _ => tracing::debug!(target: TARGET, logger, name, retry_count = 0, downtime_s = secs,
                "connection{to} stable again (attempt {attempts}, down for {secs:.3}s)"),
        }
    }

    /// `closed()` of the step-wise form: the connected period ended without an error.
    pub fn closed(cfg: &Config, events: &Events) {
        if let Some(m) = &cfg.metrics {
            m.lost("closed");
        }
        events.emit(Event::ConnectionLost { reason: "closed".into() });
    }

    pub fn failure(cfg: &Config, events: &Events, d: &Decision, text: &str) {
        let (name, logger) = (cfg.name.as_str(), cfg.logger.as_deref());
        let (lost, loss_reported) = d.loss();
        if let Some(m) = &cfg.metrics {
            if lost && !loss_reported {
                m.lost(text);
            }
            match d {
                Decision::Retry { strategy, .. } => m.retry(strategy),
                Decision::GiveUp { .. } => m.gave_up(),
            }
        }
        if lost && !loss_reported {
            events.emit(Event::ConnectionLost { reason: text.to_string() });
        }
        let max_field = max_retry(cfg);
        match d {
            Decision::Retry { retry, delay, strategy, quiet, level, .. } => {
                events.emit(Event::Reconnecting { attempt: retry + 1, delay: *delay, strategy: strategy.clone() });
                let to = target("to", name);
                let what = if lost { format!("connection{to} lost") } else { format!("failed to connect{to}") };
                let (retry, secs) = (*retry, delay.as_secs_f64());
                let when = if delay.is_zero() {
                    "retrying immediately".to_string()
                } else {
                    format!("retrying in {secs:.2}s")
                };
                let (kind, max) = match (quiet, cfg.policy.max_attempts) {
                    (true, _) => ("quiet retry", String::new()),
                    (false, Some(m)) => ("retry", format!("/{m}")),
                    (false, None) => ("retry", String::new()),
                };
                if *level == Level::Debug {
                    tracing::debug!(target: TARGET, logger, name, retry_count = retry, max_retry = max_field,
                        error = %text, delay_s = secs, strategy = &**strategy,
                        "{what}: {text}; {when} ({kind} {retry}{max}, {strategy})");
                } else {
                    tracing::warn!(target: TARGET, logger, name, retry_count = retry, max_retry = max_field,
                        error = %text, delay_s = secs, strategy = &**strategy,
                        "{what}: {text}; {when} ({kind} {retry}{max}, {strategy})");
                }
            }
            Decision::GiveUp { reason: GiveUpReason::Fatal, attempts, .. } => {
                tracing::error!(target: TARGET, logger, name, retry_count = attempts - 1, max_retry = max_field,
                    error = %text, "gave up{}: fatal error, not retried: {text}", target("on", name));
                events.emit(Event::GaveUp { error: text.to_string(), attempts: *attempts });
            }
            Decision::GiveUp { reason, attempts, elapsed, .. } => {
                let secs = elapsed.as_secs_f64();
                tracing::error!(target: TARGET, logger, name, retry_count = attempts, max_retry = max_field,
                    error = %text, elapsed_s = secs, "{}", gave_up_text(name, *attempts, *elapsed, *reason, text));
                events.emit(Event::GaveUp { error: text.to_string(), attempts: *attempts });
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The policy of the unit tests here and in `retry_state`: no jitter, delays 1, 2, 4, 8 s, one
    /// quiet retry at once, a two-rung ladder.
    pub(crate) fn cfg(max_attempts: Option<u32>) -> Config {
        Config {
            name: "test".into(),
            policy: Backoff {
                initial: 1.0,
                factor: 2.0,
                max_delay: 8.0,
                jitter: Jitter::None,
                max_attempts,
                ..Default::default()
            },
            stable_after: Duration::from_secs(10),
            quiet_attempts: 1,
            ladder: vec![(Arc::from("resume"), 1), (Arc::from("restart"), 1)],
            quiet_jitter: Duration::ZERO,
            ..Config::default()
        }
    }

    fn collect(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
        let mut v = vec![];
        while let Ok(e) = rx.try_recv() {
            v.push(e);
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn accept_then_drop_escalates_instead_of_hot_looping() {
        let (tx, mut rx) = broadcast::channel(256);
        let calls = AtomicU32::new(0);
        let t0 = Instant::now();
        let res: Result<(), _> = run(
            &cfg(Some(4)),
            &Events::new(tx),
            |a: Attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    a.connected();
                    tokio::time::sleep(Duration::from_millis(50)).await; // accepted, then dropped
                    Err::<(), _>("dropped")
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        let g = res.unwrap_err();
        assert_eq!(g.reason, GiveUpReason::Attempts);
        assert_eq!(g.attempts, 5);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // delays: 0 (quiet), 1, 2, 4 + 5 * 50ms of connection time
        let el = t0.elapsed().as_secs_f64();
        assert!((el - 7.25).abs() < 0.01, "elapsed {el}");
        let evs = collect(&mut rx);
        let lost = evs.iter().filter(|e| matches!(e, Event::ConnectionLost { .. })).count();
        assert_eq!(lost, 5, "one ConnectionLost per loss: {evs:?}");
        let delays: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Reconnecting { delay, .. } => Some(delay.as_secs_f64()),
                _ => None,
            })
            .collect();
        assert_eq!(delays, vec![0.0, 1.0, 2.0, 4.0]);
        let strategies: Vec<_> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Reconnecting { strategy, .. } => Some(strategy.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(strategies, vec!["resume", "restart", "restart", "restart"]);
        assert!(matches!(evs.last(), Some(Event::GaveUp { attempts: 5, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn stable_connection_resets_counter() {
        let n = AtomicU32::new(0);
        let res: Result<u32, GaveUp<&str>> = run(
            &cfg(Some(1)),
            &Events::none(),
            |a: Attempt| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k >= 6 {
                        return Ok(k);
                    }
                    a.connected();
                    // every connection lives 11 s > stable_after: each drop is a fresh outage
                    tokio::time::sleep(Duration::from_secs(11)).await;
                    Err("blip")
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        // max_attempts=1 would have given up on the second consecutive failure had the counter not reset.
        assert_eq!(res.unwrap(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_is_not_retried() {
        let n = AtomicU32::new(0);
        let res: Result<(), _> = run(
            &cfg(None),
            &Events::none(),
            |_a: Attempt| {
                n.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("401 unauthorized") }
            },
            |e: &&str| e.starts_with("401"),
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        let g = res.unwrap_err();
        assert_eq!(g.reason, GiveUpReason::Fatal);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(g.message().contains("401 unauthorized"), "{}", g.message());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_an_outage() {
        let mut c = cfg(None);
        c.policy.deadline = Some(5.0);
        let t0 = Instant::now();
        let res: Result<(), _> = run(
            &c,
            &Events::none(),
            |_a: Attempt| async { Err::<(), _>("refused") },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        let g = res.unwrap_err();
        assert_eq!(g.reason, GiveUpReason::Deadline);
        assert!(t0.elapsed() < Duration::from_secs(5));
        // 0 + 1 + 2 = 3 s slept; the next (4 s) would cross 5 s.
        assert_eq!(g.attempts, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnected_reports_downtime() {
        let (tx, mut rx) = broadcast::channel(64);
        let n = AtomicU32::new(0);
        let res: Result<(), GaveUp<&str>> = run(
            &cfg(None),
            &Events::new(tx),
            |a: Attempt| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    match k {
                        0 => {
                            a.connected();
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Err("ping timeout")
                        }
                        1 | 2 => Err("refused"),
                        _ => {
                            a.connected();
                            Ok(())
                        }
                    }
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        res.unwrap();
        let evs = collect(&mut rx);
        let down = evs
            .iter()
            .find_map(|e| match e {
                Event::Reconnected { downtime, attempts } => Some((*downtime, *attempts)),
                _ => None,
            })
            .unwrap();
        // quiet retry (0 s), then 1 s, then 2 s of backoff
        assert_eq!(down, (Duration::from_secs(3), 4));
        assert_eq!(evs.iter().filter(|e| matches!(e, Event::ConnectionLost { .. })).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_attempt_is_abandoned_and_the_ladder_escalates() {
        // the stuck resume: "resuming connection... attempt 0" then silence. Here: resume hangs, restart works.
        let mut c = cfg(None);
        c.attempt_timeout = Some(Duration::from_secs(2));
        let (tx, mut rx) = broadcast::channel(64);
        let n = AtomicU32::new(0);
        let t0 = Instant::now();
        let res: Result<&str, GaveUp<String>> = run(
            &c,
            &Events::new(tx),
            |a: Attempt| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    match k {
                        0 => {
                            a.connected();
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Err("ping timeout".to_string())
                        }
                        1 => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        } // the stalled resume
                        _ => {
                            assert_eq!(&*a.strategy, "restart");
                            a.connected();
                            Ok("restarted")
                        }
                    }
                }
            },
            |_| false,
            |e| e.clone(),
            |n, t| format!("attempt {n} made no progress within {}s", t.as_secs()),
        )
        .await;
        assert_eq!(res.unwrap(), "restarted");
        // 30 s up, immediate resume stalls 2 s, restart after 1 s backoff
        assert_eq!(t0.elapsed(), Duration::from_secs(33));
        let reasons: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|e| match e {
                Event::Reconnecting { strategy, .. } => Some(strategy.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, ["resume", "restart"]);
    }

    #[test]
    fn ladder_rungs_take_their_attempts() {
        let mut c = cfg(None);
        c.ladder = vec![(Arc::from("resume"), 2), (Arc::from("restart"), 1), (Arc::from("migrate"), 1)];
        let got: Vec<String> = (1..=6).map(|r| c.strategy_for(r).to_string()).collect();
        assert_eq!(got, ["resume", "resume", "restart", "migrate", "migrate", "migrate"]);
        c.ladder.clear();
        assert_eq!(&*c.strategy_for(3), "reconnect");
    }

    #[tokio::test(start_paused = true)]
    async fn unmarked_attempts_never_count_as_stable() {
        // a 20 s attempt that never connected is not a stable connection
        let n = AtomicU32::new(0);
        let res: Result<(), GaveUp<&str>> = run(
            &cfg(Some(1)),
            &Events::none(),
            |_a: Attempt| {
                n.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    Err("handshake timed out")
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        let g = res.unwrap_err();
        assert_eq!((g.reason, g.attempts), (GiveUpReason::Attempts, 2));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_attempt_is_cancelled_at_its_deadline_not_after_the_backoff() {
        // the attempt's future must be dropped at attempt_timeout, before the retry sleep
        struct DropAt(Arc<Mutex<Vec<Duration>>>, Instant);
        impl Drop for DropAt {
            fn drop(&mut self) {
                self.0.lock().unwrap().push(self.1.elapsed());
            }
        }
        let mut c = cfg(Some(2));
        c.attempt_timeout = Some(Duration::from_millis(300));
        c.quiet_attempts = 0;
        let drops = Arc::new(Mutex::new(vec![]));
        let t0 = Instant::now();
        let res: Result<(), GaveUp<String>> = run(
            &c,
            &Events::none(),
            |_a: Attempt| {
                let guard = DropAt(drops.clone(), t0);
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            },
            |_| false,
            |e: &String| e.clone(),
            |n, t| format!("attempt {n} stalled for {t:?}"),
        )
        .await;
        assert_eq!(res.unwrap_err().reason, GiveUpReason::Attempts);
        // attempts start at 0, 0.3 + 1 and 1.6 + 2 s; each is cancelled 0.3 s after its start
        let ms: Vec<u128> = drops.lock().unwrap().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [300, 1600, 3900]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_link_reports_each_reconnect() {
        let (tx, mut rx) = broadcast::channel(256);
        let n = AtomicU32::new(0);
        let res: Result<(), GaveUp<&str>> = run(
            &cfg(None),
            &Events::new(tx),
            |a: Attempt| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    a.connected();
                    // three flaps of 1 s, then a connection that lasts 15 s and ends the run
                    tokio::time::sleep(Duration::from_secs(if k < 3 { 1 } else { 15 })).await;
                    if k < 3 {
                        Err("dropped")
                    } else {
                        Ok(())
                    }
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        res.unwrap();
        let evs = collect(&mut rx);
        let reconnects: Vec<u32> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Reconnected { attempts, .. } => Some(*attempts),
                _ => None,
            })
            .collect();
        assert_eq!(reconnects, [2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_measured_loop_counts_what_it_reports() {
        use crate::metrics::{self, tests::total, Instrument};
        let _attached = metrics::tests::attached_async().await;
        let mut c = cfg(Some(3));
        c.metrics = metrics::labels(&[("name", "loop-metrics")]).map(metrics::Loop::new);
        let n = AtomicU32::new(0);
        let res: Result<(), GaveUp<&str>> = run(
            &c,
            &Events::none(),
            |a: Attempt| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k == 1 {
                        return Err("ConnectionRefusedError: refused"); // an attempt that fails: no loss
                    }
                    a.connected();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(if k == 0 { "ping timeout: no answer" } else { "server closed the connection: 1012" })
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        assert_eq!(res.unwrap_err().attempts, 4);
        let name = ("name", "loop-metrics");
        assert_eq!(total(Instrument::Connects, name), 3.0);
        assert_eq!(total(Instrument::GiveUps, name), 1.0);
        let series = |i| -> Vec<(String, f64)> {
            metrics::read(i)
                .into_iter()
                .filter(|(a, _)| a.contains(&("name", "loop-metrics".into())))
                .map(|(a, v)| (a.last().unwrap().1.clone(), v))
                .collect()
        };
        assert_eq!(series(Instrument::Losses), [("close_frame".into(), 2.0), ("ping_timeout".into(), 1.0)]);
        assert_eq!(series(Instrument::Retries), [("restart".into(), 2.0), ("resume".into(), 1.0)]);
        let mut hist: Vec<(Instrument, f64)> = metrics::drain()
            .into_iter()
            .filter(|(_, a, _)| a.contains(&("name", "loop-metrics".into())))
            .map(|(i, _, v)| (i, v))
            .collect();
        hist.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // three handshakes (instant here); two gaps: the quiet retry (0 s), a failed attempt and a 1 s
        // backoff; then the 2 s backoff after the second loss
        assert_eq!(
            hist,
            [
                (Instrument::Downtime, 1.0),
                (Instrument::Downtime, 2.0),
                (Instrument::Handshake, 0.0),
                (Instrument::Handshake, 0.0),
                (Instrument::Handshake, 0.0)
            ]
        );
    }
}
