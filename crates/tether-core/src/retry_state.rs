//! The retry policy of a reconnect loop as a pure state machine: no I/O, no clock, no sleeping.
//!
//! Inputs are what happened and when (`start`, `connected`, `closed`, `failed`, `settle`, each with an
//! `Instant` supplied by the driver); outputs are decisions (the delay before the next attempt, the
//! level to log it at, the ladder rung, or giving up). `reconnect::run` drives it for the native
//! WebSocket and the Python binding drives it for `Reconnector.run()` and the step-wise form, so every
//! rule below lives here once and is unit-tested without sockets or sleeps:
//!
//! * only time spent connected counts towards `stable_after` (a failed attempt never does, however
//!   long it took); once connected that long, the retry counter and the backoff sequence reset;
//! * the first `quiet_attempts` retries of an outage wait `uniform(0, quiet_jitter)` (so a fleet dropped
//!   together does not return in one burst) and are logged at DEBUG; backed-off retries log WARNING;
//! * a recovery is logged at INFO once, when the link has been stable after an outage that logged a
//!   WARNING; handshakes of a link that keeps flapping stay at DEBUG;
//! * fatal errors are never retried; `max_attempts` and `deadline` of the policy bound each outage. Within
//!   a deadline the quiet window shrinks to the time left (a random spread never ends an outage), while
//!   a backed-off retry that would begin at or after the deadline is not made: the outage gives up at
//!   that failure, since an attempt begun at the deadline would be cut at once.
//! * until the link has been up once, `connect_timeout` bounds the outage too (whichever of it and the
//!   policy's `deadline` ends first), with the same rules: a first connect that cannot succeed ends in
//!   a give-up instead of retrying forever, while later outages are bounded by the policy alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, Delays, Rng};
use crate::wording::count;

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
pub fn gave_up_text(name: &str, attempts: u32, elapsed: Duration, reason: GiveUpReason, error: &str) -> String {
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

/// Severity of the record the driver should log for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// An attempt begins: its number within the outage, its ladder rung and its progress deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub number: u32,
    pub strategy: Arc<str>,
    /// The attempt must be connected by then or be abandoned: `attempt_timeout` after its start, or the
    /// end of the policy's `deadline` for the outage if that comes first.
    pub deadline: Option<Instant>,
}

/// The current attempt connected.
#[derive(Debug, Clone, PartialEq)]
pub struct Up {
    pub number: u32,
    /// Set when this ends the gap after a loss: (downtime since that loss, attempts). Not after failed
    /// attempts alone (a first connection is no reconnect).
    pub reconnected: Option<(Duration, u32)>,
    /// Retries counted so far in this outage (reset only once the link is stable).
    pub retries: u32,
    /// When the link counts as stable if it stays up: call `settle` then.
    pub stable_at: Instant,
}

/// The link stayed up `stable_after`: the outage is over and the counters were reset.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// INFO when the outage logged a WARNING (a recovery worth reporting), DEBUG otherwise.
    pub level: Level,
    /// From the last loss, or (no loss: a first connection after failed attempts) the first failure.
    pub downtime: Duration,
    pub attempts: u32,
    /// A connection was lost in the outage: a reconnect, not a first connection.
    pub after_loss: bool,
}

/// What a failure leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Retry {
        /// An established connection was lost (rather than an attempt failing).
        lost: bool,
        /// The loss was already reported by `closed()`.
        loss_reported: bool,
        /// 1-based retry number within the outage (`retry_count` in logs).
        retry: u32,
        delay: Duration,
        strategy: Arc<str>,
        /// A quiet retry (one of the first `quiet_attempts`): logged at DEBUG; otherwise WARNING.
        quiet: bool,
        level: Level,
    },
    GiveUp {
        lost: bool,
        loss_reported: bool,
        reason: GiveUpReason,
        attempts: u32,
        elapsed: Duration,
    },
}

impl Decision {
    /// Whether the failure ended an established connection, and whether `closed()` already said so.
    pub fn loss(&self) -> (bool, bool) {
        match self {
            Decision::Retry { lost, loss_reported, .. } | Decision::GiveUp { lost, loss_reported, .. } => {
                (*lost, *loss_reported)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    /// Nothing in flight: before the first attempt, or waiting for a retry scheduled to begin at `next`.
    Down {
        next: Option<Instant>,
    },
    Attempting {
        number: u32,
        started: Instant,
    },
    Up {
        number: u32,
        since: Instant,
    },
    /// `closed()` ended the connected period at `at`; the loss is reported, not yet retried.
    Closed {
        at: Instant,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Outage {
    started: Instant,
    warned: bool,
    /// The last loss of a connection in this outage (a flapping link loses several; None while only
    /// attempts failed, as before a first connection): a reconnect's downtime counts from it.
    lost_at: Option<Instant>,
}

/// One reconnect loop's retry state. Create one per loop (per `run`).
#[derive(Debug, Clone)]
pub struct RetryState {
    cfg: Config,
    delays: Delays,
    rng: Rng,
    retries: u32,
    outage: Option<Outage>,
    link: Link,
    /// Rung of the next attempt; "connect" until the first failure.
    strategy: Arc<str>,
    /// The link has been up at least once (so `connect_timeout` no longer applies).
    ever_up: bool,
}

/// Salt so the quiet-jitter stream of a seeded policy differs from its backoff-delay stream.
const QUIET_SALT: u64 = 0x5155_4945_545f_4a49;

impl RetryState {
    pub fn new(cfg: &Config) -> Self {
        RetryState {
            delays: cfg.policy.delays_unbounded(),
            rng: Rng::new(cfg.policy.seed.map(|s| s ^ QUIET_SALT)),
            cfg: cfg.clone(),
            retries: 0,
            outage: None,
            link: Link::Down { next: None },
            strategy: Arc::from("connect"),
            ever_up: false,
        }
    }

    /// How long the current outage may last, and the give-up reason when it runs out: before the first
    /// connection the earlier of `connect_timeout` and the policy's deadline, afterwards the deadline.
    fn outage_limit(&self) -> Option<(Duration, GiveUpReason)> {
        let policy = self.cfg.policy.deadline_duration().map(|d| (d, GiveUpReason::Deadline));
        let first = self.cfg.connect_timeout.filter(|_| !self.ever_up).map(|d| (d, GiveUpReason::ConnectTimeout));
        match (policy, first) {
            (Some(p), Some(f)) => Some(if f.0 < p.0 { f } else { p }),
            (p, f) => p.or(f),
        }
    }

    /// Retries since the last stable connection (0 = none), as of `now`.
    pub fn attempt(&self, now: Instant) -> u32 {
        if self.stable(now) {
            0
        } else {
            self.retries
        }
    }

    /// Whether attempt `number` is still in flight without having connected (its deadline applies).
    pub fn stalled(&self, number: u32) -> bool {
        matches!(self.link, Link::Attempting { number: n, .. } if n == number)
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    fn stable(&self, now: Instant) -> bool {
        matches!(self.link, Link::Up { since, .. } if now.saturating_duration_since(since) >= self.cfg.stable_after)
    }

    /// An attempt begins now.
    pub fn start(&mut self, now: Instant) -> Started {
        if let Link::Up { .. } = self.link {
            self.closed(now);
        }
        let number = self.retries + 1;
        self.link = Link::Attempting { number, started: now };
        // an attempt may not outlive the outage's deadline (an outage that has not begun yet would
        // begin now, if this attempt fails)
        let outage_end = self.outage_limit().map(|(d, _)| self.outage.map_or(now, |o| o.started) + d);
        let attempt_end = self.cfg.attempt_timeout.map(|t| now + t);
        let deadline = match (outage_end, attempt_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Started { number, strategy: self.strategy.clone(), deadline }
    }

    /// The current attempt connected at `now`. None if the link was already up. Without a prior
    /// `start` (the step-wise form) the attempt is implied.
    pub fn connected(&mut self, now: Instant) -> Option<Up> {
        let number = match self.link {
            Link::Up { .. } => return None,
            Link::Attempting { number, .. } => number,
            Link::Down { .. } | Link::Closed { .. } => self.retries + 1,
        };
        self.link = Link::Up { number, since: now };
        self.ever_up = true;
        let reconnected = self.outage.and_then(|o| o.lost_at).map(|at| (now.saturating_duration_since(at), number));
        Some(Up { number, reconnected, retries: self.retries, stable_at: now + self.cfg.stable_after })
    }

    /// If the link has now been up for `stable_after`, end the outage: reset the retry counter and the
    /// backoff sequence. Returns what to report when there was an outage (or retries) to end.
    pub fn settle(&mut self, now: Instant) -> Option<Settled> {
        let Link::Up { number, since } = self.link else { return None };
        if !self.stable(now) {
            return None;
        }
        let outage = self.outage.take();
        self.retries = 0;
        self.delays = self.cfg.policy.delays_unbounded();
        let o = outage?;
        Some(Settled {
            level: if o.warned { Level::Info } else { Level::Debug },
            downtime: since.saturating_duration_since(o.lost_at.unwrap_or(o.started)),
            attempts: number,
            after_loss: o.lost_at.is_some(),
        })
    }

    /// The connected period ended at `now` without an error (peer or application closed). Returns
    /// true when the link was up (so the driver reports the loss). The counter is not advanced: only
    /// `failed` schedules a retry.
    pub fn closed(&mut self, now: Instant) -> bool {
        if !self.is_up() {
            return false;
        }
        self.settle(now);
        self.outage.get_or_insert(Outage { started: now, warned: false, lost_at: None }).lost_at = Some(now);
        self.link = Link::Closed { at: now };
        true
    }

    /// The current attempt failed, or the live connection was lost, at `now`.
    pub fn failed(&mut self, now: Instant, fatal: bool) -> Decision {
        self.settle(now);
        let (lost, loss_reported, began) = match self.link {
            Link::Up { .. } => (true, false, now),
            Link::Closed { at } => (true, true, at),
            Link::Attempting { started, .. } => (false, false, started),
            Link::Down { next } => (false, false, next.unwrap_or(now).min(now)),
        };
        let outage = self.outage.get_or_insert(Outage { started: began, warned: false, lost_at: None });
        if lost {
            outage.lost_at = Some(began);
        }
        let outage = *outage;
        let elapsed = now.saturating_duration_since(outage.started);
        self.link = Link::Down { next: None };

        if fatal {
            let attempts = self.retries + 1;
            return self.give_up(lost, loss_reported, GiveUpReason::Fatal, attempts, elapsed);
        }
        self.retries += 1;
        let retry = self.retries;
        if self.cfg.policy.max_attempts.is_some_and(|max| retry > max) {
            return self.give_up(lost, loss_reported, GiveUpReason::Attempts, retry, elapsed);
        }
        // time left before the outage's deadline; at zero no attempt could run (`start` would cut it at once)
        let limit = self.outage_limit();
        let ran_out = limit.map_or(GiveUpReason::Deadline, |(_, why)| why);
        let left = limit.map(|(d, _)| d.saturating_sub(elapsed));
        if left.is_some_and(|l| l.is_zero()) {
            return self.give_up(lost, loss_reported, ran_out, retry, elapsed);
        }
        let quiet = retry <= self.cfg.quiet_attempts;
        let delay = if quiet {
            // The spread is not the policy's pacing: squeezed into the time left, it never ends an outage
            // early (a deadline shorter than the window once gave up on the first failure half the time).
            let window = left.map_or(self.cfg.quiet_jitter, |l| l.min(self.cfg.quiet_jitter));
            Duration::from_secs_f64(self.rng.uniform(0.0, window.as_secs_f64())).min(window)
        } else {
            match self.delays.next() {
                // A backed-off retry that would begin at or after the deadline is not made: that attempt
                // would be cut at once, so sleeping until then would only delay the give-up.
                Some(d) if left.map_or(true, |l| d < l) => d,
                _ => return self.give_up(lost, loss_reported, ran_out, retry, elapsed),
            }
        };
        if !quiet {
            if let Some(o) = self.outage.as_mut() {
                o.warned = true;
            }
        }
        self.strategy = self.cfg.strategy_for(retry);
        self.link = Link::Down { next: Some(now + delay) };
        Decision::Retry {
            lost,
            loss_reported,
            retry,
            delay,
            strategy: self.strategy.clone(),
            quiet,
            level: if quiet { Level::Debug } else { Level::Warn },
        }
    }

    /// Giving up ends the episode: the state is back to new, so a step-wise user may start over.
    fn give_up(
        &mut self,
        lost: bool,
        loss_reported: bool,
        reason: GiveUpReason,
        attempts: u32,
        elapsed: Duration,
    ) -> Decision {
        *self = RetryState::new(&self.cfg);
        Decision::GiveUp { lost, loss_reported, reason, attempts, elapsed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;

    /// The policy of the unit tests here and in `retry_state`: no jitter, delays 1, 2, 4, 8 s, one
    /// quiet retry at once, a two-rung ladder.
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
            quiet_jitter: Duration::ZERO,
            ..Config::default()
        }
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

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn delay(d: &Decision) -> f64 {
        match d {
            Decision::Retry { delay, .. } => delay.as_secs_f64(),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_failed_attempt_never_counts_as_stable() {
        // handshakes that time out after 10 s (>= stable_after) are not a stable link
        let mut st =
            RetryState::new(&Config { policy: Backoff { deadline: Some(60.0), ..cfg(None).policy }, ..cfg(None) });
        let t0 = Instant::now();
        let mut t = t0;
        let mut delays = vec![];
        loop {
            st.start(t);
            t += secs(10.0); // open_timeout
            match st.failed(t, false) {
                d @ Decision::Retry { .. } => {
                    delays.push(delay(&d));
                    t += secs(delay(&d));
                }
                Decision::GiveUp { reason, attempts, elapsed, lost, .. } => {
                    assert_eq!(reason, GiveUpReason::Deadline);
                    assert!(!lost);
                    assert!(elapsed <= secs(60.0), "{elapsed:?}");
                    assert_eq!(attempts as usize, delays.len() + 1);
                    break;
                }
            }
        }
        assert_eq!(delays, [0.0, 1.0, 2.0, 4.0]);
    }

    #[test]
    fn an_attempt_is_cut_at_the_outage_deadline() {
        // the give-up comes by the deadline, not one open_timeout later
        let mut c = cfg(None);
        c.policy.deadline = Some(25.0);
        c.attempt_timeout = Some(secs(10.0));
        let mut st = RetryState::new(&c);
        let t0 = Instant::now();
        assert_eq!(st.start(t0).deadline, Some(t0 + secs(10.0)));
        st.failed(t0 + secs(10.0), false); // quiet: 0 s
        assert_eq!(st.start(t0 + secs(10.0)).deadline, Some(t0 + secs(20.0)));
        st.failed(t0 + secs(20.0), false); // 1 s
        let s = st.start(t0 + secs(21.0));
        assert_eq!(s.deadline, Some(t0 + secs(25.0)), "cut at the outage deadline");
        let d = st.failed(t0 + secs(25.0), false);
        assert!(matches!(d, Decision::GiveUp { reason: GiveUpReason::Deadline, attempts: 3, .. }), "{d:?}");
    }

    #[test]
    fn connect_timeout_bounds_only_the_outage_before_the_first_connection() {
        let mut c = cfg(None);
        c.connect_timeout = Some(secs(6.0));
        let mut st = RetryState::new(&c);
        let t0 = Instant::now();
        // a server that refuses at once: 0 (quiet) + 1 + 2 s of backoff, then 4 s would cross 6 s
        let mut t = t0;
        let mut attempts = 0;
        let gave_up = loop {
            let s = st.start(t);
            attempts += 1;
            assert_eq!(s.deadline, Some(t0 + secs(6.0)), "every first-connect attempt is cut at connect_timeout");
            match st.failed(t, false) {
                d @ Decision::Retry { .. } => t += secs(delay(&d)),
                g => break g,
            }
        };
        assert!(
            matches!(gave_up, Decision::GiveUp { reason: GiveUpReason::ConnectTimeout, lost: false, .. }),
            "{gave_up:?}"
        );
        assert_eq!(attempts, 4);

        // once connected, an outage is the policy's alone: it retries past connect_timeout
        let mut st = RetryState::new(&c);
        st.start(t0);
        st.connected(t0).unwrap();
        let mut t = t0 + secs(1.0);
        for _ in 0..6 {
            let d = st.failed(t, false);
            t += secs(delay(&d));
            assert_eq!(st.start(t).deadline, None);
        }
        assert!(t > t0 + secs(20.0));
    }

    #[test]
    fn the_earlier_of_connect_timeout_and_the_policy_deadline_applies() {
        let mut c = cfg(None);
        c.connect_timeout = Some(secs(20.0));
        c.policy.deadline = Some(2.5);
        let mut st = RetryState::new(&c);
        let t0 = Instant::now();
        assert_eq!(st.start(t0).deadline, Some(t0 + secs(2.5)));
        st.failed(t0, false); // quiet, 0 s
        st.start(t0);
        st.failed(t0, false); // 1 s
        st.start(t0 + secs(1.0));
        let d = st.failed(t0 + secs(1.0), false); // 2 s would cross 2.5 s
        assert!(matches!(d, Decision::GiveUp { reason: GiveUpReason::Deadline, .. }), "{d:?}");
    }

    #[test]
    fn only_time_connected_counts_towards_stability() {
        let mut st = RetryState::new(&cfg(Some(1)));
        let t0 = Instant::now();
        st.start(t0);
        // 9 s of handshake, then 2 s up: 11 s of attempt but only 2 s connected
        st.connected(t0 + secs(9.0)).unwrap();
        assert!(matches!(st.failed(t0 + secs(11.0), false), Decision::Retry { retry: 1, lost: true, .. }));
        st.start(t0 + secs(11.0));
        st.connected(t0 + secs(11.5)).unwrap();
        // up 9.9 s: still not stable, so the second loss exceeds max_attempts=1
        let d = st.failed(t0 + secs(21.4), false);
        assert!(matches!(d, Decision::GiveUp { reason: GiveUpReason::Attempts, attempts: 2, lost: true, .. }), "{d:?}");
    }

    #[test]
    fn a_stable_connection_resets_the_counter_and_the_backoff() {
        let mut st = RetryState::new(&cfg(Some(1)));
        let t0 = Instant::now();
        let mut t = t0;
        for _ in 0..5 {
            st.start(t);
            st.connected(t).unwrap();
            assert_eq!(st.attempt(t + secs(5.0)), st.retries);
            assert_eq!(st.attempt(t + secs(10.0)), 0);
            t += secs(11.0);
            let d = st.failed(t, false);
            assert!(matches!(d, Decision::Retry { retry: 1, quiet: true, .. }), "{d:?}");
        }
    }

    #[test]
    fn flapping_escalates_with_the_ladder_and_gives_up() {
        let mut st = RetryState::new(&cfg(Some(4)));
        let t0 = Instant::now();
        let mut t = t0;
        let mut got = vec![];
        let mut reconnects = vec![];
        loop {
            let s = st.start(t);
            let up = st.connected(t).unwrap();
            reconnects.push(up.reconnected.map(|(_, n)| n));
            assert_eq!(s.number, up.number);
            t += secs(0.05); // accepted, then dropped
            assert_eq!(st.settle(t), None, "a flap is never stable");
            match st.failed(t, false) {
                Decision::Retry { delay, strategy, level, quiet, .. } => {
                    got.push((delay.as_secs_f64(), strategy.to_string(), level, quiet));
                    t += delay;
                }
                Decision::GiveUp { reason, attempts, .. } => {
                    assert_eq!((reason, attempts), (GiveUpReason::Attempts, 5));
                    break;
                }
            }
        }
        let r = |d: f64, s: &str, l| (d, s.to_string(), l, l == Level::Debug);
        assert_eq!(
            got,
            [
                r(0.0, "resume", Level::Debug),
                r(1.0, "restart", Level::Warn),
                r(2.0, "restart", Level::Warn),
                r(4.0, "restart", Level::Warn)
            ]
        );
        assert_eq!(reconnects, [None, Some(2), Some(3), Some(4), Some(5)]);
    }

    #[test]
    fn recovery_is_info_once_stable_after_a_warned_outage() {
        let mut st = RetryState::new(&cfg(None));
        let t0 = Instant::now();
        st.start(t0);
        st.connected(t0).unwrap();
        // lost after 30 s, then two failed attempts (the second one backed off: WARNING)
        let mut t = t0 + secs(30.0);
        assert_eq!(delay(&st.failed(t, false)), 0.0);
        st.start(t);
        assert_eq!(delay(&st.failed(t, false)), 1.0);
        t += secs(1.0);
        st.start(t);
        let up = st.connected(t + secs(0.5)).unwrap();
        assert_eq!(up.reconnected, Some((secs(1.5), 3)));
        assert_eq!(up.stable_at, t + secs(10.5));
        assert_eq!(st.settle(t + secs(10.4)), None);
        let s = st.settle(up.stable_at).unwrap();
        assert_eq!(s, Settled { level: Level::Info, downtime: secs(1.5), attempts: 3, after_loss: true });
        assert_eq!(st.settle(up.stable_at + secs(1.0)), None, "reported once");
        assert_eq!(st.attempt(up.stable_at), 0);
        // a blip that heals on the quiet retry settles at DEBUG
        let t = up.stable_at + secs(5.0);
        st.failed(t, false);
        st.start(t);
        let up = st.connected(t).unwrap();
        assert_eq!(st.settle(up.stable_at).unwrap().level, Level::Debug);
    }

    #[test]
    fn quiet_attempts_and_zero_quiet_attempts() {
        let mut c = cfg(None);
        c.quiet_attempts = 2;
        let mut st = RetryState::new(&c);
        let t = Instant::now();
        let levels: Vec<Level> = (0..4)
            .map(|_| match st.failed(t, false) {
                Decision::Retry { level, .. } => level,
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(levels, [Level::Debug, Level::Debug, Level::Warn, Level::Warn]);
        c.quiet_attempts = 0;
        let mut st = RetryState::new(&c);
        assert_eq!(delay(&st.failed(t, false)), 1.0);
    }

    #[test]
    fn deadline_bounds_an_outage_from_its_first_failure() {
        let mut c = cfg(None);
        c.policy.deadline = Some(5.0);
        let mut st = RetryState::new(&c);
        let t0 = Instant::now();
        let mut t = t0;
        let mut n = 0;
        let d = loop {
            st.start(t);
            n += 1;
            match st.failed(t, false) {
                Decision::Retry { delay, .. } => t += delay,
                g => break g,
            }
        };
        // 0 + 1 + 2 = 3 s slept; the next delay (4 s) would cross 5 s
        assert_eq!(
            d,
            Decision::GiveUp {
                lost: false,
                loss_reported: false,
                reason: GiveUpReason::Deadline,
                attempts: 4,
                elapsed: secs(3.0)
            }
        );
        assert_eq!(n, 4);
        // giving up resets: the next episode starts from scratch
        assert_eq!(st.start(t).number, 1);
    }

    #[test]
    fn the_quiet_delay_never_ends_an_outage_before_its_deadline() {
        // review 24: Backoff(deadline=0.5) with the default 1 s quiet window gave up on the first failure
        // in 92 of 200 outages ("after 1 attempt over 0.0s"); the window now shrinks to the time left
        let t0 = Instant::now();
        for seed in 0..200 {
            let mut c = Config::default();
            c.policy = Backoff { deadline: Some(0.5), seed: Some(seed), ..c.policy };
            let mut st = RetryState::new(&c);
            let (mut t, mut attempts) = (t0, 0);
            let gave_up = loop {
                st.start(t);
                attempts += 1;
                match st.failed(t, false) {
                    d @ Decision::Retry { quiet: true, .. } => {
                        assert!(delay(&d) < 0.5, "seed {seed}: {d:?}");
                        t += secs(delay(&d));
                    }
                    Decision::Retry { delay, .. } => t += delay,
                    g => break g,
                }
            };
            assert!(attempts > 1, "seed {seed} gave up on the first failure: {gave_up:?}");
            assert!(matches!(gave_up, Decision::GiveUp { reason: GiveUpReason::Deadline, .. }), "{gave_up:?}");
            assert!(t < t0 + secs(0.5), "no attempt begins at or after the deadline");
        }
    }

    #[test]
    fn a_late_failure_gets_the_time_left_and_none_at_the_deadline() {
        let mut c = cfg(None);
        c.quiet_attempts = 2;
        c.quiet_jitter = secs(1.0);
        c.policy.deadline = Some(0.5);
        let t0 = Instant::now();
        for seed in 0..50 {
            c.policy.seed = Some(seed);
            let mut st = RetryState::new(&c);
            st.start(t0);
            // a refusal that took 0.4 s leaves 0.1 s for the spread
            let q = delay(&st.failed(t0 + secs(0.4), false));
            assert!(q <= 0.1, "seed {seed}: {q}");
            // the next attempt is cut at the outage deadline: quiet or not, nothing is left to retry in
            assert_eq!(st.start(t0 + secs(0.4 + q)).deadline, Some(t0 + secs(0.5)));
            let d = st.failed(t0 + secs(0.5), false);
            assert!(matches!(d, Decision::GiveUp { reason: GiveUpReason::Deadline, attempts: 2, .. }), "{d:?}");
        }
    }

    #[test]
    fn fatal_is_never_retried() {
        let mut st = RetryState::new(&cfg(None));
        let t0 = Instant::now();
        st.start(t0);
        let d = st.failed(t0 + secs(2.0), true);
        assert_eq!(
            d,
            Decision::GiveUp {
                lost: false,
                loss_reported: false,
                reason: GiveUpReason::Fatal,
                attempts: 1,
                elapsed: secs(2.0)
            }
        );
    }

    #[test]
    fn attempts_follow_the_ladder_and_the_first_is_connect() {
        let mut st = RetryState::new(&cfg(None));
        let t = Instant::now();
        assert_eq!(&*st.start(t).strategy, "connect");
        assert!(st.stalled(1));
        st.failed(t, false);
        assert!(!st.stalled(1));
        assert_eq!(&*st.start(t).strategy, "resume");
        st.failed(t, false);
        let s = st.start(t);
        assert_eq!((s.number, &*s.strategy), (3, "restart"));
        assert_eq!(s.deadline, None);
    }

    #[test]
    fn attempt_deadline_comes_from_attempt_timeout() {
        let mut c = cfg(None);
        c.attempt_timeout = Some(secs(0.3));
        let mut st = RetryState::new(&c);
        let t = Instant::now();
        assert_eq!(st.start(t).deadline, Some(t + secs(0.3)));
        st.connected(t + secs(0.1));
        assert!(!st.stalled(1), "a connected attempt is past its deadline's reach");
    }

    #[test]
    fn closed_reports_the_loss_once_and_a_later_failure_paces_the_retry() {
        let mut st = RetryState::new(&cfg(None));
        let t0 = Instant::now();
        assert!(!st.closed(t0), "nothing to close");
        st.connected(t0).unwrap();
        assert!(st.closed(t0 + secs(3.0)));
        assert!(!st.closed(t0 + secs(3.0)));
        let d = st.failed(t0 + secs(4.0), false);
        assert!(matches!(d, Decision::Retry { lost: true, loss_reported: true, retry: 1, .. }), "{d:?}");
        // the outage began when the connection closed
        let up = st.connected(t0 + secs(5.0)).unwrap();
        assert_eq!(up.reconnected, Some((secs(2.0), 2)));
    }

    #[test]
    fn a_reconnect_counts_its_downtime_from_the_last_loss_and_a_first_connect_is_none() {
        let mut st = RetryState::new(&cfg(None));
        let t0 = Instant::now();
        // three refused attempts, then the first connection: connected, not reconnected
        for i in 0..3 {
            st.start(t0 + secs(f64::from(i)));
            st.failed(t0 + secs(f64::from(i)), false);
        }
        st.start(t0 + secs(3.0));
        let up = st.connected(t0 + secs(3.0)).unwrap();
        assert_eq!(up.reconnected, None);
        assert!(!st.settle(up.stable_at).unwrap().after_loss, "told as a first connection");
        // a link that flaps inside stable_after (10 s): up 0.6 s between the losses
        let lost = t0 + secs(20.0);
        st.failed(lost, false);
        st.start(lost + secs(0.05));
        assert_eq!(st.connected(lost + secs(0.05)).unwrap().reconnected, Some((secs(0.05), 2)));
        let lost = lost + secs(0.65);
        st.failed(lost, false);
        st.start(lost + secs(0.05));
        let up = st.connected(lost + secs(0.05)).unwrap();
        assert_eq!(up.reconnected, Some((secs(0.05), 3)), "the second gap alone, not the 0.6 s up before it");
        assert_eq!(st.settle(up.stable_at).unwrap().downtime, secs(0.05));
    }

    #[test]
    fn step_wise_failures_without_start_are_counted() {
        let mut st = RetryState::new(&cfg(Some(2)));
        let t = Instant::now();
        assert!(matches!(st.failed(t, false), Decision::Retry { retry: 1, lost: false, .. }));
        assert_eq!(st.attempt(t), 1);
        assert!(matches!(st.failed(t, false), Decision::Retry { retry: 2, .. }));
        assert!(matches!(st.failed(t, false), Decision::GiveUp { reason: GiveUpReason::Attempts, attempts: 3, .. }));
        assert_eq!(st.attempt(t), 0);
    }

    #[test]
    fn quiet_retries_spread_a_herd() {
        // 1,000 clients dropped together; with the default window no 100 ms slice holds
        // more than 300 first retries and all are back within 2 s.
        let default = Config::default();
        let window = default.quiet_jitter;
        assert!(window > Duration::ZERO);
        let t0 = Instant::now();
        let drop_at = t0 + secs(60.0);
        let mut at: Vec<f64> = (0..1000u64)
            .map(|i| {
                let mut c = default.clone();
                c.policy.seed = Some(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 17);
                let mut st = RetryState::new(&c);
                st.start(t0);
                st.connected(t0).unwrap();
                match st.failed(drop_at, false) {
                    Decision::Retry { delay, quiet, level, .. } => {
                        assert!(quiet && level == Level::Debug, "the first retry stays below WARNING");
                        delay.as_secs_f64()
                    }
                    d => panic!("{d:?}"),
                }
            })
            .collect();
        at.sort_by(f64::total_cmp);
        assert!(at[999] < 2.0, "all back within 2 s, last at {}", at[999]);
        // densest 100 ms window, sliding over every arrival
        let densest = (0..at.len()).map(|i| at[i..].iter().take_while(|&&x| x < at[i] + 0.1).count()).max().unwrap();
        assert!(densest <= 300, "densest 100 ms window holds {densest}");
        assert!(at[0] >= 0.0 && at[999] <= window.as_secs_f64());
    }

    #[test]
    fn a_seeded_policy_makes_the_quiet_jitter_reproducible() {
        let mut c = Config::default();
        c.policy.seed = Some(7);
        let first = |c: &Config| delay(&RetryState::new(c).failed(Instant::now(), false));
        assert_eq!(first(&c), first(&c));
        c.quiet_jitter = Duration::ZERO;
        assert_eq!(first(&c), 0.0);
    }
}
