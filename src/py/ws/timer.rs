//! `loop.call_later` timers of a connection, armed for the earliest deadline of its cores (timers as
//! data: each core says when it next needs a look).
//!
//! Re-armed lazily: a later deadline leaves an armed timer alone (it fires early, the cores are asked
//! again and a timer is armed anew). An earlier deadline gets a timer of its own while the later one
//! stays armed, rather than cancelling it: asyncio keeps a cancelled timer in its heap until it would
//! have fired, and a heap full of them makes every `asyncio.sleep` of the application compare more
//! (a paced sender re-arms the confirmation after each 5 s ping deadline). A few at most are
//! armed at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::{Conn, Fx};

/// Timers armed at once, at most: beyond, the latest is cancelled.
const ARMED: usize = 3;
/// An armed timer this much earlier than needed is replaced, if it is `NEAR`.
const PUSHED_OUT: Duration = Duration::from_millis(5);
const NEAR: Duration = Duration::from_millis(100);
/// An armed timer this little later than needed still serves, as any timer armed in whole
/// milliseconds may fire this late (see `arm`): re-arming for less would cost a paced sender a second
/// timer per confirmation (its ping's deadline and the next send's differ by microseconds).
const GRAIN: Duration = Duration::from_millis(1);

#[derive(Default)]
pub(crate) struct Timer {
    /// Armed timers: when each fires (its deadline rounded up, see `arm`), its sequence number, and its
    /// handle once `call_later` returned.
    armed: Vec<(Instant, u64, Option<Py<PyAny>>)>,
    seq: u64,
}

impl Timer {
    /// Make sure a timer fires by `at` (None: nothing to wait for). While the connection writes
    /// (`busy`), a timer is never armed further than `busy_horizon` ahead: the next confirmation is
    /// likely due by then, and one timer armed every horizon costs less than a far one left in the
    /// heap under each near one.
    pub(crate) fn want(&mut self, at: Option<Instant>, now: Instant, busy_horizon: Option<Duration>, fx: &mut Fx) {
        let Some(at) = at else { return };
        let at = busy_horizon.map_or(at, |h| at.min(now + h));
        let earliest = self.armed.iter().map(|a| a.0).min();
        match earliest {
            // a near timer whose deadline moved out (a send carried the confirming ping): replaced,
            // rather than left to wake the loop for nothing; a cancelled one this near leaves asyncio's
            // heap soon
            Some(e) if e <= at && at - e >= PUSHED_OUT && e.saturating_duration_since(now) < NEAR => {
                let i = self.armed.iter().position(|a| a.0 == e).unwrap_or(0);
                let (_, _, old) = self.armed.swap_remove(i);
                self.arm(at, now, old, fx);
                return;
            }
            Some(e) if e <= at + GRAIN => return,
            _ => {}
        }
        let replaced = if self.armed.len() >= ARMED {
            // the latest goes: `at` is earlier than every armed one
            let i = self.armed.iter().enumerate().max_by_key(|(_, a)| a.0).map(|(i, _)| i).unwrap_or(0);
            self.armed.swap_remove(i).2
        } else {
            None
        };
        self.arm(at, now, replaced, fx);
    }

    fn arm(&mut self, at: Instant, now: Instant, replaced: Option<Py<PyAny>>, fx: &mut Fx) {
        self.seq += 1;
        // whole milliseconds, rounded up: a loop whose clock counts milliseconds (uvloop) must not
        // fire it before `at`, and a timer that fires early only re-arms
        let micros = at.saturating_duration_since(now).as_micros() as u64;
        let delay = Duration::from_millis(micros.div_ceil(1000));
        self.armed.push((now + delay, self.seq, None));
        fx.timer = Some((self.seq, delay, replaced));
    }

    /// The timer `seq` fired: it is armed no more.
    pub(crate) fn fired(&mut self, seq: u64) {
        self.armed.retain(|a| a.1 != seq);
    }

    /// Keep `handle` as the handle of timer `seq`, or return it to cancel (disarmed meanwhile).
    fn armed_handle(&mut self, seq: u64, handle: Py<PyAny>) -> Option<Py<PyAny>> {
        match self.armed.iter_mut().find(|a| a.1 == seq) {
            Some(a) => {
                a.2 = Some(handle);
                None
            }
            None => Some(handle),
        }
    }

    /// Disarm all (the connection ended); the handles to cancel.
    pub(crate) fn stop(&mut self) -> Vec<Py<PyAny>> {
        self.armed.drain(..).filter_map(|a| a.2).collect()
    }
}

/// `loop.call_later(delay, Fire(seq))`, replacing `old`.
pub(super) fn arm(py: Python<'_>, conn: &Arc<Conn>, seq: u64, delay: Duration, old: Option<Py<PyAny>>) {
    if let Some(old) = old {
        let _ = old.bind(py).call_method0(pyo3::intern!(py, "cancel"));
    }
    let Some(el) = conn.event_loop(py) else { return };
    let fire = match Py::new(py, Fire { conn: Arc::downgrade(conn), seq }) {
        Ok(f) => f,
        Err(e) => return e.write_unraisable(py, None),
    };
    // an error: the loop is closed, nothing will run on it any more
    if let Ok(handle) = el.call_method1(pyo3::intern!(py, "call_later"), (delay.as_secs_f64(), fire)) {
        let stale = conn.lock(py).timer.armed_handle(seq, handle.unbind());
        if let Some(h) = stale {
            let _ = h.bind(py).call_method0(pyo3::intern!(py, "cancel"));
        }
    }
}

/// The timer's callback.
#[pyclass(module = "tether._native", frozen)]
pub(super) struct Fire {
    conn: std::sync::Weak<Conn>,
    seq: u64,
}

#[pymethods]
impl Fire {
    fn __call__(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            c.on_timer(py, self.seq);
        }
    }
}
