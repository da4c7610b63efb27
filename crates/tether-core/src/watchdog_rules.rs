//! The watchdog's rules without a clock or a task: when a state has dwelled too long, when a liveness
//! or progress key has gone quiet too long, and how each alarm reads. `watchdog` drives them with
//! tokio time and atomics (a beat is one store, from any thread).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmKind {
    Dwell,
    Progress,
    Liveness,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Dwell => "dwell",
            AlarmKind::Progress => "progress",
            AlarmKind::Liveness => "liveness",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub kind: AlarmKind,
    /// The state (dwell) or key (liveness, progress).
    pub name: String,
    pub elapsed: Duration,
    pub limit: Duration,
    pub message: String,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The dwell rule: a state that stays current longer than its limit raises one alarm per entry.
#[derive(Debug, Default)]
pub struct Dwell {
    current: Option<String>,
    entered: Option<Instant>,
    fired: bool,
    limits: HashMap<String, Duration>,
}

impl Dwell {
    pub fn limit(&mut self, state: &str, limit: Duration) {
        self.limits.insert(state.to_string(), limit);
    }

    /// Enter `state` at `now` (re-entering the current state restarts its clock).
    pub fn enter(&mut self, state: &str, now: Instant) {
        self.current = Some(state.to_string());
        self.entered = Some(now);
        self.fired = false;
    }

    /// The current state and when it was entered.
    pub fn current(&self) -> Option<(&str, Instant)> {
        Some((self.current.as_deref()?, self.entered?))
    }

    /// At `now`: the alarm due (once per entry), or when one would be; `watchdog` names the monitor.
    pub fn poll(&mut self, now: Instant, watchdog: &str) -> (Option<Alarm>, Option<Instant>) {
        let (Some(cur), Some(entered), false) = (&self.current, self.entered, self.fired) else { return (None, None) };
        let Some(limit) = self.limits.get(cur).copied() else { return (None, None) };
        let at = entered + limit;
        if now < at {
            return (None, Some(at));
        }
        self.fired = true;
        let elapsed = now - entered;
        let message = format!("{watchdog}: stuck in {cur:?} for {} (limit {})", secs(elapsed), secs(limit));
        (Some(Alarm { kind: AlarmKind::Dwell, name: cur.clone(), elapsed, limit, message }), None)
    }
}

/// The liveness/progress rule: a key not beaten (touched) for `limit` since `last` is due then.
pub fn quiet_deadline(last: Instant, limit: Duration) -> Instant {
    last + limit
}

/// The alarm of a liveness or progress key quiet for `elapsed`.
pub fn quiet_alarm(kind: AlarmKind, key: &str, elapsed: Duration, limit: Duration, watchdog: &str) -> Alarm {
    let what = match kind {
        AlarmKind::Liveness => "no beat",
        _ => "no progress",
    };
    Alarm {
        kind,
        name: key.to_string(),
        elapsed,
        limit,
        message: format!("{watchdog}: {what} on {key:?} for {} (limit {})", secs(elapsed), secs(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_past_its_limit_alarms_once_per_entry() {
        let t0 = Instant::now();
        let mut d = Dwell::default();
        d.limit("reconnecting", Duration::from_secs(20));
        d.enter("reconnecting", t0);
        assert_eq!(d.poll(t0 + Duration::from_secs(5), "room"), (None, Some(t0 + Duration::from_secs(20))));
        let (a, next) = d.poll(t0 + Duration::from_secs(21), "room");
        let a = a.expect("an alarm");
        assert_eq!((a.kind, a.name.as_str(), next), (AlarmKind::Dwell, "reconnecting", None));
        assert_eq!(a.message, "room: stuck in \"reconnecting\" for 21.0s (limit 20.0s)");
        assert_eq!(d.poll(t0 + Duration::from_secs(60), "room"), (None, None), "once per entry");
        d.enter("reconnecting", t0 + Duration::from_secs(60));
        assert!(d.poll(t0 + Duration::from_secs(81), "room").0.is_some(), "re-entering re-arms it");
        d.enter("connected", t0);
        assert_eq!(d.poll(t0 + Duration::from_secs(999), "room"), (None, None), "a state with no limit");
    }

    #[test]
    fn a_quiet_key_reads_as_what_it_watches() {
        let a = quiet_alarm(AlarmKind::Liveness, "audio:alice", Duration::from_secs(9), Duration::from_secs(8), "room");
        assert_eq!(a.message, "room: no beat on \"audio:alice\" for 9.0s (limit 8.0s)");
        let p = quiet_alarm(AlarmKind::Progress, "upload", Duration::from_secs(3), Duration::from_secs(2), "w");
        assert!(p.message.contains("no progress"));
    }
}
