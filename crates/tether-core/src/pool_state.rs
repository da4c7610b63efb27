//! The allocation rules of a prewarmed process pool as a pure state machine: no I/O, no clock, no tasks.
//!
//! Inputs are what happened and when (an acquire arrives or leaves, a spawn succeeds, fails or is
//! dropped, a process comes back), each with an `Instant` supplied by the driver; outputs are decisions:
//! which spawns to start now and whom each is for, what a waiting acquire gets, which processes to
//! dispose of, what to report, and `poll_timeout()`, the instant the next spawn may start (the respawn
//! backoff as data, not a sleep). `procpool`'s tokio task drives it, so every rule below lives here once
//! and is unit-tested on explicit instants:
//!
//! * Sizing: idle processes plus spawns in flight are kept at `target_idle` plus the acquires still
//!   waiting, with at most `max_concurrent_spawns` spawns at once (one while the pool is unhealthy:
//!   each would fail the same way, so more would only multiply the wasted setups). Idle processes never
//!   exceed that target.
//! * Who a spawn is for: a spawn started while acquires wait is made for the oldest one that has
//!   neither a spawn nor a process of its own, and an acquire arriving while a spawn for the idle
//!   target is in flight takes over the oldest such spawn. So a waiter's spawn goes ahead of
//!   idle-target spawns, and the process a spawn made for a waiter is kept for it.
//! * What counts as an attempt: the failure of the spawn made for (or taken over by) a waiter, unless a
//!   spawn for nobody is still in flight, which it then adopts, so peers still starting never burn an
//!   attempt. `acquire_attempts` failed attempts end the acquire (`Exhausted`, naming their causes).
//! * Health: `unhealthy_after` failures in a row make the pool unhealthy, a success healthy again.
//!   While it is unhealthy, the next failure, whoever the spawn was made for, ends every waiting acquire
//!   (`Unhealthy`, naming the failures since it began): the setup is known to fail, and each further
//!   spawn is a growing backoff away.
//! * Backoff: after a failure the next spawn waits the `respawn` delay (one sequence for the pool, so a
//!   crash loop is paced however many slots it has); a success resets the sequence.
//! * Dead on arrival: a process found dead before its first use, within `initialize_timeout` of the
//!   success of its spawn (a worker that crashes right after it reported ready), failed after all: the
//!   failures in a row and the backoff that success reset are restored, and its death counts as one
//!   more failure, an attempt of the acquire that found it. A process lent alive ends that doubt, and
//!   the success of a spawn begun before that death changes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::backoff::{Backoff, Delays, Jitter};
use crate::wording::count;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub num_idle: usize,
    pub max_concurrent_spawns: usize,
    pub initialize_timeout: Duration,
    pub acquire_attempts: u32,
    pub respawn: Backoff,
    /// Consecutive spawn failures after which `healthy` turns false.
    pub unhealthy_after: u32,
    /// Python logger the pool's records go to (a key registered by the bindings); None: the module's
    /// `tether.procpool`. Every record carries it as the `logger` field.
    pub logger: Option<Arc<str>>,
    /// The `name` attribute of the pool's metrics.
    pub name: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            num_idle: 1,
            max_concurrent_spawns: 1,
            initialize_timeout: Duration::from_secs(10),
            acquire_attempts: 3,
            // equal jitter: a crash loop never respawns at once, yet a fleet's pools do not align
            respawn: Backoff {
                initial: 0.1,
                factor: 2.0,
                max_delay: 10.0,
                jitter: Jitter::Equal,
                ..Default::default()
            },
            unhealthy_after: 2,
            logger: None,
            name: "procpool".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AcquireError {
    /// Every acquire attempt ended with all spawns failed.
    Exhausted {
        attempts: u32,
        failures: Vec<String>,
    },
    /// A spawn failed while the pool was unhealthy (`in_row` failures since its last success):
    /// `failures` are the ones of that run since the acquire began, the last one included.
    Unhealthy {
        attempts: u32,
        in_row: u32,
        failures: Vec<String>,
    },
    TimedOut {
        timeout: Duration,
        failures: Vec<String>,
    },
    /// `warm` stopped: this many spawns failed in a row since it began.
    WarmFailed {
        wanted: usize,
        idle: usize,
        attempts: u32,
        failures: Vec<String>,
    },
    Closed,
}

impl AcquireError {
    pub fn message(&self) -> String {
        /// Identical causes (pids aside) are grouped: "3x <cause>".
        fn causes(f: &[String]) -> String {
            if f.is_empty() {
                return "no spawn failed; none finished in time".into();
            }
            fn norm(c: &str) -> String {
                let mut out = String::with_capacity(c.len());
                let mut it = c.split("(pid ").peekable();
                if let Some(first) = it.next() {
                    out.push_str(first);
                }
                for rest in it {
                    out.push_str("(pid N");
                    out.push_str(rest.trim_start_matches(|ch: char| ch.is_ascii_digit()));
                }
                out
            }
            let mut groups: Vec<(String, usize, &String)> = Vec::new();
            for c in f {
                let n = norm(c);
                match groups.iter_mut().find(|(k, _, _)| *k == n) {
                    Some(g) => g.1 += 1,
                    None => groups.push((n, 1, c)),
                }
            }
            groups
                .iter()
                .map(|(_, n, c)| if *n > 1 { format!("{n}x {c}") } else { (*c).clone() })
                .collect::<Vec<_>>()
                .join("; ")
        }
        match self {
            AcquireError::Exhausted { attempts, failures } => format!(
                "no process after {}: every spawn failed: {}",
                count(*attempts, "acquire attempt"),
                causes(failures)
            ),
            AcquireError::Unhealthy { in_row, failures, .. } => format!(
                "no process: the pool is unhealthy ({} in a row, the last while this acquire waited): {}",
                count(*in_row, "spawn failure"),
                causes(failures)
            ),
            AcquireError::TimedOut { timeout, failures } => {
                format!("no process within {:.1}s: {}", timeout.as_secs_f64(), causes(failures))
            }
            AcquireError::WarmFailed { wanted, idle, attempts, failures } => format!(
                "warm-up stopped at {idle} of {} after {} in a row: {}",
                count(*wanted, "idle process"),
                count(*attempts, "spawn failure"),
                causes(failures)
            ),
            AcquireError::Closed => "the pool is closed".into(),
        }
    }
}

/// Failure causes kept for timeouts and warm-up errors.
const RECENT_FAILURES: usize = 64;

pub type SpawnId = u64;
pub type WaiterId = u64;

/// A spawn the driver must start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub id: SpawnId,
    /// The acquire it is made for; None: for the idle target.
    pub waiter: Option<WaiterId>,
}

/// What a waiting acquire gets now.
#[derive(Debug, PartialEq)]
pub enum Turn<P> {
    /// A process kept for it, or an idle one (the driver checks it is alive before lending it).
    Take(P),
    Failed(AcquireError),
    /// Nothing yet: wait for the next change. `failed_attempts`: its attempts that failed so far.
    Wait {
        failed_attempts: usize,
    },
}

/// A spawn succeeded.
#[derive(Debug, PartialEq)]
pub struct Succeeded<P> {
    /// Since the spawn started.
    pub took: Duration,
    /// The pool was unhealthy and is healthy again.
    pub recovered: bool,
    /// A process nobody wants (the pool is closed, or its acquirer left and enough are idle), with why:
    /// dispose of it.
    pub surplus: Option<(P, &'static str)>,
}

/// A spawn failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// Failures in a row, this one included.
    pub consecutive: u32,
    /// The backoff before the next spawn.
    pub retry_in: Duration,
    /// This failure made the pool unhealthy.
    pub turned_unhealthy: bool,
}

/// How a warm-up stands.
#[derive(Debug, PartialEq)]
pub enum Warmth {
    Warm,
    Failed(AcquireError),
    Wait,
}

/// One acquire in progress. The spawn in flight made for (or taken over by) it, if any, is the one whose
/// `Spawn::owner` it is: the link is kept on that side only.
struct Waiter<P> {
    id: WaiterId,
    /// The process that spawn produced, kept for it.
    ready: Option<P>,
    /// Causes of its failed spawns: one per failed attempt.
    failures: Vec<String>,
    /// `failure_total` when it began: the failures it may name are the later ones.
    since: u64,
    /// Set when a spawn failed while the pool was already unhealthy: the acquire ends with it.
    given_up: Option<AcquireError>,
}

struct Spawn {
    /// The waiter it is for; None: for the idle target, or its waiter left.
    owner: Option<WaiterId>,
    started: Instant,
}

/// A pool's allocation state. `P` is the driver's process handle; the machine only stores and moves it.
pub struct PoolState<P> {
    max_concurrent_spawns: usize,
    acquire_attempts: u32,
    unhealthy_after: u32,
    respawn: Backoff,
    target_idle: usize,
    idle: VecDeque<P>,
    /// Spawns in flight by id; ids grow, so the first entry is the oldest.
    in_flight: BTreeMap<SpawnId, Spawn>,
    waiters: Vec<Waiter<P>>,
    next_waiter: WaiterId,
    next_spawn: SpawnId,
    closed: bool,
    consecutive_failures: u32,
    /// The most recent failure causes; `failure_total` counts them all.
    failures: VecDeque<String>,
    failure_total: u64,
    next_spawn_at: Option<Instant>,
    delays: Delays,
    spawns: u64,
    initialize_timeout: Duration,
    /// What the last success after failures reset (when, the failures in a row, the backoff), until a
    /// process is lent alive: restored if one it made turns out dead on arrival.
    reset: Option<(Instant, u32, Delays)>,
    /// When a process was last found dead before its first use.
    died_unused_at: Option<Instant>,
}

impl<P> PoolState<P> {
    pub fn new(cfg: &PoolConfig) -> Self {
        PoolState {
            max_concurrent_spawns: cfg.max_concurrent_spawns,
            acquire_attempts: cfg.acquire_attempts,
            unhealthy_after: cfg.unhealthy_after,
            respawn: cfg.respawn.clone(),
            target_idle: cfg.num_idle,
            idle: VecDeque::new(),
            in_flight: BTreeMap::new(),
            waiters: Vec::new(),
            next_waiter: 0,
            next_spawn: 0,
            closed: false,
            consecutive_failures: 0,
            failures: VecDeque::new(),
            failure_total: 0,
            next_spawn_at: None,
            delays: cfg.respawn.delays_unbounded(),
            spawns: 0,
            initialize_timeout: cfg.initialize_timeout,
            reset: None,
            died_unused_at: None,
        }
    }

    /// Healthy until `unhealthy_after` spawns failed in a row (0 counts as 1: a pool starts healthy); a
    /// success makes it healthy again.
    pub fn healthy(&self) -> bool {
        self.consecutive_failures < self.unhealthy_after.max(1)
    }
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    /// Spawns started so far.
    pub fn spawns(&self) -> u64 {
        self.spawns
    }
    /// Acquires in progress.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
    pub fn target_idle(&self) -> usize {
        self.target_idle
    }
    /// Spawn failures so far: an acquire or warm-up notes it when it begins (see `failures_since`).
    pub fn failure_total(&self) -> u64 {
        self.failure_total
    }

    /// The failures recorded since `failure_total` was `total` (at most the last `at_most` of those
    /// kept), oldest first.
    pub fn failures_since(&self, total: u64, at_most: usize) -> Vec<String> {
        let n = ((self.failure_total - total) as usize).min(self.failures.len()).min(at_most);
        self.failures.iter().skip(self.failures.len() - n).cloned().collect()
    }

    /// Waiters that still need a process.
    fn wanting(&self) -> usize {
        self.waiters.iter().filter(|w| w.ready.is_none()).count()
    }
    /// Spawns the sizing rule asks for beyond the idle processes and those in flight.
    fn want(&self) -> usize {
        (self.target_idle + self.wanting()).saturating_sub(self.idle.len() + self.in_flight.len())
    }
    /// Spawns that may start besides those in flight.
    fn room(&self) -> usize {
        let slots = if self.healthy() { self.max_concurrent_spawns } else { 1 };
        slots.saturating_sub(self.in_flight.len())
    }
    /// Whether a process nobody is waiting for is kept idle.
    fn room_for_idle(&self) -> bool {
        !self.closed && self.idle.len() < self.target_idle + self.wanting()
    }
    fn waiter(&mut self, id: WaiterId) -> Option<&mut Waiter<P>> {
        self.waiters.iter_mut().find(|w| w.id == id)
    }
    /// Whether a spawn in flight is made for (or was taken over by) waiter `id`.
    fn has_spawn(&self, id: WaiterId) -> bool {
        self.in_flight.values().any(|s| s.owner == Some(id))
    }
    /// Give the oldest spawn in flight for nobody to waiter `id`; whether there was one.
    fn adopt_orphan(&mut self, id: WaiterId) -> bool {
        self.in_flight.values_mut().find(|s| s.owner.is_none()).map(|s| s.owner = Some(id)).is_some()
    }

    /// The spawns to start at `now`, oldest waiter first, then for the idle target.
    pub fn poll_spawns(&mut self, now: Instant) -> Vec<Start> {
        if self.closed || self.next_spawn_at.is_some_and(|at| at > now) {
            return Vec::new();
        }
        (0..self.want().min(self.room()))
            .map(|_| {
                let id = self.next_spawn;
                self.next_spawn += 1;
                let waiter = self.waiters.iter().find(|w| w.ready.is_none() && !self.has_spawn(w.id)).map(|w| w.id);
                self.in_flight.insert(id, Spawn { owner: waiter, started: now });
                self.spawns += 1;
                Start { id, waiter }
            })
            .collect()
    }

    /// When `poll_spawns` will next start a spawn without being told anything new: the end of the
    /// respawn backoff, if spawns are wanted and a slot is free. None: only an input can change that.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_spawn_at.filter(|_| !self.closed && self.want() > 0 && self.room() > 0)
    }

    /// An acquire begins. It takes over the oldest spawn in flight for the idle target, if any.
    pub fn add_waiter(&mut self) -> WaiterId {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.adopt_orphan(id);
        let since = self.failure_total;
        self.waiters.push(Waiter { id, ready: None, failures: Vec::new(), since, given_up: None });
        id
    }

    /// An acquire ended (served, failed, timed out or cancelled). Its spawn in flight is for the idle
    /// target from now on; a process kept for it goes idle if wanted, else it is returned to dispose of.
    pub fn remove_waiter(&mut self, id: WaiterId) -> Option<P> {
        let i = self.waiters.iter().position(|w| w.id == id)?;
        let w = self.waiters.remove(i);
        for s in self.in_flight.values_mut().filter(|s| s.owner == Some(id)) {
            s.owner = None;
        }
        match w.ready {
            Some(p) if self.room_for_idle() => {
                self.idle.push_back(p);
                None
            }
            other => other,
        }
    }

    /// What acquire `id` gets now: its own process, its failure, or an idle process. An acquire that is
    /// not (or no longer) registered gets `Closed`: nothing is kept for it.
    pub fn poll_waiter(&mut self, id: WaiterId) -> Turn<P> {
        if self.closed {
            return Turn::Failed(AcquireError::Closed);
        }
        let attempts = self.acquire_attempts as usize;
        let Some(w) = self.waiter(id) else { return Turn::Failed(AcquireError::Closed) };
        if let Some(p) = w.ready.take() {
            return Turn::Take(p);
        }
        if w.failures.len() >= attempts {
            let failures = std::mem::take(&mut w.failures);
            return Turn::Failed(AcquireError::Exhausted { attempts: failures.len() as u32, failures });
        }
        if let Some(e) = w.given_up.take() {
            return Turn::Failed(e);
        }
        let failed_attempts = w.failures.len();
        match self.idle.pop_front() {
            Some(p) => Turn::Take(p),
            None => Turn::Wait { failed_attempts },
        }
    }

    /// An idle process for a caller that does not wait, if there is one.
    pub fn take_idle(&mut self) -> Option<P> {
        if self.closed {
            return None;
        }
        self.idle.pop_front()
    }

    /// A live process came back: kept idle if the pool wants it, else returned to dispose of.
    pub fn give_back(&mut self, p: P) -> Option<P> {
        if self.room_for_idle() {
            self.idle.push_back(p);
            None
        } else {
            Some(p)
        }
    }

    /// A new idle target: the idle processes beyond it are returned to dispose of.
    pub fn set_target_idle(&mut self, n: usize) -> Vec<P> {
        self.target_idle = n;
        let keep = n.min(self.idle.len());
        self.idle.drain(keep..).collect()
    }

    /// A warm-up begins: the idle target is raised to `n` (default: the target itself); returns the
    /// number of idle processes it waits for.
    pub fn warm(&mut self, n: Option<usize>) -> usize {
        let wanted = n.unwrap_or(self.target_idle);
        self.target_idle = self.target_idle.max(wanted);
        wanted
    }

    /// A warm-up for `wanted` idle processes, begun when `failure_total` was `since`: done once they are
    /// idle; failed once `acquire_attempts` spawns failed in a row since it began.
    pub fn warmth(&self, wanted: usize, since: u64) -> Warmth {
        if self.closed {
            return Warmth::Failed(AcquireError::Closed);
        }
        if self.idle.len() >= wanted {
            return Warmth::Warm;
        }
        let in_row = (self.consecutive_failures as u64).min(self.failure_total - since) as u32;
        if in_row >= self.acquire_attempts {
            return Warmth::Failed(AcquireError::WarmFailed {
                wanted,
                idle: self.idle.len(),
                attempts: in_row,
                failures: self.failures_since(self.failure_total - in_row as u64, in_row as usize),
            });
        }
        Warmth::Wait
    }

    /// Close: returns every process the pool holds (idle, and kept for waiters). Waiters then fail and
    /// no spawn starts; spawns still in flight settle as usual (their processes are surplus).
    pub fn close(&mut self) -> Vec<P> {
        self.closed = true;
        let mut all: Vec<P> = self.idle.drain(..).collect();
        all.extend(self.waiters.iter_mut().filter_map(|w| w.ready.take()));
        all
    }

    /// Spawn `id` is no longer in flight: returns when it started and the waiter (still waiting) it
    /// was for.
    fn settle(&mut self, id: SpawnId) -> Option<(Instant, Option<WaiterId>)> {
        let spawn = self.in_flight.remove(&id)?;
        // an owner is a waiter still waiting: one that leaves disowns its spawn (`remove_waiter`)
        Some((spawn.started, spawn.owner))
    }

    /// Spawn `id` was dropped without an outcome (the pool closed under it): it only stops counting.
    pub fn spawn_dropped(&mut self, id: SpawnId) {
        self.settle(id);
    }

    /// Spawn `id` produced `p` at `now`: it goes to the waiter it was made for, else idle if wanted.
    pub fn spawn_succeeded(&mut self, id: SpawnId, p: P, now: Instant) -> Succeeded<P> {
        let (started, owner) = self.settle(id).unwrap_or((now, None));
        // begun before a process was found dead on arrival, it says nothing that death did not (it
        // started at the success that death belied): the backoff and the failures in a row stand
        let counts = !self.died_unused_at.is_some_and(|at| started < at);
        let recovered = counts && !self.healthy();
        if counts {
            if self.consecutive_failures > 0 {
                let fresh = self.respawn.delays_unbounded();
                self.reset = Some((now, self.consecutive_failures, std::mem::replace(&mut self.delays, fresh)));
            }
            self.consecutive_failures = 0;
            self.next_spawn_at = None;
        }
        let surplus = if self.closed {
            Some((p, "spawned after close"))
        } else if let Some(i) = owner.and_then(|o| self.waiters.iter().position(|w| w.id == o)) {
            self.waiters[i].ready = Some(p);
            None
        } else if self.room_for_idle() {
            self.idle.push_back(p);
            None
        } else {
            Some((p, "not needed: its acquirer left and the pool has enough idle processes"))
        };
        Succeeded { took: now.saturating_duration_since(started), recovered, surplus }
    }

    /// A process was lent alive: the successes so far stand.
    pub fn proven(&mut self) {
        self.reset = None;
    }

    /// A process was found dead at `now` before its first use, by acquire `waiter` (None: a caller
    /// that does not wait). Within `initialize_timeout` of the last success that reset a run of
    /// failures, that run and its backoff are restored first: a crash loop whose workers die right after
    /// reporting ready is paced, and turns the pool unhealthy, like one whose spawns fail.
    pub fn died_unused(&mut self, waiter: Option<WaiterId>, cause: String, now: Instant) -> Failed {
        if let Some((at, in_row, delays)) = self.reset.take() {
            if now.saturating_duration_since(at) <= self.initialize_timeout {
                self.consecutive_failures = in_row;
                self.delays = delays;
            }
        }
        self.died_unused_at = Some(now);
        let owner = waiter.filter(|w| self.waiters.iter().any(|x| x.id == *w));
        self.failure(owner, cause, now)
    }

    /// Spawn `id` failed at `now` with `cause`.
    pub fn spawn_failed(&mut self, id: SpawnId, cause: String, now: Instant) -> Failed {
        let owner = self.settle(id).and_then(|(_, o)| o);
        self.failure(owner, cause, now)
    }

    /// A failure at `now`: an attempt of waiter `owner` (if still waiting), one more in a row.
    fn failure(&mut self, owner: Option<WaiterId>, cause: String, now: Instant) -> Failed {
        let was_healthy = self.healthy();
        self.consecutive_failures += 1;
        self.failure_total += 1;
        self.failures.push_back(cause.clone());
        if self.failures.len() > RECENT_FAILURES {
            self.failures.pop_front();
        }
        if let Some(o) = owner {
            // a spawn in flight that nobody owns serves this waiter before it loses an attempt
            if !self.adopt_orphan(o) {
                if let Some(w) = self.waiter(o) {
                    w.failures.push(cause);
                }
            }
        }
        let retry_in = self.delays.next().unwrap_or(Duration::from_secs_f64(self.respawn.max_delay));
        self.next_spawn_at = Some(now + retry_in);
        let turned_unhealthy = was_healthy && !self.healthy();
        if !was_healthy {
            // The pool already knew setup keeps failing and one more spawn failed, whoever it was made
            // for: no acquire waits for spawns of its own (each a backoff away) to learn it.
            let (in_row, total) = (self.consecutive_failures, self.failure_total);
            let ended: Vec<(WaiterId, u64)> = self
                .waiters
                .iter()
                .filter(|w| w.ready.is_none() && w.given_up.is_none())
                .map(|w| (w.id, (in_row as u64).min(total - w.since)))
                .collect();
            for (id, n) in ended {
                let failures = self.failures_since(total - n, n as usize);
                if let Some(w) = self.waiter(id) {
                    w.given_up = Some(AcquireError::Unhealthy { attempts: n as u32, in_row, failures });
                }
            }
        }
        Failed { consecutive: self.consecutive_failures, retry_in, turned_unhealthy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;

    fn cfg(num_idle: usize, slots: usize, attempts: u32) -> PoolConfig {
        PoolConfig {
            num_idle,
            max_concurrent_spawns: slots,
            acquire_attempts: attempts,
            respawn: Backoff { initial: 0.1, factor: 2.0, max_delay: 1.0, jitter: Jitter::None, ..Default::default() },
            ..PoolConfig::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ids(starts: &[Start]) -> Vec<(SpawnId, Option<WaiterId>)> {
        starts.iter().map(|s| (s.id, s.waiter)).collect()
    }

    fn waiting<P>(t: Turn<P>) -> usize {
        match t {
            Turn::Wait { failed_attempts } => failed_attempts,
            Turn::Take(_) => panic!("expected to wait, got a process"),
            Turn::Failed(e) => panic!("expected to wait, got {e:?}"),
        }
    }

    fn failed<P>(t: Turn<P>) -> AcquireError {
        match t {
            Turn::Failed(e) => e,
            Turn::Take(_) => panic!("expected a failure, got a process"),
            Turn::Wait { .. } => panic!("expected a failure, got a wait"),
        }
    }

    #[test]
    fn spawns_fill_the_idle_target_within_the_slots() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(3, 2, 3));
        assert_eq!(ids(&st.poll_spawns(t0)), [(0, None), (1, None)]);
        assert!(st.poll_spawns(t0).is_empty(), "both slots busy");
        assert_eq!(st.poll_timeout(), None, "nothing to wait for but a spawn's outcome");
        let s = st.spawn_succeeded(0, 10, t0 + ms(300));
        assert_eq!(s, Succeeded { took: ms(300), recovered: false, surplus: None });
        assert_eq!(ids(&st.poll_spawns(t0 + ms(300))), [(2, None)]);
        st.spawn_succeeded(1, 11, t0 + ms(400));
        st.spawn_succeeded(2, 12, t0 + ms(500));
        assert_eq!((st.idle(), st.in_flight(), st.spawns()), (3, 0, 3));
        assert!(st.poll_spawns(t0 + ms(500)).is_empty(), "the target is met");
    }

    #[test]
    fn a_waiter_takes_an_idle_process_and_the_pool_replaces_it() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 1, 3));
        st.poll_spawns(t0);
        st.spawn_succeeded(0, 7, t0);
        let w = st.add_waiter();
        assert_eq!(st.poll_waiter(w), Turn::Take(7));
        st.remove_waiter(w);
        assert_eq!(ids(&st.poll_spawns(t0)), [(1, None)]);
    }

    #[test]
    fn a_waiters_spawn_goes_ahead_of_idle_target_spawns() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(2, 1, 3));
        // one slot, busy with a spawn for the idle target: the waiter takes that spawn over
        assert_eq!(ids(&st.poll_spawns(t0)), [(0, None)]);
        let w = st.add_waiter();
        let late = st.add_waiter();
        // its process goes to that waiter, the next spawn is for the second waiter, then the idle target
        let s = st.spawn_succeeded(0, 100, t0 + ms(100));
        assert_eq!(s.surplus, None);
        assert_eq!(ids(&st.poll_spawns(t0 + ms(100))), [(1, Some(late))]);
        assert_eq!(st.poll_waiter(w), Turn::Take(100));
        st.remove_waiter(w);
        st.spawn_succeeded(1, 101, t0 + ms(200));
        assert_eq!(st.poll_waiter(late), Turn::Take(101));
        st.remove_waiter(late);
        assert_eq!(ids(&st.poll_spawns(t0 + ms(200))), [(2, None)]);
    }

    #[test]
    fn a_taken_over_spawn_that_fails_is_the_waiters_attempt() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(2, 1, 1));
        st.poll_spawns(t0);
        let w = st.add_waiter();
        st.spawn_failed(0, "boom".into(), t0 + ms(100));
        assert_eq!(failed(st.poll_waiter(w)), AcquireError::Exhausted { attempts: 1, failures: vec!["boom".into()] });
        assert!(st.healthy(), "one failure");
    }

    #[test]
    fn a_failure_costs_an_attempt_only_of_its_own_waiter_and_peers_in_flight_serve_first() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 2, 1));
        let w = st.add_waiter();
        assert_eq!(ids(&st.poll_spawns(t0)), [(0, Some(w)), (1, None)]);
        // its own spawn fails while one for nobody is in flight: it adopts that one, no attempt lost
        st.spawn_failed(0, "boom".into(), t0 + ms(10));
        assert_eq!(waiting(st.poll_waiter(w)), 0);
        st.spawn_succeeded(1, 5, t0 + ms(2000));
        assert_eq!(st.poll_waiter(w), Turn::Take(5));

        // two waiters, one slot, every other spawn failing: each failure is its own waiter's only
        let mut st = PoolState::<u32>::new(&cfg(0, 1, 2));
        let (a, b) = (st.add_waiter(), st.add_waiter());
        let mut t = t0;
        assert_eq!(ids(&st.poll_spawns(t)), [(0, Some(a))]);
        t += ms(10);
        st.spawn_failed(0, "a1".into(), t);
        assert_eq!((waiting(st.poll_waiter(a)), waiting(st.poll_waiter(b))), (1, 0));
        t = st.poll_timeout().unwrap();
        assert_eq!(ids(&st.poll_spawns(t)), [(1, Some(a))], "the oldest waiter first");
        st.spawn_succeeded(1, 1, t + ms(10));
        assert_eq!(st.poll_waiter(a), Turn::Take(1));
        st.remove_waiter(a);
        assert_eq!(ids(&st.poll_spawns(t + ms(10))), [(2, Some(b))]);
        assert!(st.healthy());
    }

    #[test]
    fn attempts_run_out_with_the_causes_of_the_waiters_own_spawns() {
        let t0 = Instant::now();
        // the attempt rule alone: the pool stays healthy throughout
        let mut st = PoolState::<u32>::new(&PoolConfig { unhealthy_after: 5, ..cfg(0, 1, 2) });
        let w = st.add_waiter();
        let mut t = t0;
        for cause in ["e1", "e2"] {
            let s = st.poll_spawns(t);
            assert_eq!(s.len(), 1);
            st.spawn_failed(s[0].id, cause.into(), t);
            t = st.poll_timeout().unwrap_or(t);
        }
        assert_eq!(
            failed(st.poll_waiter(w)),
            AcquireError::Exhausted { attempts: 2, failures: vec!["e1".into(), "e2".into()] }
        );
    }

    #[test]
    fn an_unhealthy_pool_ends_every_waiter_at_the_next_failure_whoever_it_was_for() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(2, 2, 3));
        st.poll_spawns(t0);
        let f = st.spawn_failed(0, "prewarm failed".into(), t0 + ms(1000));
        assert_eq!(f, Failed { consecutive: 1, retry_in: ms(100), turned_unhealthy: false });
        let f = st.spawn_failed(1, "prewarm failed".into(), t0 + ms(1000));
        assert_eq!(f, Failed { consecutive: 2, retry_in: ms(200), turned_unhealthy: true });
        assert!(!st.healthy());
        // unhealthy: one spawn at a time, after the backoff
        assert_eq!(st.poll_timeout(), Some(t0 + ms(1200)));
        assert!(st.poll_spawns(t0 + ms(1100)).is_empty());
        assert_eq!(ids(&st.poll_spawns(t0 + ms(1200))), [(2, None)]);
        // two acquires arrive: the first takes that spawn over; none of them gets a spawn of its own
        let (a, b) = (st.add_waiter(), st.add_waiter());
        assert!(st.poll_spawns(t0 + ms(1300)).is_empty(), "one at a time while unhealthy");
        assert_eq!(waiting(st.poll_waiter(b)), 0);
        st.spawn_failed(2, "prewarm failed".into(), t0 + ms(2200));
        let e = AcquireError::Unhealthy { attempts: 1, in_row: 3, failures: vec!["prewarm failed".into()] };
        assert_eq!(failed(st.poll_waiter(a)), e);
        assert_eq!(failed(st.poll_waiter(b)), e);
    }

    #[test]
    fn the_failure_that_makes_the_pool_unhealthy_is_still_an_attempt() {
        // an acquire that began while healthy keeps its attempts until the pool is unhealthy
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(0, 1, 3));
        let w = st.add_waiter();
        let mut t = t0;
        let mut causes = vec![];
        loop {
            let s = st.poll_spawns(t);
            let cause = format!("e{}", s[0].id);
            causes.push(cause.clone());
            st.spawn_failed(s[0].id, cause, t);
            match st.poll_waiter(w) {
                Turn::Wait { .. } => t = st.poll_timeout().unwrap(),
                Turn::Failed(e) => {
                    // healthy, then the flip (attempt 2), then the failure while unhealthy (attempt 3)
                    assert_eq!(e, AcquireError::Exhausted { attempts: 3, failures: causes });
                    break;
                }
                Turn::Take(_) => unreachable!(),
            }
        }
    }

    #[test]
    fn a_success_makes_the_pool_healthy_and_resets_the_backoff() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 4, 3));
        let mut t = t0;
        for _ in 0..3 {
            let s = st.poll_spawns(t);
            st.spawn_failed(s[0].id, "x".into(), t);
            t = st.poll_timeout().unwrap();
        }
        assert_eq!(t, t0 + ms(100 + 200 + 400));
        assert!(!st.healthy());
        let s = st.poll_spawns(t);
        let ok = st.spawn_succeeded(s[0].id, 1, t + ms(50));
        assert!(ok.recovered && st.healthy());
        st.set_target_idle(4);
        assert_eq!(st.poll_spawns(t + ms(50)).len(), 3, "all slots again");
        let f = st.spawn_failed(4, "y".into(), t + ms(60));
        assert_eq!((f.consecutive, f.retry_in), (1, ms(100)), "the backoff starts over");
    }

    #[test]
    fn the_backoff_is_one_sequence_for_the_pool_and_caps() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 1, 3));
        let mut t = t0;
        let mut gaps = vec![];
        for _ in 0..7 {
            let s = st.poll_spawns(t);
            assert_eq!(s.len(), 1, "at {:?}", t - t0);
            st.spawn_failed(s[0].id, "exit 1".into(), t);
            let next = st.poll_timeout().unwrap();
            assert!(st.poll_spawns(next - ms(1)).is_empty(), "nothing starts before the backoff ends");
            gaps.push((next - t).as_millis());
            t = next;
        }
        assert_eq!(gaps, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(st.spawns(), 7);
    }

    #[test]
    fn a_waiter_that_leaves_hands_its_spawn_and_process_back() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(0, 2, 3));
        let (a, b) = (st.add_waiter(), st.add_waiter());
        assert_eq!(ids(&st.poll_spawns(t0)), [(0, Some(a)), (1, Some(b))]);
        // a leaves with its spawn in flight: its process goes idle while b still waits, and b takes it
        assert_eq!(st.remove_waiter(a), None);
        assert_eq!(st.spawn_succeeded(0, 9, t0 + ms(10)).surplus, None);
        assert_eq!(st.poll_waiter(b), Turn::Take(9));
        assert_eq!(st.remove_waiter(b), None);
        // nobody waits and num_idle=0: b's own spawn, still in flight when it left, is surplus
        assert_eq!(st.spawn_succeeded(1, 10, t0 + ms(20)).surplus.map(|(p, _)| p), Some(10));
        // a process kept for a waiter that leaves before taking it is returned to dispose of
        let c = st.add_waiter();
        assert_eq!(ids(&st.poll_spawns(t0 + ms(20))), [(2, Some(c))]);
        st.spawn_succeeded(2, 11, t0 + ms(30));
        assert_eq!(st.remove_waiter(c), Some(11));
        assert_eq!((st.idle(), st.waiting()), (0, 0));
    }

    #[test]
    fn idle_never_exceeds_the_target_plus_waiters() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 4, 3));
        let ws: Vec<_> = (0..3).map(|_| st.add_waiter()).collect();
        assert_eq!(st.poll_spawns(t0).len(), 4);
        for w in &ws {
            st.remove_waiter(*w);
        }
        let surplus: Vec<_> = (0..4).filter_map(|i| st.spawn_succeeded(i, i as u32, t0).surplus).collect();
        assert_eq!((st.idle(), surplus.len()), (1, 3));
        assert_eq!(st.give_back(99), Some(99), "a released process beyond the target is disposed of");
        assert_eq!(st.set_target_idle(0), vec![0]);
    }

    #[test]
    fn warm_waits_for_n_idle_or_fails_after_attempts_failures_in_a_row() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(0, 1, 2));
        let wanted = st.warm(Some(1));
        assert_eq!((wanted, st.target_idle()), (1, 1));
        let since = st.failure_total();
        assert_eq!(st.warmth(wanted, since), Warmth::Wait);
        st.poll_spawns(t0);
        st.spawn_failed(0, "a".into(), t0);
        assert_eq!(st.warmth(wanted, since), Warmth::Wait);
        let t = st.poll_timeout().unwrap();
        st.poll_spawns(t);
        st.spawn_failed(1, "b".into(), t);
        let Warmth::Failed(e) = st.warmth(wanted, since) else { panic!() };
        assert_eq!(
            e,
            AcquireError::WarmFailed { wanted: 1, idle: 0, attempts: 2, failures: vec!["a".into(), "b".into()] }
        );
        // a later warm-up counts only its own failures
        assert_eq!(st.warmth(wanted, st.failure_total()), Warmth::Wait);
        let t = st.poll_timeout().unwrap();
        st.poll_spawns(t);
        st.spawn_succeeded(2, 1, t);
        assert_eq!(st.warmth(wanted, since), Warmth::Warm);
    }

    #[test]
    fn close_returns_what_the_pool_holds_and_fails_waiters() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 2, 3));
        let w = st.add_waiter();
        st.poll_spawns(t0);
        st.spawn_succeeded(0, 1, t0);
        st.spawn_succeeded(1, 2, t0);
        let mut all = st.close();
        all.sort();
        assert_eq!(all, [1, 2]);
        assert_eq!(failed(st.poll_waiter(w)), AcquireError::Closed);
        assert!(st.poll_spawns(t0).is_empty() && st.poll_timeout().is_none());
        assert_eq!(st.take_idle(), None);
    }

    #[test]
    fn a_dropped_spawn_only_stops_counting() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(0, 1, 3));
        let w = st.add_waiter();
        st.poll_spawns(t0);
        st.spawn_dropped(0);
        assert_eq!((st.in_flight(), st.failure_total()), (0, 0));
        assert_eq!(waiting(st.poll_waiter(w)), 0);
        assert_eq!(ids(&st.poll_spawns(t0)), [(1, Some(w))], "the waiter gets a new spawn");
    }

    #[test]
    fn failures_since_names_only_the_later_ones_and_keeps_the_last_64() {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 1, 3));
        for i in 0..70 {
            let id = st.poll_spawns(t0 + Duration::from_secs(i))[0].id;
            st.spawn_failed(id, format!("e{i}"), t0 + Duration::from_secs(i));
        }
        assert_eq!(st.failures_since(68, 5), ["e68", "e69"]);
        assert_eq!(st.failures_since(0, 100).len(), 64);
        assert_eq!(st.failures_since(0, 100)[0], "e6");
    }

    /// Two failures (unhealthy, the backoff at 0.4 s next), then a success at 400 ms that resets them.
    fn recovered_after_two_failures() -> (PoolState<u32>, Instant) {
        let t0 = Instant::now();
        let mut st = PoolState::<u32>::new(&cfg(1, 1, 3));
        assert_eq!(ids(&st.poll_spawns(t0)), [(0, None)]);
        st.spawn_failed(0, "boom".into(), t0);
        assert_eq!(ids(&st.poll_spawns(t0 + ms(100))), [(1, None)]);
        st.spawn_failed(1, "boom".into(), t0 + ms(100));
        assert!(!st.healthy());
        assert_eq!(ids(&st.poll_spawns(t0 + ms(300))), [(2, None)]);
        let s = st.spawn_succeeded(2, 7, t0 + ms(400));
        assert!(s.recovered && st.healthy());
        (st, t0)
    }

    #[test]
    fn a_process_dead_on_arrival_fails_its_spawn_after_all() {
        let (mut st, t0) = recovered_after_two_failures();
        let w = st.add_waiter();
        assert!(matches!(st.poll_waiter(w), Turn::Take(7)));
        // found dead: the run and the backoff that success reset are back, one failure more
        let f = st.died_unused(Some(w), "dead".into(), t0 + ms(401));
        assert_eq!((f.consecutive, f.retry_in, f.turned_unhealthy), (3, ms(400), false));
        assert!(!st.healthy());
        // unhealthy: that failure ends the acquire that found it, naming it
        match failed(st.poll_waiter(w)) {
            AcquireError::Unhealthy { in_row: 3, failures, .. } => assert_eq!(failures, ["dead"]),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn the_success_of_a_spawn_begun_before_a_death_on_arrival_changes_nothing() {
        let (mut st, t0) = recovered_after_two_failures();
        let w = st.add_waiter();
        assert!(matches!(st.poll_waiter(w), Turn::Take(7)));
        // the success started the next spawn at once (no backoff any more)
        assert_eq!(ids(&st.poll_spawns(t0 + ms(400))), [(3, Some(w))]);
        st.died_unused(Some(w), "dead".into(), t0 + ms(401));
        let s = st.spawn_succeeded(3, 8, t0 + ms(500));
        assert!(!s.recovered && !st.healthy(), "begun before the death, it proves nothing");
        assert_eq!(st.poll_timeout(), Some(t0 + ms(801)), "the backoff stands");
    }

    #[test]
    fn a_process_lent_alive_ends_the_doubt() {
        let (mut st, t0) = recovered_after_two_failures();
        st.proven();
        let f = st.died_unused(None, "dead".into(), t0 + ms(401));
        assert_eq!((f.consecutive, f.retry_in), (1, ms(100)));
        assert!(st.healthy());
    }

    #[test]
    fn a_death_found_long_after_its_spawn_is_one_failure() {
        let (mut st, t0) = recovered_after_two_failures();
        let later = t0 + ms(400) + PoolConfig::default().initialize_timeout + ms(1);
        let f = st.died_unused(None, "dead".into(), later);
        assert_eq!(f.consecutive, 1);
        assert!(st.healthy());
    }
}
