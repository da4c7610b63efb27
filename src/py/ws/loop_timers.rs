//! One alarm per event loop for the deadlines of all its connections, kept out of asyncio's heap.
//!
//! asyncio keeps its timers in a heap of `TimerHandle`s ordered by a `__lt__` written in Python: a
//! timer a connection keeps there makes every `call_later`, `asyncio.sleep` and `wait_for` of the
//! application compare more, in Python (a paced sender with one connection paid two such calls per
//! sleep; with a thousand connections, each with its heartbeat deadline, about twenty). So the
//! connections of a loop keep their deadlines here, in a native heap, behind one alarm: on Linux a
//! `timerfd` the loop watches with `add_reader` (asyncio's heap holds nothing of tether's), elsewhere,
//! or on a loop without `add_reader` (the Proactor), one `call_later` for the earliest deadline of all.
//!
//! Everything here runs on the loop's thread (a connection's effects do), so the sets live in a
//! thread-local registry, keyed by the loop they serve; a set holds its loop, so the key cannot be
//! reused while it exists. A set is torn down (reader removed, descriptor closed) when its last
//! deadline is gone, which is when the last connection on the loop ended.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::Conn;

/// A deadline's identity: unique in the process, so a stale one is never taken for a new one.
pub(super) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static SETS: RefCell<Vec<Rc<RefCell<Set>>>> = const { RefCell::new(Vec::new()) };
}

/// The deadlines of one loop's connections.
struct Set {
    event_loop: Py<PyAny>,
    /// Deadlines in time order, with the ones cancelled since (not in `live`) skipped when they surface.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, (Instant, Weak<Conn>)>,
    alarm: Alarm,
    /// When the alarm goes off, if it is set.
    armed: Option<Instant>,
}

enum Alarm {
    #[cfg(target_os = "linux")]
    Fd(std::os::fd::OwnedFd),
    /// `loop.call_later(.., Tick)`: its handle once armed.
    Call(Option<Py<PyAny>>),
}

/// What to ask Python once no set is borrowed (Python may re-enter through a callback).
enum Then {
    Nothing,
    /// Re-arm the `call_later` alarm: the handle to cancel, the delay of the new one (None: none).
    Call(Option<Py<PyAny>>, Option<Duration>),
    /// The set is empty: stop watching its descriptor (or cancel its call) and drop it.
    TearDown(Alarm),
}

fn key(event_loop: &Bound<'_, PyAny>) -> usize {
    event_loop.as_ptr() as usize
}

fn find(k: usize) -> Option<Rc<RefCell<Set>>> {
    SETS.with(|s| s.borrow().iter().find(|set| set.borrow().event_loop.as_ptr() as usize == k).cloned())
}

/// Make sure `conn` is woken (`Conn::on_timer(id)`) at `at`.
pub(super) fn schedule(py: Python<'_>, event_loop: &Bound<'_, PyAny>, id: u64, at: Instant, conn: Weak<Conn>) {
    let set = find(key(event_loop)).unwrap_or_else(|| Set::open(py, event_loop));
    let then = {
        let mut s = set.borrow_mut();
        s.live.insert(id, (at, conn));
        s.heap.push(Reverse((at, id)));
        s.rearm(Instant::now())
    };
    finish(py, &set, then);
}

/// Forget the deadline `id` (its connection re-armed, or ended: then the set goes if it was the last).
pub(super) fn cancel(py: Python<'_>, event_loop: &Bound<'_, PyAny>, id: u64) {
    let Some(set) = find(key(event_loop)) else { return };
    let then = {
        let mut s = set.borrow_mut();
        s.live.remove(&id);
        s.compact();
        if s.live.is_empty() {
            s.tear_down()
        } else {
            s.rearm(Instant::now())
        }
    };
    finish(py, &set, then);
}

impl Set {
    /// A set for `event_loop`, its alarm watched.
    fn open(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> Rc<RefCell<Set>> {
        forget_closed_loops(py);
        let alarm = Self::timerfd(py, event_loop).unwrap_or(Alarm::Call(None));
        let set = Rc::new(RefCell::new(Set {
            event_loop: event_loop.clone().unbind(),
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            alarm,
            armed: None,
        }));
        SETS.with(|s| s.borrow_mut().push(set.clone()));
        set
    }

    /// A `timerfd` the loop watches; None where there is none, or the loop cannot watch it.
    #[cfg(target_os = "linux")]
    fn timerfd(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> Option<Alarm> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain system call; the descriptor returned is owned from here on
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just created and is owned by nobody else
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tick = Py::new(py, Tick { key: key(event_loop) }).ok()?;
        // NotImplementedError on the Proactor; the descriptor is closed with `fd` then
        event_loop.call_method1(pyo3::intern!(py, "add_reader"), (fd.as_raw_fd(), tick)).ok()?;
        Some(Alarm::Fd(fd))
    }

    #[cfg(not(target_os = "linux"))]
    fn timerfd(_: Python<'_>, _: &Bound<'_, PyAny>) -> Option<Alarm> {
        None
    }

    /// The earliest live deadline, cancelled ones dropped from the top on the way.
    fn earliest(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.live.get(&id).is_some_and(|(a, _)| *a == at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Cancelled deadlines far in the future (heartbeats re-armed at every ping) would otherwise pile
    /// up in the heap until their time.
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.live.len() + 64 {
            self.heap = self.live.iter().map(|(id, (at, _))| Reverse((*at, *id))).collect();
        }
    }

    fn tear_down(&mut self) -> Then {
        Then::TearDown(std::mem::replace(&mut self.alarm, Alarm::Call(None)))
    }

    /// Set the alarm for the earliest deadline (none: an alarm still set goes off for nothing, once).
    fn rearm(&mut self, now: Instant) -> Then {
        let next = self.earliest();
        if next.is_none() || next == self.armed {
            return Then::Nothing;
        }
        self.armed = next;
        match &mut self.alarm {
            #[cfg(target_os = "linux")]
            Alarm::Fd(fd) => {
                use std::os::fd::AsRawFd;
                // a zero it_value disarms: a deadline already due fires in a nanosecond
                let d =
                    next.map_or(Duration::ZERO, |at| at.saturating_duration_since(now).max(Duration::from_nanos(1)));
                let spec = libc::itimerspec {
                    it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
                    it_value: libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ },
                };
                // SAFETY: `fd` is an open timerfd; `spec` is a valid itimerspec
                unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
                Then::Nothing
            }
            Alarm::Call(handle) => {
                // whole milliseconds, rounded up: a loop whose clock counts milliseconds (uvloop) must
                // not fire it before the deadline (a timer that fires early only re-arms)
                let delay = next.map(|at| {
                    Duration::from_millis((at.saturating_duration_since(now).as_micros() as u64).div_ceil(1000))
                });
                if let Some(d) = delay {
                    self.armed = Some(now + d);
                }
                Then::Call(handle.take(), delay)
            }
        }
    }

    /// The deadlines due at `now`, taken out, and the alarm set for the next.
    fn due(&mut self, now: Instant) -> (Vec<(u64, Weak<Conn>)>, Then) {
        #[cfg(target_os = "linux")]
        if let Alarm::Fd(fd) = &self.alarm {
            use std::os::fd::AsRawFd;
            let mut n = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `n`; EAGAIN (nothing expired) is fine to ignore
            unsafe { libc::read(fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
        }
        if let Alarm::Call(handle) = &mut self.alarm {
            // it fired: nothing to cancel
            *handle = None;
            self.armed = None;
        } else if self.armed.is_some_and(|a| a <= now) {
            self.armed = None;
        }
        let mut due = vec![];
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some((a, conn)) = self.live.remove(&id) {
                if a == at {
                    due.push((id, conn));
                } else {
                    self.live.insert(id, (a, conn));
                }
            }
        }
        (due, self.rearm(now))
    }
}

/// The sets of loops closed with connections still open (an `asyncio.run` that returned without closing
/// them): nothing runs on such a loop any more to end them, so their descriptors are closed here, when
/// the thread opens a set for another loop, rather than kept until the thread ends.
fn forget_closed_loops(py: Python<'_>) {
    let all: Vec<Rc<RefCell<Set>>> = SETS.with(|s| s.borrow().clone());
    for set in all {
        let el = set.borrow().event_loop.clone_ref(py);
        let closed = el.bind(py).call_method0(pyo3::intern!(py, "is_closed")).and_then(|c| c.is_truthy());
        if closed.unwrap_or(false) {
            SETS.with(|s| s.borrow_mut().retain(|x| !Rc::ptr_eq(x, &set)));
            // the alarm goes with the set: its descriptor is closed, its call was dropped with the loop
            drop(std::mem::replace(&mut set.borrow_mut().alarm, Alarm::Call(None)));
        }
    }
}

fn finish(py: Python<'_>, set: &Rc<RefCell<Set>>, then: Then) {
    match then {
        Then::Nothing => {}
        Then::Call(old, delay) => {
            let el = set.borrow().event_loop.clone_ref(py);
            let el = el.bind(py);
            if let Some(old) = old {
                let _ = old.bind(py).call_method0(pyo3::intern!(py, "cancel"));
            }
            let Some(delay) = delay else { return };
            let handle = Py::new(py, Tick { key: key(el) })
                .and_then(|t| el.call_method1(pyo3::intern!(py, "call_later"), (delay.as_secs_f64(), t)));
            // an error: the loop is closed, nothing will run on it any more
            if let Ok(h) = handle {
                let stale = match &mut set.borrow_mut().alarm {
                    Alarm::Call(slot) => slot.replace(h.unbind()),
                    #[allow(unreachable_patterns)]
                    _ => Some(h.unbind()),
                };
                if let Some(s) = stale {
                    let _ = s.bind(py).call_method0(pyo3::intern!(py, "cancel"));
                }
            }
        }
        Then::TearDown(alarm) => {
            SETS.with(|s| s.borrow_mut().retain(|x| !Rc::ptr_eq(x, set)));
            let el = set.borrow().event_loop.clone_ref(py);
            match alarm {
                #[cfg(target_os = "linux")]
                Alarm::Fd(fd) => {
                    use std::os::fd::AsRawFd;
                    // a closed loop refuses: its selector, and the descriptor's watch, are gone already
                    let _ = el.bind(py).call_method1(pyo3::intern!(py, "remove_reader"), (fd.as_raw_fd(),));
                    drop(fd);
                }
                Alarm::Call(Some(h)) => {
                    let _ = h.bind(py).call_method0(pyo3::intern!(py, "cancel"));
                }
                Alarm::Call(None) => {}
            }
        }
    }
}

/// The alarm went off: the connections whose deadline came are told, in deadline order.
#[pyclass(module = "tether._native", frozen)]
struct Tick {
    key: usize,
}

#[pymethods]
impl Tick {
    fn __call__(&self, py: Python<'_>) {
        let Some(set) = find(self.key) else { return };
        let (due, then) = set.borrow_mut().due(Instant::now());
        finish(py, &set, then);
        // each connection re-arms from here: a set still empty after is one no connection needs
        for (id, conn) in due {
            if let Some(c) = conn.upgrade() {
                c.on_timer(py, id);
            }
        }
        let then = {
            let mut s = set.borrow_mut();
            if s.live.is_empty() && SETS.with(|all| all.borrow().iter().any(|x| Rc::ptr_eq(x, &set))) {
                s.tear_down()
            } else {
                Then::Nothing
            }
        };
        finish(py, &set, then);
    }
}
