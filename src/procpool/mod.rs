//! A prewarmed process pool whose `acquire` never hangs (seed 004).
//!
//! * A maintainer task keeps `idle + in-flight spawns` at `target_idle` plus the number of waiting
//!   acquirers, never more than `max_concurrent_spawns` initializing at once (one while the pool is
//!   unhealthy), and after a failed spawn waits the `respawn` backoff before the next one (a
//!   crash-looping child cannot spin the CPU).
//! * A waiter's spawn goes ahead of idle-target spawns: each spawn started while acquirers wait is made
//!   *for* one of them (oldest first), and an acquirer arriving while a spawn for the idle target is in
//!   flight takes that spawn over. Its process is kept for that waiter, and while the pool is healthy
//!   its failure counts as a failed attempt of that waiter only (or the waiter adopts a spawn in flight
//!   that nobody owns), so peers still starting never burn an attempt. After `acquire_attempts` failed
//!   attempts the acquire raises `Exhausted` with the causes of its own spawns.
//! * The pool is unhealthy after `unhealthy_after` spawn failures in a row (until a spawn succeeds).
//!   Then the next spawn failure, whoever it was made for, ends every waiting acquire with
//!   `Unhealthy` naming the failures seen since it began: the setup is known to fail, so waiting for
//!   further spawns (each a growing backoff away) would only delay the same error. An optional timeout
//!   bounds it all.
//! * `acquire` takes a process under the pool lock, in the same poll that returns it, so a cancelled
//!   acquire never consumes-and-drops one. Dead idle processes are evicted, not handed out. Idle
//!   processes never exceed `target_idle` plus the acquirers still waiting.
//! * `initialize_timeout` bounds each spawn (the spawner enforces it so it can report the stderr tail;
//!   the pool drops a spawn that overruns it by more than a grace period).
//! * Every process leaves through `dispose` (kill + reap for native children): on release with kill,
//!   eviction, shrink, close, and spawns that finish after close; or through `detach`, for good.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::backoff::{Backoff, Delays, Jitter};

const LOG: &str = "tether::procpool";

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A process (or any worker) the pool hands out.
pub trait ProcHandle: Send + Sync + 'static {
    /// Cheap liveness check before hand-out.
    fn is_alive(&self) -> bool;
    /// Stop and reap it (bounded).
    fn dispose(&self) -> BoxFuture<()>;
    fn describe(&self) -> String;
    fn as_any(&self) -> &dyn Any;
    /// No longer the pool's (detached): stop whatever would end it with the pool.
    fn detached(&self) {}
    /// The program is exiting: stop it now, synchronously, without waiting for it.
    fn kill_now(&self) {}
}

pub type Proc = Arc<dyn ProcHandle>;

impl std::fmt::Debug for dyn ProcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

pub trait Spawner: Send + Sync + 'static {
    /// Start and initialize one process within `limit`; `Err` carries the cause (stderr tail included
    /// for children).
    fn spawn(&self, limit: Duration) -> BoxFuture<Result<Proc, String>>;
    /// True once no spawn can ever succeed again (e.g. its event loop is closed): the pool then
    /// closes itself instead of retrying forever. Asked after a failed spawn.
    fn gone(&self) -> bool {
        false
    }
}

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
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PoolEvent {
    Spawned { proc: String, took: Duration },
    SpawnFailed { cause: String, consecutive: u32, retry_in: Duration },
    Evicted { proc: String, reason: String },
    Exhausted { attempts: u32, failures: Vec<String> },
    Health { healthy: bool },
    Closed,
}

/// `release`/`detach` of a process this pool has not lent (or no longer lends).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("this process was not acquired from this pool (or was released or detached already)")]
pub struct NotLent;

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
                "no process after {attempts} acquire attempt{}: every spawn failed: {}",
                if *attempts == 1 { "" } else { "s" },
                causes(failures)
            ),
            AcquireError::Unhealthy { in_row, failures, .. } => format!(
                "no process: the pool is unhealthy ({in_row} spawn failures in a row, the last while this acquire waited): {}",
                causes(failures)
            ),
            AcquireError::TimedOut { timeout, failures } => {
                format!("no process within {:.1}s: {}", timeout.as_secs_f64(), causes(failures))
            }
            AcquireError::WarmFailed { wanted, idle, attempts, failures } => format!(
                "warm-up stopped at {idle} of {wanted} idle processes after {attempts} spawn failure{} in a row: {}",
                if *attempts == 1 { "" } else { "s" },
                causes(failures)
            ),
            AcquireError::Closed => "the pool is closed".into(),
        }
    }
}

mod native;
#[cfg(test)]
mod tests;

pub use native::{read_frame, write_frame, NativeProc, NativeSpawner, RequestError, MAX_FRAME, READY};

/// Every pool not yet dropped, for `kill_all_at_exit`.
static POOLS: Mutex<Vec<std::sync::Weak<Inner>>> = Mutex::new(Vec::new());

/// The program is exiting and pools nobody closed still own processes: close them and kill every
/// process they own (idle, lent, kept for a waiter) and every native child still initializing.
/// Synchronous and bounded; detached processes are left alone.
pub fn kill_all_at_exit() {
    let pools: Vec<Arc<Inner>> = std::mem::take(&mut *POOLS.lock().unwrap_or_else(|p| p.into_inner()))
        .iter()
        .filter_map(|w| w.upgrade())
        .collect();
    for inner in pools {
        for p in inner.shut() {
            p.kill_now();
        }
    }
    native::kill_children_at_exit();
}

/// How long past `initialize_timeout` the pool waits for a spawner to enforce it itself (and report
/// why) before dropping the spawn.
const SPAWN_GRACE: Duration = Duration::from_secs(3);
/// Failure causes kept for timeouts and warm-up errors.
const RECENT_FAILURES: usize = 64;

fn key(p: &Proc) -> usize {
    Arc::as_ptr(p) as *const () as usize
}

/// One acquire in progress.
struct Waiter {
    id: u64,
    /// The spawn in flight made for this waiter.
    spawn: Option<u64>,
    /// The process a spawn made for this waiter produced, kept for it.
    ready: Option<Proc>,
    /// Causes of this waiter's failed spawns: one per failed attempt.
    failures: Vec<String>,
    /// `failure_total` when this acquire began: the failures it may name are the later ones.
    since: u64,
    /// Set when a spawn failed while the pool was already unhealthy: the acquire ends with it.
    given_up: Option<AcquireError>,
}

struct State {
    idle: VecDeque<Proc>,
    /// Handed out and not yet released: disposed by `close` too, so nothing outlives the pool.
    lent: HashMap<usize, Proc>,
    in_flight: usize,
    /// Spawn id -> the waiter it was made for (None: for the idle target, or its waiter left).
    owners: HashMap<u64, Option<u64>>,
    waiters: Vec<Waiter>,
    next_waiter: u64,
    target_idle: usize,
    closed: bool,
    consecutive_failures: u32,
    healthy: bool,
    /// The most recent failure causes; `failure_total` counts them all.
    failures: VecDeque<String>,
    failure_total: u64,
    next_spawn_at: Option<Instant>,
    delays: Delays,
    spawns: u64,
}

impl State {
    fn waiter(&mut self, id: u64) -> Option<&mut Waiter> {
        self.waiters.iter_mut().find(|w| w.id == id)
    }
    /// Waiters that still need a process.
    fn wanting(&self) -> usize {
        self.waiters.iter().filter(|w| w.ready.is_none()).count()
    }
    /// Whether a process nobody is waiting for is kept idle.
    fn room_for_idle(&self) -> bool {
        !self.closed && self.idle.len() < self.target_idle + self.wanting()
    }
    /// The failures recorded since `total` was read (at most the ones kept), oldest first.
    fn failures_since(&self, total: u64, at_most: usize) -> Vec<String> {
        let n = ((self.failure_total - total) as usize).min(self.failures.len()).min(at_most);
        self.failures.iter().skip(self.failures.len() - n).cloned().collect()
    }
    /// A spawn settled: forget its owner; returns the waiter (still waiting) it was made for.
    fn settle(&mut self, spawn: u64) -> Option<u64> {
        let owner = self.owners.remove(&spawn).flatten()?;
        let w = self.waiter(owner)?;
        w.spawn = None;
        Some(owner)
    }
}

struct Inner {
    cfg: PoolConfig,
    spawner: Arc<dyn Spawner>,
    state: Mutex<State>,
    changed: Notify,
    wake_maintainer: Notify,
    events: broadcast::Sender<PoolEvent>,
    started: AtomicBool,
    /// The runtime the pool was started on: disposals are spawned there from any thread.
    handle: std::sync::OnceLock<tokio::runtime::Handle>,
    /// In-flight spawn tasks, aborted by `close` (dropping a spawn kills its child).
    spawn_tasks: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn emit(&self, ev: PoolEvent) {
        let _ = self.events.send(ev);
    }
    /// A process just taken from `idle` (or kept for a waiter): lend it if alive, else evict it.
    /// Never called under the lock.
    fn check_out(&self, p: Proc) -> Option<Proc> {
        if p.is_alive() {
            self.lock().lent.insert(key(&p), p.clone());
            self.wake_maintainer.notify_one(); // replace what was taken
            return Some(p);
        }
        let what = p.describe();
        self.emit(PoolEvent::Evicted { proc: what.clone(), reason: "died while idle".into() });
        tracing::info!(target: LOG, logger = self.cfg.logger.as_deref(), proc = %what, "evicted {what}: it died while idle");
        self.dispose(p, "died while idle");
        self.wake_maintainer.notify_one();
        None
    }

    /// `acquire`/`warm` bounded by their `timeout`: at expiry the error names the spawn failures seen
    /// since the wait began (`since` = `failure_total` then).
    async fn within<T>(
        &self,
        timeout: Option<Duration>,
        since: u64,
        body: impl Future<Output = Result<T, AcquireError>>,
    ) -> Result<T, AcquireError> {
        let Some(t) = timeout else { return body.await };
        match tokio::time::timeout(t, body).await {
            Ok(r) => r,
            Err(_) => Err(AcquireError::TimedOut { timeout: t, failures: self.lock().failures_since(since, 5) }),
        }
    }

    /// Mark closed; returns every process the pool owns (idle, lent, kept for a waiter).
    fn shut(&self) -> Vec<Proc> {
        let mut st = self.lock();
        st.closed = true;
        let mut all: Vec<Proc> = st.idle.drain(..).collect();
        all.extend(st.lent.drain().map(|(_, p)| p));
        all.extend(st.waiters.iter_mut().filter_map(|w| w.ready.take()));
        all
    }

    fn dispose(&self, p: Proc, reason: &str) {
        let what = p.describe();
        tracing::debug!(target: LOG, logger = self.cfg.logger.as_deref(), proc = %what, reason, "disposing {what}: {reason}");
        let fut = async move { p.dispose().await };
        match self.handle.get().cloned().or_else(|| tokio::runtime::Handle::try_current().ok()) {
            Some(h) => {
                h.spawn(fut);
            }
            // never started and called outside a runtime: nothing async can run, dispose inline
            None => drop(futures_util::FutureExt::now_or_never(fut)),
        }
    }
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// Unregisters an acquire however it ends; a process kept for it goes idle (if wanted) or away.
struct Waiting<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let leftover = {
            let mut st = self.inner.lock();
            let Some(i) = st.waiters.iter().position(|w| w.id == self.id) else { return };
            let w = st.waiters.remove(i);
            if let Some(s) = w.spawn {
                st.owners.insert(s, None);
            }
            match w.ready {
                Some(p) if st.room_for_idle() => {
                    st.idle.push_back(p);
                    None
                }
                other => other,
            }
        };
        if let Some(p) = leftover {
            self.inner.dispose(p, "its acquirer left and the pool has enough idle processes");
        }
        self.inner.changed.notify_waiters();
        self.inner.wake_maintainer.notify_one();
    }
}

enum Step {
    Take(Proc),
    Exhausted(Vec<String>),
    GiveUp(AcquireError),
    Wait,
}

impl Pool {
    pub fn new(cfg: PoolConfig, spawner: Arc<dyn Spawner>) -> Pool {
        let (events, _) = broadcast::channel(1024);
        let delays = cfg.respawn.delays_unbounded();
        let pool = Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    idle: VecDeque::new(),
                    lent: HashMap::new(),
                    in_flight: 0,
                    owners: HashMap::new(),
                    waiters: Vec::new(),
                    next_waiter: 0,
                    target_idle: cfg.num_idle,
                    closed: false,
                    consecutive_failures: 0,
                    healthy: true,
                    failures: VecDeque::new(),
                    failure_total: 0,
                    next_spawn_at: None,
                    delays,
                    spawns: 0,
                }),
                cfg,
                spawner,
                changed: Notify::new(),
                wake_maintainer: Notify::new(),
                events,
                started: AtomicBool::new(false),
                spawn_tasks: Mutex::new(HashMap::new()),
                handle: std::sync::OnceLock::new(),
            }),
        };
        let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(&pool.inner));
        drop(pools);
        pool
    }

    /// Start prewarming (idempotent). Must run inside a tokio runtime.
    pub fn start(&self) {
        if !self.inner.started.swap(true, Ordering::SeqCst) {
            let h = tokio::runtime::Handle::current();
            let _ = self.inner.handle.set(h.clone());
            h.spawn(maintain(self.inner.clone()));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.inner.events.subscribe()
    }

    pub fn healthy(&self) -> bool {
        self.inner.lock().healthy
    }

    pub fn idle(&self) -> usize {
        self.inner.lock().idle.len()
    }

    pub fn in_flight(&self) -> usize {
        self.inner.lock().in_flight
    }

    pub fn spawns(&self) -> u64 {
        self.inner.lock().spawns
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    pub fn target_idle(&self) -> usize {
        self.inner.lock().target_idle
    }

    pub fn set_target_idle(&self, n: usize) {
        let extra: Vec<Proc> = {
            let mut st = self.inner.lock();
            st.target_idle = n;
            let keep = n.min(st.idle.len());
            st.idle.drain(keep..).collect()
        };
        for p in extra {
            self.inner.dispose(p, "target_idle lowered");
        }
        self.inner.wake_maintainer.notify_one();
    }

    /// Take a live idle process now, if there is one (dead ones found on the way are evicted).
    pub fn try_acquire(&self) -> Option<Proc> {
        let inner = &*self.inner;
        loop {
            let p = {
                let mut st = inner.lock();
                if st.closed {
                    return None;
                }
                st.idle.pop_front()?
            };
            if let Some(p) = inner.check_out(p) {
                return Some(p);
            }
        }
    }

    /// Take a warm process, waiting for spawns as needed; see the module docs for the semantics.
    pub async fn acquire(&self, timeout: Option<Duration>) -> Result<Proc, AcquireError> {
        self.start();
        let inner = &*self.inner;
        let (id, since) = {
            let mut st = inner.lock();
            let id = st.next_waiter;
            st.next_waiter += 1;
            // a spawn already in flight for the idle target is this waiter's now (oldest first): the
            // idle target's next spawn comes after it, and its failure is one of this waiter's attempts
            let spawn = st.owners.iter().filter(|(_, o)| o.is_none()).map(|(s, _)| *s).min();
            if let Some(s) = spawn {
                st.owners.insert(s, Some(id));
            }
            let since = st.failure_total;
            st.waiters.push(Waiter { id, spawn, ready: None, failures: Vec::new(), since, given_up: None });
            (id, since)
        };
        let _waiting = Waiting { inner, id };
        inner.wake_maintainer.notify_one();
        let attempts = inner.cfg.acquire_attempts as usize;
        let body = async {
            let mut failed_seen = 0;
            loop {
                let n = inner.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                loop {
                    let step = {
                        let mut st = inner.lock();
                        if st.closed {
                            return Err(AcquireError::Closed);
                        }
                        let w = st.waiter(id).expect("registered until this acquire ends");
                        if let Some(p) = w.ready.take() {
                            Step::Take(p)
                        } else if w.failures.len() >= attempts {
                            Step::Exhausted(std::mem::take(&mut w.failures))
                        } else if let Some(e) = w.given_up.take() {
                            Step::GiveUp(e)
                        } else {
                            if w.failures.len() > failed_seen {
                                failed_seen = w.failures.len();
                                tracing::debug!(target: LOG, logger = inner.cfg.logger.as_deref(), attempt = failed_seen,
                                    "acquire attempt {failed_seen} failed: its spawn failed; retrying");
                            }
                            st.idle.pop_front().map_or(Step::Wait, Step::Take)
                        }
                    };
                    match step {
                        Step::Take(p) => match inner.check_out(p) {
                            Some(p) => return Ok(p),
                            None => continue,
                        },
                        Step::Exhausted(failures) => {
                            return Err(AcquireError::Exhausted { attempts: failures.len() as u32, failures })
                        }
                        Step::GiveUp(e) => return Err(e),
                        Step::Wait => break,
                    }
                }
                n.await;
            }
        };
        let res = inner.within(timeout, since, body).await;
        if let Err(e) = &res {
            if let AcquireError::Exhausted { attempts, failures } | AcquireError::Unhealthy { attempts, failures, .. } =
                e
            {
                inner.emit(PoolEvent::Exhausted { attempts: *attempts, failures: failures.clone() });
            }
            tracing::error!(target: LOG, logger = inner.cfg.logger.as_deref(), "acquire failed: {}", e.message());
        }
        res
    }

    /// Wait until `n` processes (default: the idle target, which is raised to `n` if lower) are idle.
    /// Fails once `acquire_attempts` spawns failed in a row since it began, or at `timeout`.
    pub async fn warm(&self, n: Option<usize>, timeout: Option<Duration>) -> Result<(), AcquireError> {
        self.start();
        let inner = &*self.inner;
        let (wanted, since) = {
            let mut st = inner.lock();
            let wanted = n.unwrap_or(st.target_idle);
            st.target_idle = st.target_idle.max(wanted);
            (wanted, st.failure_total)
        };
        inner.wake_maintainer.notify_one();
        let body = async {
            loop {
                let n = inner.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                {
                    let st = inner.lock();
                    if st.closed {
                        return Err(AcquireError::Closed);
                    }
                    if st.idle.len() >= wanted {
                        return Ok(());
                    }
                    let in_row = (st.consecutive_failures as u64).min(st.failure_total - since) as u32;
                    if in_row >= inner.cfg.acquire_attempts {
                        return Err(AcquireError::WarmFailed {
                            wanted,
                            idle: st.idle.len(),
                            attempts: in_row,
                            failures: st.failures_since(st.failure_total - in_row as u64, in_row as usize),
                        });
                    }
                }
                n.await;
            }
        };
        let res = inner.within(timeout, since, body).await;
        if let Err(e) = &res {
            tracing::error!(target: LOG, logger = inner.cfg.logger.as_deref(), "warm-up failed: {}", e.message());
        }
        res
    }

    /// Give a process back: kept warm if alive and the pool wants it, else disposed. After `close`,
    /// releasing is a no-op (close disposed it).
    pub fn release(&self, p: Proc, kill: bool) -> Result<(), NotLent> {
        let alive = !kill && p.is_alive();
        let keep = {
            let mut st = self.inner.lock();
            if st.lent.remove(&key(&p)).is_none() {
                return if st.closed { Ok(()) } else { Err(NotLent) };
            }
            if alive && st.room_for_idle() {
                st.idle.push_back(p.clone());
                true
            } else {
                false
            }
        };
        if keep {
            self.inner.changed.notify_waiters();
        } else {
            self.inner.dispose(p, if kill { "released with kill" } else { "released" });
            self.inner.wake_maintainer.notify_one();
        }
        Ok(())
    }

    /// A lent process leaves the pool for good: not killed, no longer counted or closed with the pool.
    pub fn detach(&self, p: &Proc) -> Result<(), NotLent> {
        if self.inner.lock().lent.remove(&key(p)).is_none() {
            return Err(NotLent);
        }
        p.detached();
        tracing::debug!(target: LOG, logger = self.inner.cfg.logger.as_deref(), proc = %p.describe(), "detached {}", p.describe());
        self.inner.wake_maintainer.notify_one();
        Ok(())
    }

    /// Close: fail waiters, abort in-flight spawns (their children are killed), kill and reap idle
    /// and lent processes. Bounded: a few seconds at most, whatever `initialize_timeout` is.
    pub async fn close(&self) {
        let all = self.inner.shut();
        let tasks: Vec<_> =
            self.inner.spawn_tasks.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, h)| h).collect();
        for t in tasks {
            t.abort();
        }
        self.inner.changed.notify_waiters();
        self.inner.wake_maintainer.notify_one();
        let mut disposals = Vec::new();
        for p in all {
            disposals.push(tokio::spawn(async move { p.dispose().await }));
        }
        let bound = Duration::from_secs(6);
        let _ = tokio::time::timeout(bound, async {
            for d in disposals {
                let _ = d.await;
            }
            loop {
                let n = self.inner.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if self.inner.lock().in_flight == 0 {
                    return;
                }
                n.await;
            }
        })
        .await;
        self.inner.emit(PoolEvent::Closed);
    }
}

async fn maintain(inner: Arc<Inner>) {
    loop {
        let woken = inner.wake_maintainer.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let mut sleep_until: Option<Instant> = None;
        let mut started = Vec::new();
        {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            let want = (st.target_idle + st.wanting()).saturating_sub(st.idle.len() + st.in_flight);
            // while every spawn fails, one at a time: each would fail the same way, so more at once
            // would only multiply the wasted setups (a success lifts the limit)
            let slots = if st.healthy { inner.cfg.max_concurrent_spawns } else { 1 };
            let room = slots.saturating_sub(st.in_flight);
            match st.next_spawn_at {
                Some(at) if at > Instant::now() && want > 0 => sleep_until = Some(at),
                _ => {
                    for _ in 0..want.min(room) {
                        let id = SPAWN_IDS.fetch_add(1, Ordering::Relaxed);
                        // made for the oldest waiter that has neither a process nor a spawn of its own
                        let owner = st.waiters.iter_mut().find(|w| w.spawn.is_none() && w.ready.is_none()).map(|w| {
                            w.spawn = Some(id);
                            w.id
                        });
                        st.owners.insert(id, owner);
                        st.in_flight += 1;
                        st.spawns += 1;
                        started.push(id);
                    }
                }
            }
        }
        for id in started {
            let guard = InFlight { inner: inner.clone(), id, armed: true };
            let h = tokio::spawn(spawn_one(guard));
            inner.spawn_tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(id, h.abort_handle());
        }
        match sleep_until {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = woken => {}
                }
            }
            None => woken.await,
        }
    }
}

static SPAWN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Owns one unit of `in_flight`: an aborted spawn (pool closed) gives it back on drop.
struct InFlight {
    inner: Arc<Inner>,
    id: u64,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.spawn_tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        if self.armed {
            let mut st = self.inner.lock();
            st.in_flight -= 1;
            st.settle(self.id);
            drop(st);
            self.inner.changed.notify_waiters();
        }
    }
}

async fn spawn_one(mut guard: InFlight) {
    let inner = guard.inner.clone();
    let t0 = Instant::now();
    let limit = inner.cfg.initialize_timeout;
    let outcome = match tokio::time::timeout(limit + SPAWN_GRACE, inner.spawner.spawn(limit)).await {
        Ok(r) => r,
        // dropping the spawn future kills a native child (kill_on_drop) and tokio reaps it
        Err(_) => {
            Err(format!("initialization did not finish within {:.1}s; the process was killed", limit.as_secs_f64()))
        }
    };
    let failed = outcome.is_err();
    let mut events = Vec::new();
    let mut to_dispose = None;
    {
        let mut st = inner.lock();
        st.in_flight -= 1;
        guard.armed = false;
        let owner = st.settle(guard.id);
        match outcome {
            Ok(p) => {
                let was_healthy = st.healthy;
                st.consecutive_failures = 0;
                st.healthy = true;
                st.next_spawn_at = None;
                st.delays = inner.cfg.respawn.delays_unbounded();
                events.push(PoolEvent::Spawned { proc: p.describe(), took: t0.elapsed() });
                if !was_healthy {
                    events.push(PoolEvent::Health { healthy: true });
                }
                if st.closed {
                    to_dispose = Some((p, "spawned after close"));
                } else if let Some(w) = owner.and_then(|o| st.waiter(o)) {
                    w.ready = Some(p);
                } else if st.room_for_idle() {
                    st.idle.push_back(p);
                } else {
                    to_dispose = Some((p, "not needed: its acquirer left and the pool has enough idle processes"));
                }
            }
            Err(cause) => {
                let was_healthy = st.healthy;
                st.consecutive_failures += 1;
                st.failure_total += 1;
                st.failures.push_back(cause.clone());
                if st.failures.len() > RECENT_FAILURES {
                    st.failures.pop_front();
                }
                if let Some(o) = owner {
                    // a spawn in flight that nobody owns serves this waiter before it loses an attempt
                    let orphan = st.owners.iter_mut().find(|(_, w)| w.is_none()).map(|(s, w)| {
                        *w = Some(o);
                        *s
                    });
                    if let Some(w) = st.waiter(o) {
                        match orphan {
                            Some(s) => w.spawn = Some(s),
                            None => w.failures.push(cause.clone()),
                        }
                    }
                }
                let retry_in = st.delays.next().unwrap_or(Duration::from_secs_f64(inner.cfg.respawn.max_delay));
                st.next_spawn_at = Some(Instant::now() + retry_in);
                events.push(PoolEvent::SpawnFailed { cause, consecutive: st.consecutive_failures, retry_in });
                if st.healthy && st.consecutive_failures >= inner.cfg.unhealthy_after {
                    st.healthy = false;
                    events.push(PoolEvent::Health { healthy: false });
                }
                if !was_healthy {
                    // The pool already knew setup keeps failing and one more spawn failed, whoever it was
                    // made for: no acquire waits for spawns of its own (each a backoff away) to learn it.
                    let (in_row, total) = (st.consecutive_failures, st.failure_total);
                    let ended: Vec<(u64, u64)> = st
                        .waiters
                        .iter()
                        .filter(|w| w.ready.is_none() && w.given_up.is_none())
                        .map(|w| (w.id, (in_row as u64).min(total - w.since)))
                        .collect();
                    for (id, n) in ended {
                        let failures = st.failures_since(total - n, n as usize);
                        if let Some(w) = st.waiter(id) {
                            w.given_up = Some(AcquireError::Unhealthy { attempts: n as u32, in_row, failures });
                        }
                    }
                }
            }
        }
    }
    // log and notify after releasing the lock
    for ev in events {
        match &ev {
            // a crash loop must not flood the logs: the first failures, then every 10th
            PoolEvent::SpawnFailed { cause, consecutive, retry_in } if *consecutive <= 3 || consecutive % 10 == 0 => {
                tracing::warn!(target: LOG, logger = inner.cfg.logger.as_deref(),
                consecutive = *consecutive, retry_in_s = retry_in.as_secs_f64(), error = %cause,
                "spawn failed ({consecutive} in a row{}): {cause}; next spawn in {:.2}s",
                if *consecutive > 3 { ", only every 10th is logged" } else { "" }, retry_in.as_secs_f64())
            }
            PoolEvent::SpawnFailed { cause, consecutive, .. } => {
                tracing::debug!(target: LOG, logger = inner.cfg.logger.as_deref(), consecutive = *consecutive, error = %cause,
                "spawn failed ({consecutive} in a row): {cause}")
            }
            PoolEvent::Spawned { proc, took } => {
                tracing::debug!(target: LOG, logger = inner.cfg.logger.as_deref(), proc = %proc, took_ms = took.as_secs_f64() * 1000.0, "spawned {proc}")
            }
            PoolEvent::Health { healthy: false } => {
                tracing::error!(target: LOG, logger = inner.cfg.logger.as_deref(), "pool unhealthy: it cannot produce processes")
            }
            PoolEvent::Health { healthy: true } => {
                tracing::info!(target: LOG, logger = inner.cfg.logger.as_deref(), "pool healthy again")
            }
            _ => {}
        }
        inner.emit(ev);
    }
    if let Some((p, why)) = to_dispose {
        inner.dispose(p, why);
    }
    // asked outside the lock: the spawner may need the GIL, which a thread holding it may wait on us for
    if failed && !inner.lock().closed && inner.spawner.gone() {
        tracing::warn!(target: LOG, logger = inner.cfg.logger.as_deref(),
            "closing the pool: its spawner can no longer run (event loop closed) and it was not closed");
        for p in inner.shut() {
            inner.dispose(p, "the pool's spawner is gone");
        }
        inner.emit(PoolEvent::Closed);
    }
    inner.changed.notify_waiters();
    inner.wake_maintainer.notify_one();
}
