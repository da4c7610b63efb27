//! One `loop.call_later` timer per connection, armed for the earliest deadline of its cores (timers
//! as data: each core says when it next needs a look). Re-armed lazily: a later deadline leaves the
//! armed timer alone (it fires early, the cores are asked again and it is armed anew), so a stream of
//! sends that pushes the confirmation deadline on costs no timer handle each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::{Conn, Fx};

#[derive(Default)]
pub(crate) struct Timer {
    /// The armed timer: when it fires, its sequence number, and its handle once `call_later` returned.
    armed: Option<(Instant, u64)>,
    handle: Option<Py<PyAny>>,
    seq: u64,
}

impl Timer {
    /// Make sure the timer fires by `at` (None: nothing to wait for).
    pub(crate) fn want(&mut self, at: Option<Instant>, now: Instant, fx: &mut Fx) {
        let Some(at) = at else { return };
        if self.armed.is_some_and(|(when, _)| when <= at) {
            return;
        }
        self.seq += 1;
        self.armed = Some((at, self.seq));
        // whole milliseconds, rounded up: a loop whose clock counts milliseconds (uvloop) must not
        // fire it before `at`, and a timer that fires early only re-arms
        let micros = at.saturating_duration_since(now).as_micros() as u64;
        let delay = Duration::from_millis(micros.div_ceil(1000));
        fx.timer = Some((self.seq, delay, self.handle.take()));
    }

    /// The timer `seq` fired: whether it is the armed one (an older one was replaced).
    pub(crate) fn fired(&mut self, seq: u64) -> bool {
        if self.armed.is_some_and(|(_, s)| s == seq) {
            self.armed = None;
            self.handle = None;
            true
        } else {
            false
        }
    }

    fn armed_handle(&mut self, seq: u64, handle: Py<PyAny>) -> Option<Py<PyAny>> {
        if self.armed.is_some_and(|(_, s)| s == seq) {
            self.handle = Some(handle);
            None
        } else {
            // replaced or fired meanwhile
            Some(handle)
        }
    }

    /// Disarm (the connection ended); the handle to cancel.
    pub(crate) fn stop(&mut self) -> Option<Py<PyAny>> {
        self.armed = None;
        self.handle.take()
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
