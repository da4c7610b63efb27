//! A connection's next deadline, armed in its loop's timers ([`super::loop_timers`]) from the cores'
//! next deadline (timers as data: each core says when it next needs a look).

use std::time::{Duration, Instant};

use super::{loop_timers, Fx};

/// An armed deadline this little later than needed still serves: re-arming for less would cost a
/// paced sender a re-arm per confirmation (its ping's deadline and the next send's differ by
/// microseconds).
const GRAIN: Duration = Duration::from_millis(1);
/// An armed deadline earlier than needed wakes the connection for nothing, then it re-arms. One this
/// far off stays (deadlines that far move with every send, `now + ping_interval`: re-arming at each
/// would cost a `timerfd_settime` per send, and it fires early at most once per such horizon); a
/// nearer one is moved out (a confirmation a send's ping made early would wake the loop every
/// `confirm_delay`).
const FAR: Duration = Duration::from_millis(100);

#[derive(Default)]
pub(crate) struct Timer {
    /// The deadline armed, and its id in the loop's timers.
    armed: Option<(Instant, u64)>,
}

/// A change to the loop's timers, made once the connection's lock is released.
#[derive(Default)]
pub(super) struct Rearm {
    pub(super) arm: Option<(u64, Instant)>,
    pub(super) cancel: Option<u64>,
}

impl Timer {
    /// Make sure the connection is woken by `at` (None: nothing to wait for, an armed deadline stays:
    /// it only makes the cores look again).
    pub(crate) fn want(&mut self, at: Option<Instant>, now: Instant, fx: &mut Fx) {
        let Some(at) = at else { return };
        if let Some((a, _)) = self.armed {
            let late_by_a_grain = a >= at && a - at <= GRAIN;
            let early_and_far = a < at && a.saturating_duration_since(now) >= FAR;
            if late_by_a_grain || early_and_far {
                return;
            }
        }
        let id = loop_timers::next_id();
        self.replace(Some((at, id)), fx);
    }

    /// Arm `new` instead of what is armed. The loop's timers hold at most one deadline of the
    /// connection's, the one armed before this entry point: a deadline armed and replaced within the
    /// entry point is never made.
    fn replace(&mut self, new: Option<(Instant, u64)>, fx: &mut Fx) {
        let old = std::mem::replace(&mut self.armed, new).map(|a| a.1);
        let mut r = fx.timer.take().unwrap_or_default();
        match r.arm.take() {
            Some((pending, _)) if Some(pending) == old => {}
            _ => r.cancel = r.cancel.or(old),
        }
        r.arm = new.map(|(at, id)| (id, at));
        fx.timer = Some(r);
    }

    /// The deadline `id` came: it is armed no more.
    pub(crate) fn fired(&mut self, id: u64) {
        if self.armed.is_some_and(|a| a.1 == id) {
            self.armed = None;
        }
    }

    /// The connection is gone: the id of its armed deadline, for the loop's timers to forget.
    pub(crate) fn abandon(&mut self) -> Option<u64> {
        self.armed.take().map(|a| a.1)
    }

    /// Disarm (the connection ended). The cancel is made even with nothing armed: the loop's timers
    /// close when no connection needs them.
    pub(crate) fn stop(&mut self, fx: &mut Fx) {
        self.replace(None, fx);
        if let Some(r) = fx.timer.as_mut() {
            r.cancel = r.cancel.or(Some(0));
        }
    }
}
