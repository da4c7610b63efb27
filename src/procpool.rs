//! A prewarmed process pool whose `acquire` never hangs (seed 004).
//!
//! * A maintainer task keeps `idle + in-flight spawns` at `target_idle` plus the number of waiting
//!   acquirers, never more than `max_concurrent_spawns` initializing at once, and after a failed spawn
//!   waits the `respawn` backoff before the next one (a crash-looping child cannot spin the CPU).
//! * `acquire` takes an idle process under the pool lock, in the same poll that returns it, so a
//!   cancelled acquire never consumes-and-drops one. Dead idle processes are evicted, not handed out.
//! * An acquire *attempt* fails only when every spawn in flight has settled without producing a process
//!   (peers still initializing do not burn an attempt); after `acquire_attempts` failed attempts it
//!   raises `Exhausted` with every failure's cause. An optional timeout bounds the whole acquire.
//! * `initialize_timeout` bounds each spawn (the spawn future is dropped: a native child is killed).
//! * Every process leaves through `dispose` (kill + reap for native children): on release with kill,
//!   eviction, shrink, close, and spawns that finish after close.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::backoff::{Backoff, Delays};

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
}

pub type Proc = Arc<dyn ProcHandle>;

impl std::fmt::Debug for dyn ProcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

pub trait Spawner: Send + Sync + 'static {
    /// Start and initialize one process; `Err` carries the cause (stderr tail included for children).
    fn spawn(&self) -> BoxFuture<Result<Proc, String>>;
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            num_idle: 1,
            max_concurrent_spawns: 1,
            initialize_timeout: Duration::from_secs(10),
            acquire_attempts: 3,
            respawn: Backoff { initial: 0.1, factor: 2.0, max_delay: 10.0, ..Default::default() },
            unhealthy_after: 2,
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

#[derive(Debug, Clone, PartialEq)]
pub enum AcquireError {
    /// Every acquire attempt ended with all spawns failed.
    Exhausted {
        attempts: u32,
        failures: Vec<String>,
    },
    TimedOut {
        timeout: Duration,
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
            AcquireError::TimedOut { timeout, failures } => {
                format!("no process within {:.1}s: {}", timeout.as_secs_f64(), causes(failures))
            }
            AcquireError::Closed => "the pool is closed".into(),
        }
    }
}

fn key(p: &Proc) -> usize {
    Arc::as_ptr(p) as *const () as usize
}

struct State {
    idle: VecDeque<Proc>,
    /// Handed out and not yet released: disposed by `close` too, so nothing outlives the pool.
    lent: HashMap<usize, Proc>,
    in_flight: usize,
    waiters: usize,
    target_idle: usize,
    closed: bool,
    consecutive_failures: u32,
    healthy: bool,
    /// Every failure cause, numbered; acquirers read the ones since their attempt began.
    failures: Vec<String>,
    failure_total: u64,
    next_spawn_at: Option<Instant>,
    delays: Delays,
    spawns: u64,
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
    /// A process just taken from `idle`: lend it if alive, else evict it. Never called under the lock.
    fn check_out(&self, p: Proc) -> Option<Proc> {
        if p.is_alive() {
            self.lock().lent.insert(key(&p), p.clone());
            self.wake_maintainer.notify_one(); // replace what was taken
            return Some(p);
        }
        let what = p.describe();
        self.emit(PoolEvent::Evicted { proc: what.clone(), reason: "died while idle".into() });
        tracing::info!(target: LOG, proc = %what, "evicted {what}: it died while idle");
        self.dispose(p, "died while idle");
        self.wake_maintainer.notify_one();
        None
    }

    fn dispose(&self, p: Proc, reason: &str) {
        let what = p.describe();
        tracing::debug!(target: LOG, proc = %what, reason, "disposing {what}: {reason}");
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

/// Keeps `waiters` right whatever way an acquire ends.
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiters -= 1;
    }
}

impl Pool {
    pub fn new(cfg: PoolConfig, spawner: Arc<dyn Spawner>) -> Pool {
        let (events, _) = broadcast::channel(1024);
        let delays = cfg.respawn.delays_unbounded();
        Pool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    idle: VecDeque::new(),
                    lent: HashMap::new(),
                    in_flight: 0,
                    waiters: 0,
                    target_idle: cfg.num_idle,
                    closed: false,
                    consecutive_failures: 0,
                    healthy: true,
                    failures: Vec::new(),
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
        }
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
        inner.lock().waiters += 1;
        let _waiting = Waiting(inner);
        inner.wake_maintainer.notify_one();
        let mut failures: Vec<String> = Vec::new();
        let body = async {
            let mut attempt = 1u32;
            let mut seen = inner.lock().failure_total;
            loop {
                let n = inner.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                // take a live idle process (evicting dead ones), or judge the attempt
                loop {
                    let (candidate, settled_failed) = {
                        let mut st = inner.lock();
                        if st.closed {
                            return Err(AcquireError::Closed);
                        }
                        let c = st.idle.pop_front();
                        let new_failures = (st.failure_total - seen) as usize;
                        let settled = c.is_none() && st.in_flight == 0 && new_failures > 0;
                        if settled {
                            let from = st.failures.len().saturating_sub(new_failures);
                            failures.extend(st.failures[from..].iter().cloned());
                            seen = st.failure_total;
                        }
                        (c, settled)
                    };
                    if let Some(p) = candidate {
                        match inner.check_out(p) {
                            Some(p) => return Ok(p),
                            None => continue,
                        }
                    }
                    if settled_failed {
                        if attempt >= inner.cfg.acquire_attempts {
                            return Err(AcquireError::Exhausted {
                                attempts: attempt,
                                failures: std::mem::take(&mut failures),
                            });
                        }
                        tracing::debug!(target: LOG, attempt, "acquire attempt {attempt} failed: every spawn in flight failed; retrying");
                        attempt += 1;
                    }
                    break;
                }
                n.await;
            }
        };
        let res = match timeout {
            Some(t) => match tokio::time::timeout(t, body).await {
                Ok(r) => r,
                Err(_) => {
                    let st = inner.lock();
                    let recent = st.failures.iter().rev().take(5).rev().cloned().collect();
                    Err(AcquireError::TimedOut { timeout: t, failures: recent })
                }
            },
            None => body.await,
        };
        if let Err(e) = &res {
            if let AcquireError::Exhausted { attempts, failures } = e {
                inner.emit(PoolEvent::Exhausted { attempts: *attempts, failures: failures.clone() });
            }
            tracing::error!(target: LOG, "acquire failed: {}", e.message());
        }
        res
    }

    /// Give a process back: kept warm if alive and the pool wants it, else disposed.
    pub fn release(&self, p: Proc, kill: bool) {
        let alive = !kill && p.is_alive();
        let keep = {
            let mut st = self.inner.lock();
            st.lent.remove(&key(&p));
            if alive && !st.closed && st.idle.len() < st.target_idle {
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
    }

    /// Close: fail waiters, abort in-flight spawns (their children are killed), kill and reap idle
    /// processes. Bounded: a few seconds at most, whatever `initialize_timeout` is.
    pub async fn close(&self) {
        let idle: Vec<Proc> = {
            let mut st = self.inner.lock();
            st.closed = true;
            let mut all: Vec<Proc> = st.idle.drain(..).collect();
            all.extend(st.lent.drain().map(|(_, p)| p));
            all
        };
        let tasks: Vec<_> =
            self.inner.spawn_tasks.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, h)| h).collect();
        for t in tasks {
            t.abort();
        }
        self.inner.changed.notify_waiters();
        self.inner.wake_maintainer.notify_one();
        let mut disposals = Vec::new();
        for p in idle {
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
        let to_start = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            let want = (st.target_idle + st.waiters).saturating_sub(st.idle.len() + st.in_flight);
            let room = inner.cfg.max_concurrent_spawns.saturating_sub(st.in_flight);
            let now = Instant::now();
            match st.next_spawn_at {
                Some(at) if at > now && want > 0 => {
                    sleep_until = Some(at);
                    0
                }
                _ => {
                    let n = want.min(room);
                    st.in_flight += n;
                    st.spawns += n as u64;
                    n
                }
            }
        };
        for _ in 0..to_start {
            let id = SPAWN_IDS.fetch_add(1, Ordering::Relaxed);
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
            self.inner.lock().in_flight -= 1;
            self.inner.changed.notify_waiters();
        }
    }
}

async fn spawn_one(mut guard: InFlight) {
    let inner = guard.inner.clone();
    let t0 = Instant::now();
    let limit = inner.cfg.initialize_timeout;
    let outcome = match tokio::time::timeout(limit, inner.spawner.spawn()).await {
        Ok(r) => r,
        // dropping the spawn future kills a native child (kill_on_drop) and tokio reaps it
        Err(_) => {
            Err(format!("initialization did not finish within {:.1}s; the process was killed", limit.as_secs_f64()))
        }
    };
    let mut events = Vec::new();
    let mut to_dispose = None;
    {
        let mut st = inner.lock();
        st.in_flight -= 1;
        guard.armed = false;
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
                    to_dispose = Some(p);
                } else {
                    st.idle.push_back(p);
                }
            }
            Err(cause) => {
                st.consecutive_failures += 1;
                st.failure_total += 1;
                st.failures.push(cause.clone());
                if st.failures.len() > 64 {
                    st.failures.drain(..32);
                }
                let retry_in = st.delays.next().unwrap_or(Duration::from_secs_f64(inner.cfg.respawn.max_delay));
                st.next_spawn_at = Some(Instant::now() + retry_in);
                events.push(PoolEvent::SpawnFailed { cause, consecutive: st.consecutive_failures, retry_in });
                if st.healthy && st.consecutive_failures >= inner.cfg.unhealthy_after {
                    st.healthy = false;
                    events.push(PoolEvent::Health { healthy: false });
                }
            }
        }
    }
    // log and notify after releasing the lock
    for ev in events {
        match &ev {
            // a crash loop must not flood the logs: the first failures, then every 10th
            PoolEvent::SpawnFailed { cause, consecutive, retry_in } if *consecutive <= 3 || consecutive % 10 == 0 => {
                tracing::warn!(target: LOG,
                consecutive = *consecutive, retry_in_s = retry_in.as_secs_f64(), error = %cause,
                "spawn failed ({consecutive} in a row{}): {cause}; next spawn in {:.2}s",
                if *consecutive > 3 { ", only every 10th is logged" } else { "" }, retry_in.as_secs_f64())
            }
            PoolEvent::SpawnFailed { cause, consecutive, .. } => {
                tracing::debug!(target: LOG, consecutive = *consecutive, error = %cause,
                "spawn failed ({consecutive} in a row): {cause}")
            }
            PoolEvent::Spawned { proc, took } => {
                tracing::debug!(target: LOG, proc = %proc, took_ms = took.as_secs_f64() * 1000.0, "spawned {proc}")
            }
            PoolEvent::Health { healthy: false } => {
                tracing::error!(target: LOG, "pool unhealthy: it cannot produce processes")
            }
            PoolEvent::Health { healthy: true } => tracing::info!(target: LOG, "pool healthy again"),
            _ => {}
        }
        inner.emit(ev);
    }
    if let Some(p) = to_dispose {
        inner.dispose(p, "spawned after close");
    }
    inner.changed.notify_waiters();
    inner.wake_maintainer.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use std::sync::atomic::AtomicU32;

    struct Fake {
        alive: AtomicBool,
        disposed: Arc<AtomicU32>,
        id: u32,
    }

    impl ProcHandle for Fake {
        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::SeqCst)
        }
        fn dispose(&self) -> BoxFuture<()> {
            self.disposed.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }
        fn describe(&self) -> String {
            format!("fake#{}", self.id)
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    /// Spawns succeed or fail per a script; `None` entries hang forever.
    struct Scripted {
        script: Mutex<VecDeque<Option<Result<Duration, String>>>>,
        default: Option<Result<Duration, String>>,
        calls: AtomicU32,
        disposed: Arc<AtomicU32>,
    }

    impl Scripted {
        fn new(script: Vec<Option<Result<Duration, String>>>, default: Option<Result<Duration, String>>) -> Arc<Self> {
            Arc::new(Scripted {
                script: Mutex::new(script.into()),
                default,
                calls: AtomicU32::new(0),
                disposed: Arc::new(AtomicU32::new(0)),
            })
        }
    }

    impl Spawner for Scripted {
        fn spawn(&self) -> BoxFuture<Result<Proc, String>> {
            let id = self.calls.fetch_add(1, Ordering::SeqCst);
            let step = self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.default.clone());
            let disposed = self.disposed.clone();
            Box::pin(async move {
                match step {
                    None => std::future::pending().await,
                    Some(Err(e)) => Err(e),
                    Some(Ok(d)) => {
                        tokio::time::sleep(d).await;
                        Ok(Arc::new(Fake { alive: AtomicBool::new(true), disposed, id }) as Proc)
                    }
                }
            })
        }
    }

    fn cfg(attempts: u32, concurrent: usize) -> PoolConfig {
        PoolConfig {
            num_idle: 0,
            max_concurrent_spawns: concurrent,
            initialize_timeout: Duration::from_secs(5),
            acquire_attempts: attempts,
            respawn: Backoff { initial: 0.1, factor: 2.0, max_delay: 1.0, jitter: Jitter::None, ..Default::default() },
            unhealthy_after: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_spawns_fail_raises_exhausted_naming_causes() {
        let sp = Scripted::new(vec![], Some(Err("ImportError: no module named agent".into())));
        let pool = Pool::new(cfg(3, 1), sp.clone());
        let err = pool.acquire(None).await.unwrap_err();
        match &err {
            AcquireError::Exhausted { attempts, failures } => {
                assert_eq!(*attempts, 3);
                assert_eq!(failures.len(), 3);
                assert!(failures[0].contains("ImportError"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.message().contains("3x ImportError"), "{}", err.message());
        assert!(!pool.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn peers_in_flight_do_not_burn_an_attempt() {
        // two concurrent spawns: one fails fast, the other succeeds later: one attempt is enough
        let sp =
            Scripted::new(vec![Some(Err("boom".into())), Some(Ok(Duration::from_secs(2)))], Some(Err("late".into())));
        let mut c = cfg(1, 2);
        c.num_idle = 1; // with one waiter, the maintainer wants 2
        let pool = Pool::new(c, sp.clone());
        let p = pool.acquire(None).await.unwrap();
        assert_eq!(p.describe(), "fake#1");
    }

    #[tokio::test(start_paused = true)]
    async fn hung_initialization_times_out_and_is_retried() {
        let sp = Scripted::new(vec![None], Some(Ok(Duration::from_millis(10))));
        let pool = Pool::new(cfg(2, 1), sp.clone());
        let t0 = Instant::now();
        let p = pool.acquire(None).await.unwrap();
        assert_eq!(p.describe(), "fake#1");
        // 5 s init timeout + 0.1 s respawn backoff + 10 ms init
        assert!(
            t0.elapsed() >= Duration::from_millis(5110) && t0.elapsed() < Duration::from_secs(6),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_is_paced_by_the_backoff() {
        let sp = Scripted::new(vec![], Some(Err("exit 1".into())));
        let mut c = cfg(1000, 4);
        c.num_idle = 4;
        let pool = Pool::new(c, sp.clone());
        pool.start();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 0.1 + 0.2 + 0.4 + 0.8 + 1 + 1 ... : about a dozen spawn rounds in 10 s, not thousands
        let n = sp.calls.load(Ordering::SeqCst);
        assert!(n <= 4 * 15, "{n} spawns in 10 s");
        assert!(!pool.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn dead_idle_process_is_evicted_not_handed_out() {
        let sp = Scripted::new(vec![], Some(Ok(Duration::from_millis(1))));
        let mut c = cfg(3, 1);
        c.num_idle = 1;
        let pool = Pool::new(c, sp.clone());
        pool.start();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.idle(), 1);
        {
            let st = pool.inner.lock();
            let f = st.idle[0].as_any().downcast_ref::<Fake>().unwrap();
            f.alive.store(false, Ordering::SeqCst);
        }
        let p = pool.acquire(None).await.unwrap();
        assert_eq!(p.describe(), "fake#1");
        assert_eq!(sp.disposed.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_acquire_leaks_nothing_and_timeout_is_bounded() {
        let sp = Scripted::new(vec![None, None], Some(Ok(Duration::from_millis(1))));
        let pool = Pool::new(cfg(3, 1), sp.clone());
        let r = pool.acquire(Some(Duration::from_secs(1))).await;
        assert!(matches!(r, Err(AcquireError::TimedOut { .. })));
        assert_eq!(pool.inner.lock().waiters, 0);
        let p = tokio::time::timeout(Duration::from_secs(60), pool.acquire(None)).await.unwrap().unwrap();
        pool.release(p, true);
        pool.close().await;
        assert!(matches!(pool.acquire(None).await, Err(AcquireError::Closed)));
    }
}

// ------------------------------------------------------------------------------------------------
// Native spawner: `command=[...]` children speaking length-prefixed frames over stdin/stdout.
// ------------------------------------------------------------------------------------------------

/// Frames are a 4-byte big-endian length and that many bytes. A child signals readiness with the
/// frame `b"ready"` (see `python -m tether.worker`).
pub const READY: &[u8] = b"ready";
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
const STDERR_TAIL: usize = 4096;

pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if data.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME}", data.len()),
        ));
    }
    w.write_all(&(data.len() as u32).to_be_bytes()).await?;
    w.write_all(data).await?;
    w.flush().await
}

pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

pub struct NativeSpawner {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<std::path::PathBuf>,
}

type Tail = Arc<Mutex<VecDeque<u8>>>;

fn tail_text(t: &Tail) -> String {
    let t = t.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = t.as_slices();
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    String::from_utf8_lossy(&v).trim().to_string()
}

pub struct NativeProc {
    pid: u32,
    argv0: String,
    child: Mutex<Option<tokio::process::Child>>,
    io: tokio::sync::Mutex<(tokio::process::ChildStdin, tokio::process::ChildStdout)>,
    stderr: Tail,
    exit: Arc<Mutex<Option<std::process::ExitStatus>>>,
}

impl NativeProc {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Exit status once the child exited (None while running).
    pub fn returncode(&self) -> Option<i32> {
        self.poll_exit().map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
        })
    }

    fn poll_exit(&self) -> Option<std::process::ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_none() {
            if let Some(c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    *exit = Some(s);
                }
            }
        }
        *exit
    }

    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr)
    }

    /// Send one frame and read the reply frame.
    pub async fn request(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut io = self.io.lock().await;
        let (stdin, stdout) = &mut *io;
        let r = async {
            write_frame(stdin, data).await?;
            read_frame(stdout).await
        }
        .await;
        r.map_err(|e| {
            let tail = self.stderr_tail();
            format!(
                "worker pid {} failed the request: {e}{}",
                self.pid,
                if tail.is_empty() { String::new() } else { format!("; stderr: {tail}") }
            )
        })
    }
}

impl ProcHandle for NativeProc {
    fn is_alive(&self) -> bool {
        self.poll_exit().is_none() && self.child.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
    fn dispose(&self) -> BoxFuture<()> {
        // `self` is behind an Arc owned by the caller; kill synchronously, reap in the future
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let exit = self.exit.clone();
        Box::pin(async move {
            if let Some(mut c) = child {
                let _ = c.start_kill();
                if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
                    exit.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(st);
                }
            }
        })
    }
    fn describe(&self) -> String {
        format!("{} (pid {})", self.argv0, self.pid)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Spawner for NativeSpawner {
    fn spawn(&self) -> BoxFuture<Result<Proc, String>> {
        let argv = self.argv.clone();
        let env = self.env.clone();
        let cwd = self.cwd.clone();
        Box::pin(async move {
            use tokio::io::AsyncReadExt;
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .envs(env)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            if let Some(d) = cwd {
                cmd.current_dir(d);
            }
            let mut child = cmd.spawn().map_err(|e| format!("could not start {}: {e}", argv[0]))?;
            let pid = child.id().unwrap_or(0);
            let stderr: Tail = Arc::new(Mutex::new(VecDeque::new()));
            if let Some(mut err) = child.stderr.take() {
                let tail = stderr.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = err.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                        t.extend(&buf[..n]);
                        let over = t.len().saturating_sub(STDERR_TAIL);
                        t.drain(..over);
                    }
                });
            }
            let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("child has no stdin/stdout pipes".into());
            };
            match read_frame(&mut stdout).await {
                Ok(f) if f == READY => {}
                outcome => {
                    // the child will not become ready: collect how it died, for the error
                    let _ = child.start_kill();
                    let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                    tokio::time::sleep(Duration::from_millis(20)).await; // let the stderr reader drain
                    let how = match (&outcome, status) {
                        (Ok(f), _) => format!(
                            "sent {:?} instead of the ready frame",
                            String::from_utf8_lossy(&f[..f.len().min(64)])
                        ),
                        (Err(_), Ok(Ok(s))) => format!("exited with {s} before signaling ready"),
                        (Err(e), _) => format!("failed before signaling ready: {e}"),
                    };
                    let tail = tail_text(&stderr);
                    return Err(format!(
                        "{} (pid {pid}) {how}{}",
                        argv[0],
                        if tail.is_empty() { String::new() } else { format!("; stderr: {tail}") }
                    ));
                }
            }
            Ok(Arc::new(NativeProc {
                pid,
                argv0: argv[0].clone(),
                child: Mutex::new(Some(child)),
                io: tokio::sync::Mutex::new((stdin, stdout)),
                stderr,
                exit: Arc::new(Mutex::new(None)),
            }) as Proc)
        })
    }
}

#[cfg(test)]
mod native_tests {
    use super::*;

    fn sh(script: &str) -> Arc<NativeSpawner> {
        Arc::new(NativeSpawner { argv: vec!["sh".into(), "-c".into(), script.into()], env: vec![], cwd: None })
    }

    #[tokio::test]
    async fn failing_child_reports_exit_and_stderr() {
        let err = match sh("echo 'ModuleNotFoundError: agent' >&2; exit 3").spawn().await {
            Err(e) => e,
            Ok(_) => panic!("should fail"),
        };
        assert!(err.contains("exit status: 3") && err.contains("ModuleNotFoundError: agent"), "{err}");
    }

    #[tokio::test]
    async fn ready_child_is_killed_and_reaped_on_dispose() {
        // printf a frame: length 5 then "ready", then sleep
        let p = sh("printf '\\000\\000\\000\\005ready'; exec sleep 30").spawn().await.unwrap();
        assert!(p.is_alive());
        let pid = p.as_any().downcast_ref::<NativeProc>().unwrap().pid();
        p.dispose().await;
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "no zombie left");
    }
}
