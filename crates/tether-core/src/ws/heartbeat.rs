//! The in-band heartbeat's timing, without I/O and without a clock: for protocols whose liveness is an
//! application message (Stream's HealthCheckRequest/Response) rather than WebSocket pings, since a
//! server can keep the TCP connection and answer pings while its application stopped serving this
//! client.
//!
//! One heartbeat is out at a time: it is due `interval` after the last one went out (or after the
//! connection came up), and its reply must come within `timeout`. While the reader is paused (the
//! application does not read, so replies cannot be seen) the reply deadline waits, and restarts from
//! the resume. The front end asks [`HeartbeatClock::poll`] when its timer fires, writes the heartbeat
//! when told to, reports replies, and wakes again at [`HeartbeatClock::deadline`].

use std::time::{Duration, Instant};

/// How the reason of a loss by a missing heartbeat reply begins (the metrics tell it from other losses
/// by it).
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat timeout:";

/// What is due at a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    Nothing,
    /// Write a heartbeat now, then call `sent`.
    Send,
    /// No reply within `timeout`: the connection is lost. `silence`: since the last reply (or the
    /// connection's start), for the metrics' detection time.
    Lost {
        text: String,
        silence: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct HeartbeatClock {
    interval: Duration,
    timeout: Duration,
    next_at: Instant,
    /// A heartbeat is out: (when it went out, its reply deadline).
    out: Option<(Instant, Instant)>,
    paused: bool,
    /// The last reply, or the connection's start.
    last_reply: Instant,
}

impl HeartbeatClock {
    /// A connection came up at `now`: the first heartbeat is due `interval` later.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        HeartbeatClock { interval, timeout, next_at: now + interval, out: None, paused: false, last_reply: now }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn poll(&mut self, now: Instant) -> Beat {
        match self.out {
            None if now >= self.next_at => Beat::Send,
            Some((_, deadline)) if !self.paused && now >= deadline => Beat::Lost {
                text: format!(
                    "{HEARTBEAT_TIMEOUT} no reply within {:.3}s (heartbeat interval {:.3}s)",
                    self.timeout.as_secs_f64(),
                    self.interval.as_secs_f64()
                ),
                silence: now.saturating_duration_since(self.last_reply),
            },
            _ => Beat::Nothing,
        }
    }

    /// The heartbeat went out at `now`: its reply is awaited from here.
    pub fn sent(&mut self, now: Instant) {
        self.out = Some((now, now + self.timeout));
    }

    /// A heartbeat is out and unanswered: inbound messages may be its reply.
    pub fn awaiting_reply(&self) -> bool {
        self.out.is_some()
    }

    /// Its reply arrived: the next heartbeat is due `interval` after this one went out.
    pub fn answered(&mut self, now: Instant) {
        if let Some((sent, _)) = self.out.take() {
            self.next_at = (sent + self.interval).max(now);
            self.last_reply = now;
        }
    }

    /// The reader stopped reading: the reply deadline waits.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The reader reads again: replies could not be read before, so the deadline restarts now.
    pub fn resume(&mut self, now: Instant) {
        self.paused = false;
        if let Some((_, deadline)) = &mut self.out {
            *deadline = now + self.timeout;
        }
    }

    /// When `poll` has something to say next (None while paused with a heartbeat out).
    pub fn deadline(&self) -> Option<Instant> {
        match self.out {
            None => Some(self.next_at),
            Some(_) if self.paused => None,
            Some((_, deadline)) => Some(deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_heartbeat_every_interval_while_answered_and_a_loss_at_the_first_silence() {
        let t0 = Instant::now();
        let mut hb = HeartbeatClock::new(Duration::from_secs(1), Duration::from_secs(1), t0);
        assert_eq!((hb.poll(s(t0, 0.5)), hb.deadline()), (Beat::Nothing, Some(s(t0, 1.0))));
        for round in 0..3 {
            let at = s(t0, 1.0 + round as f64);
            assert_eq!(hb.poll(at), Beat::Send);
            hb.sent(at);
            assert!(hb.awaiting_reply());
            assert_eq!(hb.deadline(), Some(s(t0, 2.0 + round as f64)));
            hb.answered(s(t0, 1.1 + round as f64));
            assert!(!hb.awaiting_reply());
            assert_eq!(hb.deadline(), Some(s(t0, 2.0 + round as f64)), "interval after it went out");
        }
        assert_eq!(hb.poll(s(t0, 4.0)), Beat::Send);
        hb.sent(s(t0, 4.0));
        assert_eq!(hb.poll(s(t0, 4.9)), Beat::Nothing);
        // silent since the reply read at 3.1 s
        assert!(matches!(hb.poll(s(t0, 5.0)), Beat::Lost { text, silence }
            if text.starts_with("heartbeat timeout: no reply within 1.000s") && silence == Duration::from_millis(1900)));
    }

    #[test]
    fn the_reply_deadline_waits_while_the_reader_is_paused_and_restarts_at_the_resume() {
        let t0 = Instant::now();
        let mut hb = HeartbeatClock::new(Duration::from_secs(1), Duration::from_secs(1), t0);
        hb.sent(s(t0, 1.0));
        hb.pause();
        assert_eq!((hb.poll(s(t0, 30.0)), hb.deadline()), (Beat::Nothing, None));
        hb.resume(s(t0, 30.0));
        assert_eq!(hb.deadline(), Some(s(t0, 31.0)));
        // never answered: silent since the connection's start
        assert_eq!(
            hb.poll(s(t0, 31.0)),
            Beat::Lost {
                text: "heartbeat timeout: no reply within 1.000s (heartbeat interval 1.000s)".into(),
                silence: Duration::from_secs(31)
            }
        );
    }

    #[test]
    fn a_late_answer_schedules_the_next_heartbeat_from_now() {
        let t0 = Instant::now();
        let mut hb = HeartbeatClock::new(Duration::from_secs(1), Duration::from_secs(5), t0);
        hb.sent(s(t0, 1.0));
        hb.answered(s(t0, 3.0));
        assert_eq!(hb.deadline(), Some(s(t0, 3.0)));
    }
}
