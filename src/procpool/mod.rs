//! A prewarmed process pool whose `acquire` never hangs.
//!
//! The allocation rules (sizing, whom a spawn is for, what counts as an attempt, health, the order of
//! spawns, the respawn backoff) are the pure state machine [`crate::pool_state`]; this module drives it:
//!
//! * A maintainer task starts the spawns the machine asks for and sleeps until its next deadline (the
//!   end of a respawn backoff) or until something changes. Each spawn runs in its own task, bounded by
//!   `initialize_timeout` (the spawner enforces it so it can report the stderr tail; the pool drops a
//!   spawn that overruns it by more than a grace period), and reports its outcome to the machine.
//! * `acquire` registers with the machine and asks it, at every change, what it gets: a process (taken
//!   under the pool lock, in the same poll that returns it, so a cancelled acquire never
//!   consumes-and-drops one), or the error that ends it. Dead idle processes are evicted, not handed
//!   out; one never lent yet counts as its spawn's failure (`PoolState::died_unused`). An optional
//!   timeout bounds it all.
//! * Every process leaves through `dispose` (kill + reap for native children): on release with kill,
//!   eviction, shrink, close, and spawns that finish after close; or through `detach`, for good.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

pub use crate::pool_state::{AcquireError, PoolConfig};
use crate::pool_state::{PoolState, SpawnId, Turn, WaiterId, Warmth};

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

mod native;
#[cfg(test)]
mod tests;

pub use native::{read_frame, write_frame, NativeProc, NativeSpawner, RequestError, MAX_FRAME, READY};

/// Every pool not yet dropped, with the process that made it, for `kill_all_at_exit`: a forked child
/// inherits the list, and its exit must not kill its parent's processes.
static POOLS: Mutex<Vec<(u32, std::sync::Weak<Inner>)>> = Mutex::new(Vec::new());

/// The program is exiting and pools nobody closed still own processes: close them and kill every
/// process they own (idle, lent, kept for a waiter) and every native child still initializing.
/// Synchronous and bounded; detached processes are left alone.
pub fn kill_all_at_exit() {
    let me = std::process::id();
    let pools: Vec<Arc<Inner>> = std::mem::take(&mut *POOLS.lock().unwrap_or_else(|p| p.into_inner()))
        .iter()
        .filter(|(pid, _)| *pid == me)
        .filter_map(|(_, w)| w.upgrade())
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
fn key(p: &Proc) -> usize {
    Arc::as_ptr(p) as *const () as usize
}

/// The pool's state: the allocation rules' machine, and the processes it lent.
struct Shared {
    pool: PoolState<Proc>,
    /// Handed out and not yet released: disposed by `close` too, so nothing outlives the pool.
    lent: HashMap<usize, Proc>,
    /// Processes a spawn made that were never lent yet: found dead, their spawn failed after all.
    unused: HashSet<usize>,
}

struct Inner {
    cfg: PoolConfig,
    spawner: Arc<dyn Spawner>,
    state: Mutex<Shared>,
    changed: Notify,
    wake_maintainer: Notify,
    events: broadcast::Sender<PoolEvent>,
    started: AtomicBool,
    /// The runtime the pool was started on: disposals are spawned there from any thread.
    handle: std::sync::OnceLock<tokio::runtime::Handle>,
    /// In-flight spawn tasks, aborted by `close` (dropping a spawn kills its child).
    spawn_tasks: Mutex<HashMap<SpawnId, tokio::task::AbortHandle>>,
    /// Set when the pool is measured (`tether.metrics`).
    metrics: Option<crate::metrics::Labels>,
    /// Disposals under way (an eviction, a release with kill): `close` waits for them too.
    disposals: Arc<Disposals>,
}

#[derive(Default)]
struct Disposals {
    pending: std::sync::atomic::AtomicUsize,
    settled: Notify,
}

/// The machine's clock: tokio's (paused in tests), as the `std` instants the machine takes.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn emit(&self, ev: PoolEvent) {
        let _ = self.events.send(ev);
    }
    /// Take `p` out of the machine's hands (from `idle`, or kept for a waiter) into `lent`, under the
    /// same lock: from then on a close finds it there and disposes of it.
    fn take(sh: &mut Shared, p: Proc) -> Proc {
        sh.lent.insert(key(&p), p.clone());
        p
    }

    /// A process just taken (`take`) by acquire `waiter` (None: `try_acquire`): lend it if alive, else
    /// evict it. Its liveness is asked outside the lock (for a `spawn=` process it needs the GIL); a
    /// close meanwhile took it from `lent` and disposes of it, so it is not lent then. Never called
    /// under the lock.
    fn check_out(&self, p: Proc, waiter: Option<WaiterId>) -> Option<Proc> {
        let k = key(&p);
        if p.is_alive() {
            {
                let mut sh = self.lock();
                if !sh.lent.contains_key(&k) {
                    return None;
                }
                if sh.unused.remove(&k) {
                    sh.pool.proven();
                }
            }
            self.wake_maintainer.notify_one(); // replace what was taken
            return Some(p);
        }
        let what = p.describe();
        let failed = {
            let mut sh = self.lock();
            sh.lent.remove(&k)?;
            sh.unused.remove(&k).then(|| {
                let cause = format!("{what} died before its first use, after its spawn reported it ready");
                let f = sh.pool.died_unused(waiter, cause.clone(), now());
                failure_events(cause, f)
            })
        };
        let reason = if failed.is_some() { "died before its first use" } else { "died while idle" };
        self.emit(PoolEvent::Evicted { proc: what.clone(), reason: reason.into() });
        tracing::info!(target: LOG, logger = self.cfg.logger.as_deref(), proc = %what, "evicted {what}: it {reason}");
        self.dispose(p, reason);
        if let Some(events) = failed {
            report(self, events);
            self.changed.notify_waiters();
        }
        self.wake_maintainer.notify_one();
        None
    }

    /// `acquire`/`warm` bounded by their `timeout`: at expiry the error names the spawn failures seen
    /// since the wait began (`since` = the failure total then).
    async fn within<T>(
        &self,
        timeout: Option<Duration>,
        since: u64,
        body: impl Future<Output = Result<T, AcquireError>>,
    ) -> Result<T, AcquireError> {
        let Some(t) = timeout else { return body.await };
        match tokio::time::timeout(t, body).await {
            Ok(r) => r,
            Err(_) => Err(AcquireError::TimedOut { timeout: t, failures: self.lock().pool.failures_since(since, 5) }),
        }
    }

    /// Mark closed; returns every process the pool owns (idle, lent, kept for a waiter).
    fn shut(&self) -> Vec<Proc> {
        let mut sh = self.lock();
        let mut all = sh.pool.close();
        all.extend(sh.lent.drain().map(|(_, p)| p));
        sh.unused.clear();
        all
    }

    fn dispose(&self, p: Proc, reason: &str) {
        let what = p.describe();
        tracing::debug!(target: LOG, logger = self.cfg.logger.as_deref(), proc = %what, reason, "disposing {what}: {reason}");
        match self.handle.get().cloned().or_else(|| tokio::runtime::Handle::try_current().ok()) {
            Some(h) => {
                let d = self.disposals.clone();
                d.pending.fetch_add(1, Ordering::SeqCst);
                h.spawn(async move {
                    p.dispose().await;
                    d.pending.fetch_sub(1, Ordering::SeqCst);
                    d.settled.notify_waiters();
                });
            }
            // never started and called outside a runtime: nothing async can run, dispose inline
            None => drop(futures_util::FutureExt::now_or_never(p.dispose())),
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
    id: WaiterId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let leftover = {
            let mut sh = self.inner.lock();
            let p = sh.pool.remove_waiter(self.id);
            if let Some(p) = &p {
                sh.unused.remove(&key(p));
            }
            p
        };
        if let Some(p) = leftover {
            self.inner.dispose(p, "its acquirer left and the pool has enough idle processes");
        }
        self.inner.changed.notify_waiters();
        self.inner.wake_maintainer.notify_one();
    }
}

impl Pool {
    pub fn new(cfg: PoolConfig, spawner: Arc<dyn Spawner>) -> Pool {
        let (events, _) = broadcast::channel(1024);
        let metrics = crate::metrics::labels(&[("name", &cfg.name)]);
        let pool = Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(Shared { pool: PoolState::new(&cfg), lent: HashMap::new(), unused: HashSet::new() }),
                cfg,
                spawner,
                changed: Notify::new(),
                wake_maintainer: Notify::new(),
                events,
                started: AtomicBool::new(false),
                spawn_tasks: Mutex::new(HashMap::new()),
                handle: std::sync::OnceLock::new(),
                metrics,
                disposals: Arc::default(),
            }),
        };
        if pool.inner.metrics.is_some() {
            crate::metrics::observe(Arc::downgrade(&pool.inner) as std::sync::Weak<dyn crate::metrics::Source>);
        }
        let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|(_, w)| w.strong_count() > 0);
        pools.push((std::process::id(), Arc::downgrade(&pool.inner)));
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
        self.inner.lock().pool.healthy()
    }

    pub fn idle(&self) -> usize {
        self.inner.lock().pool.idle()
    }

    pub fn in_flight(&self) -> usize {
        self.inner.lock().pool.in_flight()
    }

    /// Processes lent and not yet released or detached.
    pub fn lent(&self) -> usize {
        self.inner.lock().lent.len()
    }

    pub fn spawns(&self) -> u64 {
        self.inner.lock().pool.spawns()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().pool.is_closed()
    }

    pub fn target_idle(&self) -> usize {
        self.inner.lock().pool.target_idle()
    }

    pub fn set_target_idle(&self, n: usize) {
        let extra = {
            let mut sh = self.inner.lock();
            let extra = sh.pool.set_target_idle(n);
            for p in &extra {
                sh.unused.remove(&key(p));
            }
            extra
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
                let mut sh = inner.lock();
                let p = sh.pool.take_idle()?;
                Inner::take(&mut sh, p)
            };
            if let Some(p) = inner.check_out(p, None) {
                return Some(p);
            }
        }
    }

    /// Take a warm process, waiting for spawns as needed; see the module docs for the semantics.
    pub async fn acquire(&self, timeout: Option<Duration>) -> Result<Proc, AcquireError> {
        self.start();
        let inner = &*self.inner;
        let began = Instant::now();
        let (id, since) = {
            let mut sh = inner.lock();
            let since = sh.pool.failure_total();
            (sh.pool.add_waiter(), since)
        };
        let _waiting = Waiting { inner, id };
        inner.wake_maintainer.notify_one();
        let body = async {
            let mut failed_seen = 0;
            loop {
                let n = inner.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                loop {
                    let turn = {
                        let mut sh = inner.lock();
                        match sh.pool.poll_waiter(id) {
                            Turn::Take(p) => Turn::Take(Inner::take(&mut sh, p)),
                            other => other,
                        }
                    };
                    match turn {
                        Turn::Take(p) => match inner.check_out(p, Some(id)) {
                            Some(p) => return Ok(p),
                            None => continue,
                        },
                        Turn::Failed(e) => return Err(e),
                        Turn::Wait { failed_attempts } => {
                            if failed_attempts > failed_seen {
                                failed_seen = failed_attempts;
                                tracing::debug!(target: LOG, logger = inner.cfg.logger.as_deref(), attempt = failed_seen,
                                    "acquire attempt {failed_seen} failed: its spawn failed; retrying");
                            }
                            break;
                        }
                    }
                }
                n.await;
            }
        };
        let res = inner.within(timeout, since, body).await;
        if let Some(labels) = &inner.metrics {
            let outcome = match &res {
                Ok(_) => "acquired",
                Err(AcquireError::TimedOut { .. }) => "timeout",
                Err(AcquireError::Closed) => "closed",
                Err(_) => "exhausted",
            };
            crate::metrics::record(
                labels,
                crate::metrics::Instrument::AcquireWait,
                Some(("outcome", outcome.into())),
                began.elapsed().as_secs_f64(),
            );
        }
        if let Err(e) = &res {
            if let AcquireError::Exhausted { attempts, failures } | AcquireError::Unhealthy { attempts, failures, .. } =
                e
            {
                inner.emit(PoolEvent::Exhausted { attempts: *attempts, failures: failures.clone() });
            }
            // PoolExhausted (or the timeout) is this failure's report: the caller awaits it, so a record at
            // WARNING or above would print the same failure twice
            tracing::debug!(target: LOG, logger = inner.cfg.logger.as_deref(), "acquire failed: {}", e.message());
        }
        res
    }

    /// Wait until `n` processes (default: the idle target, which is raised to `n` if lower) are idle.
    /// Fails once `acquire_attempts` spawns failed in a row since it began, or at `timeout`.
    pub async fn warm(&self, n: Option<usize>, timeout: Option<Duration>) -> Result<(), AcquireError> {
        self.start();
        let inner = &*self.inner;
        let (wanted, since) = {
            let mut sh = inner.lock();
            let since = sh.pool.failure_total();
            (sh.pool.warm(n), since)
        };
        inner.wake_maintainer.notify_one();
        let body = async {
            loop {
                let n = inner.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                match inner.lock().pool.warmth(wanted, since) {
                    Warmth::Warm => return Ok(()),
                    Warmth::Failed(e) => return Err(e),
                    Warmth::Wait => {}
                }
                n.await;
            }
        };
        let res = inner.within(timeout, since, body).await;
        if let Err(e) = &res {
            // reported by the error warm() raises, as above
            tracing::debug!(target: LOG, logger = inner.cfg.logger.as_deref(), "warm-up failed: {}", e.message());
        }
        res
    }

    /// Give a process back: kept warm if alive and the pool wants it, else disposed. After `close`,
    /// releasing is a no-op (close disposed it).
    pub fn release(&self, p: Proc, kill: bool) -> Result<(), NotLent> {
        let alive = !kill && p.is_alive();
        let kept = {
            let mut sh = self.inner.lock();
            if sh.lent.remove(&key(&p)).is_none() {
                return if sh.pool.is_closed() { Ok(()) } else { Err(NotLent) };
            }
            alive && sh.pool.give_back(p.clone()).is_none()
        };
        if kept {
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
                if self.inner.lock().pool.in_flight() == 0 {
                    break;
                }
                n.await;
            }
            let d = &self.inner.disposals;
            loop {
                let n = d.settled.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if d.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                n.await;
            }
        })
        .await;
        self.inner.emit(PoolEvent::Closed);
    }
}

/// A measured pool's gauges (`tether.metrics`): its processes by state and its health.
impl crate::metrics::Source for Inner {
    fn observe(&self, instrument: crate::metrics::Instrument, out: &mut crate::metrics::Gauges) {
        use crate::metrics::Instrument;
        let Some(labels) = &self.metrics else { return };
        match instrument {
            Instrument::PoolProcesses => {
                let (idle, lent, starting) = {
                    let sh = self.lock();
                    (sh.pool.idle(), sh.lent.len(), sh.pool.in_flight())
                };
                for (state, n) in [("idle", idle), ("in_use", lent), ("starting", starting)] {
                    out.add(labels, instrument, Some(("state", state.into())), n as f64);
                }
            }
            Instrument::PoolHealthy => {
                out.add(labels, instrument, None, f64::from(u8::from(self.lock().pool.healthy())))
            }
            _ => {}
        }
    }
}

/// The maintainer: starts the spawns the machine asks for, and sleeps until its next deadline (the end
/// of a respawn backoff) or until something changes.
async fn maintain(inner: Arc<Inner>) {
    loop {
        let woken = inner.wake_maintainer.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (starts, deadline) = {
            let mut sh = inner.lock();
            if sh.pool.is_closed() {
                return;
            }
            (sh.pool.poll_spawns(now()), sh.pool.poll_timeout())
        };
        for s in starts {
            let guard = InFlight { inner: inner.clone(), id: s.id, armed: true };
            let h = tokio::spawn(spawn_one(guard));
            inner.spawn_tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(s.id, h.abort_handle());
        }
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(Instant::from_std(at)) => {}
                    _ = woken => {}
                }
            }
            None => woken.await,
        }
    }
}

/// Owns one spawn in flight: an aborted spawn (pool closed) stops counting on drop.
struct InFlight {
    inner: Arc<Inner>,
    id: SpawnId,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.spawn_tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        if self.armed {
            self.inner.lock().pool.spawn_dropped(self.id);
            self.inner.changed.notify_waiters();
        }
    }
}

async fn spawn_one(mut guard: InFlight) {
    let inner = guard.inner.clone();
    let limit = inner.cfg.initialize_timeout;
    let outcome = match tokio::time::timeout(limit + SPAWN_GRACE, inner.spawner.spawn(limit)).await {
        Ok(r) => r,
        // dropping the spawn future kills a native child (kill_on_drop) and tokio reaps it
        Err(_) => {
            Err(format!("initialization did not finish within {:.1}s; the process was killed", limit.as_secs_f64()))
        }
    };
    let failed = outcome.is_err();
    if let Some(labels) = &inner.metrics {
        let what = if failed { crate::metrics::Instrument::SpawnFailures } else { crate::metrics::Instrument::Spawns };
        crate::metrics::count(labels, what, None, 1);
    }
    let mut events = Vec::new();
    let mut to_dispose = None;
    {
        let mut sh = inner.lock();
        guard.armed = false;
        match outcome {
            Ok(p) => {
                let (proc, k) = (p.describe(), key(&p));
                let s = sh.pool.spawn_succeeded(guard.id, p, now());
                events.push(PoolEvent::Spawned { proc, took: s.took });
                if s.recovered {
                    events.push(PoolEvent::Health { healthy: true });
                }
                match s.surplus {
                    Some(surplus) => to_dispose = Some(surplus),
                    None => {
                        sh.unused.insert(k);
                    }
                }
            }
            Err(cause) => {
                let f = sh.pool.spawn_failed(guard.id, cause.clone(), now());
                events = failure_events(cause, f);
            }
        }
    }
    // log and notify after releasing the lock
    report(&inner, events);
    if let Some((p, why)) = to_dispose {
        inner.dispose(p, why);
    }
    // asked outside the lock: the spawner may need the GIL, which a thread holding it may wait on us for
    if failed && !inner.lock().pool.is_closed() && inner.spawner.gone() {
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

/// What a failure reports: the failure, and the pool turning unhealthy if it did.
fn failure_events(cause: String, f: crate::pool_state::Failed) -> Vec<PoolEvent> {
    let mut events = vec![PoolEvent::SpawnFailed { cause, consecutive: f.consecutive, retry_in: f.retry_in }];
    if f.turned_unhealthy {
        events.push(PoolEvent::Health { healthy: false });
    }
    events
}

/// Log and emit `events` (outside the pool's lock).
fn report(inner: &Inner, events: Vec<PoolEvent>) {
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
}
