//! The generic reconnect loop shared by `tether.Reconnector` (Python coroutines) and `tether.connect`
//! (the native WebSocket).
//!
//! One call of the `connect` closure is one *attempt*: it returns when the connection ends. `Ok` means
//! the caller is done (the loop returns it); `Err` means the attempt failed or the live connection was
//! lost, and the loop retries. While an attempt runs it may call [`Attempt::connected`] once the
//! handshake succeeded, which starts the stability clock and reports `Connected`/`Reconnected`.
//!
//! Rules (seed 000):
//! * the retry counter and the backoff sequence reset only after a connection stayed up for
//!   `stable_after`; an accept-then-drop server therefore escalates instead of hot-looping;
//! * the first `quiet_attempts` retries of an outage are immediate and logged at DEBUG; every
//!   backed-off retry logs WARNING; giving up logs ERROR;
//! * fatal errors (per the classifier) are never retried;
//! * `max_attempts` and `deadline` of the policy bound each outage.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;

/// Everything the loop reports, in order. Strings are already redacted.
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
}

impl GiveUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Fatal => "fatal error",
            GiveUpReason::Attempts => "attempt budget exhausted",
            GiveUpReason::Deadline => "deadline exceeded",
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
        format!(
            "gave up on {} after {} attempt{} over {:.1}s ({}): {}",
            self.name,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.elapsed.as_secs_f64(),
            self.reason.as_str(),
            self.last_error_text
        )
    }
}

#[derive(Debug, Clone)]
pub struct Config {
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "connection".into(),
            policy: Backoff::default(),
            stable_after: Duration::from_secs(10),
            quiet_attempts: 1,
            ladder: vec![(Arc::from("reconnect"), 1)],
            attempt_timeout: None,
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

struct Outage {
    started: Instant,
    warned: bool,
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
    let name = cfg.name.as_str();
    let max_retry = cfg.policy.max_attempts;
    let mut delays = cfg.policy.delays_unbounded();
    let mut retries: u32 = 0;
    let mut outage: Option<Outage> = None;
    let mut strategy: Arc<str> = Arc::from("connect");
    let first_start = Instant::now();

    loop {
        let number = retries + 1;
        events.emit(Event::Connecting { attempt: number, strategy: strategy.clone() });
        let (attempt, mut connected_rx) = Attempt::new_detached(number, strategy.clone());
        let started = Instant::now();
        let mut connected_at: Option<Instant> = None;
        let mut listening = true;

        let fut = connect(attempt);
        tokio::pin!(fut);
        let progress_deadline = cfg.attempt_timeout.map(|t| started + t);
        let result = loop {
            tokio::select! {
                biased;
                _ = async { tokio::time::sleep_until(progress_deadline.unwrap_or(started)).await }, if connected_at.is_none() && progress_deadline.is_some() => {
                    // dropping `fut` cancels the attempt
                    break Err(stalled(number, cfg.attempt_timeout.unwrap_or_default()));
                }
                at = &mut connected_rx, if listening => {
                    listening = false;
                    // A dropped sender (the attempt let go of its handle without marking) just ends listening.
                    if let Ok(at) = at {
                        connected_at = Some(at);
                        on_connected(name, events, number, retries, at, outage.as_ref());
                    }
                }
                r = &mut fut => break r,
            }
        };
        // The attempt may have marked itself connected and finished within the same poll.
        if listening {
            if let Ok(at) = connected_rx.try_recv() {
                connected_at = Some(at);
                on_connected(name, events, number, retries, at, outage.as_ref());
            }
        }

        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        let text = describe(&err);
        let up_since = connected_at.unwrap_or(started);
        let was_connected = connected_at.is_some();
        let stable = now.saturating_duration_since(up_since) >= cfg.stable_after;

        if was_connected {
            events.emit(Event::ConnectionLost { reason: text.clone() });
        }

        if is_fatal(&err) {
            let attempts = retries + 1;
            let elapsed = outage.as_ref().map(|o| now - o.started).unwrap_or(now - first_start);
            tracing::error!(target: "tether::reconnect", name, retry_count = retries, error = %text,
                "gave up on {name}: fatal error, not retried: {text}");
            events.emit(Event::GaveUp { error: text.clone(), attempts });
            return Err(GaveUp {
                name: name.to_string(),
                attempts,
                elapsed,
                reason: GiveUpReason::Fatal,
                last_error: err,
                last_error_text: text,
            });
        }

        if stable {
            retries = 0;
            delays = cfg.policy.delays_unbounded();
            outage = None;
        }
        let o = outage.get_or_insert(Outage { started: if was_connected { now } else { started }, warned: false });
        retries += 1;
        let elapsed = now.saturating_duration_since(o.started);

        let give_up = |reason: GiveUpReason, o: &Outage, err: E, text: String| {
            let attempts = retries;
            let elapsed = now.saturating_duration_since(o.started);
            let _ = o;
            tracing::error!(target: "tether::reconnect", name, retry_count = attempts, max_retry = max_retry.map(|m| m as i64).unwrap_or(-1),
                error = %text, elapsed_s = elapsed.as_secs_f64(),
                "gave up on {name} after {attempts} attempts over {:.1}s ({}): {text}", elapsed.as_secs_f64(), reason.as_str());
            events.emit(Event::GaveUp { error: text.clone(), attempts });
            GaveUp { name: name.to_string(), attempts, elapsed, reason, last_error: err, last_error_text: text }
        };

        if let Some(max) = max_retry {
            if retries > max {
                return Err(give_up(GiveUpReason::Attempts, o, err, text));
            }
        }
        let quiet = retries <= cfg.quiet_attempts;
        let delay = if quiet {
            Duration::ZERO
        } else {
            match delays.next() {
                Some(d) => d,
                None => return Err(give_up(GiveUpReason::Deadline, o, err, text)),
            }
        };
        if let Some(deadline) = cfg.policy.deadline_duration() {
            if elapsed + delay >= deadline {
                return Err(give_up(GiveUpReason::Deadline, o, err, text));
            }
        }

        strategy = cfg.strategy_for(retries);
        let next = retries + 1;
        events.emit(Event::Reconnecting { attempt: next, delay, strategy: strategy.clone() });
        let what =
            if was_connected { format!("connection to {name} lost") } else { format!("failed to connect to {name}") };
        let max_field = max_retry.map(|m| m as i64).unwrap_or(-1);
        if quiet {
            tracing::debug!(target: "tether::reconnect", name, retry_count = retries, max_retry = max_field, error = %text,
                delay_s = 0.0, strategy = &*strategy,
                "{what}: {text}; retrying immediately ({strategy})");
        } else {
            o.warned = true;
            tracing::warn!(target: "tether::reconnect", name, retry_count = retries, max_retry = max_field, error = %text,
                delay_s = delay.as_secs_f64(), strategy = &*strategy,
                "{what}: {text}; retrying in {:.2}s (retry {retries}{}, {strategy})",
                delay.as_secs_f64(),
                max_retry.map(|m| format!("/{m}")).unwrap_or_default());
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

fn on_connected(name: &str, events: &Events, number: u32, retries: u32, at: Instant, outage: Option<&Outage>) {
    events.emit(Event::Connected { attempt: number });
    let Some(o) = outage else {
        tracing::debug!(target: "tether::reconnect", name, "connected to {name}");
        return;
    };
    let downtime = at.saturating_duration_since(o.started);
    events.emit(Event::Reconnected { downtime, attempts: number });
    let secs = downtime.as_secs_f64();
    if o.warned {
        tracing::info!(target: "tether::reconnect", name, retry_count = retries, downtime_s = secs,
            "reconnected to {name} after {number} attempts, down for {secs:.2}s");
    } else {
        tracing::debug!(target: "tether::reconnect", name, retry_count = retries, downtime_s = secs,
            "reconnected to {name} (attempt {number}, down for {secs:.3}s)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn cfg(max_attempts: Option<u32>) -> Config {
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
            attempt_timeout: None,
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
        // seed 001: "resuming connection... attempt 0" then silence. Here: resume hangs, restart works.
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
    async fn unmarked_attempt_uses_its_duration_for_stability() {
        let n = AtomicU32::new(0);
        let res: Result<(), GaveUp<&str>> = run(
            &cfg(Some(1)),
            &Events::none(),
            |_a: Attempt| {
                let k = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    if k == 3 {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    Err("eof")
                }
            },
            |_| false,
            |e| e.to_string(),
            |_, _| "stalled",
        )
        .await;
        res.unwrap();
    }
}
