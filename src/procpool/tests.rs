use super::*;
use crate::backoff::{Backoff, Jitter};
use std::collections::VecDeque;
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
    /// Every process it made, for tests that change one behind the pool's back.
    made: Arc<Mutex<Vec<Arc<Fake>>>>,
    /// How long a failing spawn runs before it fails (a setup that raises after loading for a while).
    fails_after: Duration,
}

impl Scripted {
    fn new(script: Vec<Option<Result<Duration, String>>>, default: Option<Result<Duration, String>>) -> Arc<Self> {
        Self::failing_after(script, default, Duration::ZERO)
    }
    fn failing_after(
        script: Vec<Option<Result<Duration, String>>>,
        default: Option<Result<Duration, String>>,
        fails_after: Duration,
    ) -> Arc<Self> {
        Arc::new(Scripted {
            script: Mutex::new(script.into()),
            default,
            calls: AtomicU32::new(0),
            disposed: Arc::new(AtomicU32::new(0)),
            made: Arc::new(Mutex::new(Vec::new())),
            fails_after,
        })
    }
}

impl Spawner for Scripted {
    fn spawn(&self, _limit: Duration) -> BoxFuture<Result<Proc, String>> {
        let id = self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self.script.lock().unwrap().pop_front().unwrap_or_else(|| self.default.clone());
        let disposed = self.disposed.clone();
        let made = self.made.clone();
        let fails_after = self.fails_after;
        Box::pin(async move {
            match step {
                None => std::future::pending().await,
                Some(Err(e)) => {
                    tokio::time::sleep(fails_after).await;
                    Err(e)
                }
                Some(Ok(d)) => {
                    tokio::time::sleep(d).await;
                    let p = Arc::new(Fake { alive: AtomicBool::new(true), disposed, id });
                    made.lock().unwrap().push(p.clone());
                    Ok(p as Proc)
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
        ..PoolConfig::default()
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
    // two concurrent spawns: one fails fast, the other succeeds later: one attempt is enough (the
    // spawns after them never finish, so the pool stays healthy: an unhealthy one fails the acquire at
    // the next failure)
    let sp = Scripted::new(vec![Some(Err("boom".into())), Some(Ok(Duration::from_secs(2)))], None);
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
    // a spawner that ignores its limit: 5 s init timeout + the grace left to spawners, then 0.1 s
    // respawn backoff + 10 ms init
    assert!(t0.elapsed() >= Duration::from_millis(8100) && t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
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
    sp.made.lock().unwrap()[0].alive.store(false, Ordering::SeqCst); // the idle one dies
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
    assert_eq!(pool.inner.lock().pool.waiting(), 0);
    let p = tokio::time::timeout(Duration::from_secs(60), pool.acquire(None)).await.unwrap().unwrap();
    pool.release(p, true).unwrap();
    pool.close().await;
    assert!(matches!(pool.acquire(None).await, Err(AcquireError::Closed)));
}

#[tokio::test(start_paused = true)]
async fn a_failed_spawn_costs_an_attempt_only_of_the_waiter_it_was_made_for() {
    // every other spawn fails; 10 acquirers with 3 attempts each are all served
    let script =
        (0..40).map(|i| Some(if i % 2 == 0 { Err(format!("fail {i}")) } else { Ok(Duration::from_millis(10)) }));
    let sp = Scripted::new(script.collect(), Some(Ok(Duration::from_millis(10))));
    let pool = Pool::new(cfg(3, 1), sp.clone());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire(None).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn an_acquire_lists_only_its_own_failures() {
    // the first spawn, for the idle target, fails before the acquire starts
    let sp = Scripted::new(vec![Some(Err("old".into()))], Some(Err("new".into())));
    let mut c = cfg(2, 1);
    c.num_idle = 1;
    let pool = Pool::new(c, sp.clone());
    pool.start();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = pool.acquire(None).await.unwrap_err();
    assert_eq!(err, AcquireError::Exhausted { attempts: 2, failures: vec!["new".into(), "new".into()] });
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_do_not_grow_idle_beyond_the_target() {
    let sp = Scripted::new(vec![], Some(Ok(Duration::from_secs(1))));
    let pool = Pool::new(cfg(3, 4), sp.clone());
    for _ in 0..4 {
        let _ = tokio::time::timeout(Duration::from_millis(100), pool.acquire(None)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pool.idle(), 0);
    assert_eq!(sp.disposed.load(Ordering::SeqCst), sp.calls.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn release_and_detach_accept_only_what_this_pool_lent() {
    let sp = Scripted::new(vec![], Some(Ok(Duration::from_millis(1))));
    let pool = Pool::new(cfg(3, 1), sp.clone());
    let other = Pool::new(cfg(3, 1), sp.clone());
    let p = pool.acquire(None).await.unwrap();
    assert_eq!(other.release(p.clone(), false), Err(NotLent));
    assert_eq!(other.detach(&p), Err(NotLent));
    pool.release(p.clone(), false).unwrap();
    assert_eq!(pool.release(p.clone(), false), Err(NotLent));
    let q = pool.acquire(None).await.unwrap();
    pool.detach(&q).unwrap();
    assert_eq!(pool.release(q, true), Err(NotLent));
    pool.close().await;
    // only the released one (num_idle=0): a detached process is not the pool's to dispose
    assert_eq!(sp.disposed.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn warm_waits_for_n_idle_or_names_the_failures() {
    let sp = Scripted::new(vec![], Some(Ok(Duration::from_millis(5))));
    let pool = Pool::new(cfg(3, 2), sp.clone());
    pool.warm(Some(3), Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(pool.idle(), 3);
    assert_eq!(pool.target_idle(), 3);

    let sp = Scripted::new(vec![], Some(Err("ImportError: x".into())));
    let pool = Pool::new(cfg(2, 1), sp);
    match pool.warm(None, Some(Duration::from_secs(60))).await {
        Err(AcquireError::WarmFailed { wanted: 0, .. }) => panic!("warm(None) with num_idle=0 is already warm"),
        Err(e) => panic!("{e:?}"),
        Ok(()) => {}
    }
    pool.set_target_idle(2);
    let err = pool.warm(None, Some(Duration::from_secs(60))).await.unwrap_err();
    assert!(matches!(&err, AcquireError::WarmFailed { wanted: 2, idle: 0, attempts: 2, .. }), "{err:?}");
    assert!(err.message().contains("2x ImportError: x"), "{}", err.message());
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_pool_fails_an_acquire_at_the_next_failure_whoever_it_was_for() {
    // every setup fails after 1 s; two idle processes wanted through one spawn slot
    let sp = Scripted::failing_after(vec![], Some(Err("prewarm failed: no model".into())), Duration::from_secs(1));
    let mut c = cfg(3, 1);
    c.num_idle = 2;
    let pool = Pool::new(c, sp.clone());
    pool.start();
    // 1 s, 0.1 s backoff, 1 s: unhealthy at 2.1 s; the third spawn (for the idle target) starts at 2.3 s
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!pool.healthy());
    assert_eq!(sp.calls.load(Ordering::SeqCst), 3);
    let t0 = Instant::now();
    let err = pool.acquire(None).await.unwrap_err();
    // that spawn's failure at 3.3 s ends the acquire: no spawn of its own, no backoff waited
    assert_eq!(t0.elapsed(), Duration::from_millis(800));
    assert_eq!(sp.calls.load(Ordering::SeqCst), 3);
    match &err {
        AcquireError::Unhealthy { attempts: 1, in_row: 3, failures } => {
            assert_eq!(failures, &["prewarm failed: no model".to_string()])
        }
        other => panic!("{other:?}"),
    }
    assert!(err.message().contains("unhealthy (3 spawn failures in a row"), "{}", err.message());

    // arriving during the backoff, an acquire ends with the next spawn's failure, its own
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    assert!(matches!(pool.acquire(None).await, Err(AcquireError::Unhealthy { attempts: 1, in_row: 4, .. })));
    assert_eq!(sp.calls.load(Ordering::SeqCst), 4);
    assert_eq!(t0.elapsed(), Duration::from_millis(1300), "the rest of the 0.4 s backoff, then 1 s");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_takes_over_the_idle_target_spawn_in_flight() {
    // one spawn slot, busy with a spawn for the idle target when the acquire arrives: that spawn is
    // the waiter's now, so with one attempt its failure ends the acquire instead of queueing a second
    let sp = Scripted::failing_after(
        vec![Some(Err("boom".into()))],
        Some(Ok(Duration::from_secs(1))),
        Duration::from_secs(1),
    );
    let mut c = cfg(1, 1);
    c.num_idle = 2;
    let pool = Pool::new(c, sp.clone());
    pool.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = pool.acquire(None).await.unwrap_err();
    assert_eq!(err, AcquireError::Exhausted { attempts: 1, failures: vec!["boom".into()] });
    assert!(pool.healthy(), "one failure: still healthy");
    // a spawn in flight when a waiter arrives serves it: its process goes to the waiter
    tokio::time::sleep(Duration::from_millis(500)).await; // the next spawn began at 1.1 s
    let t0 = Instant::now();
    let p = pool.acquire(None).await.unwrap();
    assert_eq!(p.describe(), "fake#1");
    assert_eq!(t0.elapsed(), Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_pool_spawns_one_at_a_time() {
    // four slots, every spawn fails after 1 s: the first four run together, then one at a time
    let sp = Scripted::failing_after(vec![], Some(Err("exit 1".into())), Duration::from_secs(1));
    let mut c = cfg(3, 4);
    c.num_idle = 4;
    let pool = Pool::new(c, sp.clone());
    pool.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.in_flight(), 4);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(pool.healthy() || pool.in_flight() <= 1, "{} in flight while unhealthy", pool.in_flight());
    }
    // 4, then backoffs of 0.8 (the last of the four failures' delays), 1, 1, ... s plus 1 s each
    assert!(sp.calls.load(Ordering::SeqCst) <= 4 + 5, "{}", sp.calls.load(Ordering::SeqCst));
}
