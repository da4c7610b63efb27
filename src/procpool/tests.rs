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
    fn spawn(&self, _limit: Duration) -> BoxFuture<Result<Proc, String>> {
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
        logger: None,
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
    let sp = Scripted::new(vec![Some(Err("boom".into())), Some(Ok(Duration::from_secs(2)))], Some(Err("late".into())));
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
    assert_eq!(pool.inner.lock().waiters.len(), 0);
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
