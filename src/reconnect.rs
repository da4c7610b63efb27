//! What every reconnect loop reports: its events (`Connecting`, `Connected`, `ConnectionLost`,
//! `Reconnecting`, `Reconnected`, `GaveUp`), log records and metrics, for the decisions of the retry state
//! machine ([`crate::retry_state`]). One wording for every driver: `tether.connect` on the event loop and
//! `tether.Reconnector` (run or step-wise) from Python.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::metrics::Loop;
use crate::retry_state::{gave_up_text, target, Config, Decision, GiveUpReason, Level, Settled, Started, Up};
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
    Alarm(crate::watchdog_rules::Alarm),
    /// Terminal marker for event streams: the owner finished (never emitted by `run` itself).
    Closed,
}

type Hook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where a loop's reports go: its events (a closed or lagging receiver never blocks the loop; an
/// optional hook sees every event first, which owners use to track their state) and, for a measured
/// loop, its metrics (`tether.metrics`), which count what the events say.
#[derive(Clone, Default)]
pub struct Events {
    tx: Option<broadcast::Sender<Event>>,
    hook: Option<Hook>,
    metrics: Option<Arc<Loop>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("tx", &self.tx.is_some())
            .field("hook", &self.hook.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl Events {
    pub fn new(tx: broadcast::Sender<Event>) -> Self {
        Events { tx: Some(tx), hook: None, metrics: None }
    }
    pub fn none() -> Self {
        Events::default()
    }
    pub fn with_hook(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }
    /// Count the reports in `metrics` too (None: not measured).
    pub fn measured(mut self, metrics: Option<Arc<Loop>>) -> Self {
        self.metrics = metrics;
        self
    }

    fn metrics(&self) -> Option<&Loop> {
        self.metrics.as_deref()
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

/// Events, log records and metrics for the state machine's outputs: one wording for every driver
/// (`tether.connect` on the event loop, `tether.Reconnector` run or step-wise). Records carry `name`,
/// `retry_count`, `max_retry`, `error`, `delay_s`, `strategy`, `downtime_s` as structured fields, and
/// `logger` when the object routes its records to its own Python logger.
pub mod report {
    use super::*;

    const TARGET: &str = "tether::reconnect";

    fn max_retry(cfg: &Config) -> i64 {
        cfg.policy.max_attempts.map(i64::from).unwrap_or(-1)
    }

    pub fn started(events: &Events, s: &Started) {
        if let Some(m) = events.metrics() {
            m.attempt_started();
        }
        events.emit(Event::Connecting { attempt: s.number, strategy: s.strategy.clone() });
    }

    pub fn up(cfg: &Config, events: &Events, up: &Up) {
        let (name, logger, to) = (cfg.name.as_str(), cfg.logger.as_deref(), target("to", &cfg.name));
        if let Some(m) = events.metrics() {
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
            Level::Info if s.after_loss => {
                tracing::info!(target: TARGET, logger, name, retry_count = 0, downtime_s = secs,
                "reconnected{to} after {} (down for {secs:.2}s), stable for {:.1}s",
                count(attempts, "attempt"), cfg.stable_after.as_secs_f64())
            }
            Level::Info => tracing::info!(target: TARGET, logger, name, retry_count = 0, downtime_s = secs,
                "connected{to} after {} ({secs:.2}s), stable for {:.1}s",
                count(attempts, "attempt"), cfg.stable_after.as_secs_f64()),
            _ => tracing::debug!(target: TARGET, logger, name, retry_count = 0, downtime_s = secs,
                "connection{to} stable again (attempt {attempts}, down for {secs:.3}s)"),
        }
    }

    /// `closed()` of the step-wise form: the connected period ended without an error.
    pub fn closed(events: &Events) {
        if let Some(m) = events.metrics() {
            m.lost("closed");
        }
        events.emit(Event::ConnectionLost { reason: "closed".into() });
    }

    pub fn failure(cfg: &Config, events: &Events, d: &Decision, text: &str) {
        failure_as(cfg, events, d, text, text)
    }

    /// `failure`, the loss measured as `loss` (a Python exception's text under the name of the builtin
    /// class it derives from, so `reason` sees a subclass as its base) while `text` is what is told.
    pub fn failure_as(cfg: &Config, events: &Events, d: &Decision, text: &str, loss: &str) {
        let (name, logger) = (cfg.name.as_str(), cfg.logger.as_deref());
        let (lost, loss_reported) = d.loss();
        if let Some(m) = events.metrics() {
            if lost && !loss_reported {
                m.lost(loss);
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
mod tests {
    use super::*;
    use crate::backoff::{Backoff, Jitter};
    use crate::metrics::{self, tests::total, Instrument};
    use crate::retry_state::RetryState;
    use tokio::time::{advance, Instant};

    /// A driver as `tether.connect`'s: each attempt either connects and is lost 50 ms later, or fails.
    /// Returns whether the policy retries (after its delay, slept here in paused time).
    async fn attempt(cfg: &Config, events: &Events, st: &mut RetryState, lost: Option<&str>, err: &str) -> bool {
        let started = st.start(Instant::now().into_std());
        report::started(events, &started);
        if lost.is_some() {
            if let Some(up) = st.connected(Instant::now().into_std()) {
                report::up(cfg, events, &up);
            }
            advance(Duration::from_millis(50)).await;
        }
        let d = st.failed(Instant::now().into_std(), false);
        report::failure(cfg, events, &d, lost.unwrap_or(err));
        match d {
            Decision::Retry { delay, .. } => {
                advance(delay).await;
                true
            }
            Decision::GiveUp { .. } => false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_measured_loop_counts_what_it_reports() {
        let _attached = metrics::tests::attached_async().await;
        let cfg = Config {
            name: "loop-metrics".into(),
            policy: Backoff {
                initial: 1.0,
                factor: 2.0,
                jitter: Jitter::None,
                max_attempts: Some(3),
                ..Default::default()
            },
            quiet_attempts: 1,
            ladder: vec![(Arc::from("resume"), 1), (Arc::from("restart"), 1)],
            quiet_jitter: Duration::ZERO,
            ..Config::default()
        };
        let events = Events::none().measured(metrics::labels(&[("name", "loop-metrics")]).map(Loop::new));
        let mut st = RetryState::new(&cfg);
        // up, lost by the ping rule; an attempt that fails (no loss); up, closed by the server twice
        assert!(attempt(&cfg, &events, &mut st, Some("ping timeout: no answer"), "").await);
        assert!(attempt(&cfg, &events, &mut st, None, "ConnectionRefusedError: refused").await);
        assert!(attempt(&cfg, &events, &mut st, Some("server closed the connection: 1012"), "").await);
        assert!(!attempt(&cfg, &events, &mut st, Some("server closed the connection: 1012"), "").await);
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
