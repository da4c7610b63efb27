//! Stall detection (stuck reconnecting, the ghost room, waits that never return): dwell deadlines per state, progress deadlines, liveness keys.
//!
//! * **dwell**: `dwell("reconnecting", 20s)` + `set_state("reconnecting")` -> an alarm if the state is
//!   still current 20 s later (stuck-in-reconnecting). Once per entry into the state.
//! * **liveness**: `liveness("audio", 5s)` -> a [`Timer`] whose `beat()` is one clock read and one atomic
//!   store; no beat for 5 s -> an alarm (ghost room: connected, but no frames). Armed from creation,
//!   so a source that never beats also alarms. One alarm per silence; the next beat re-arms.
//! * **progress**: the same mechanism named for attempts: `touch()` on every step; a step that makes no
//!   progress for T alarms, and [`Timer::stalled`] resolves so a caller can abandon the attempt.
//!
//! One monitor task per watchdog sleeps until the earliest deadline. Beats never wake it: it re-reads the
//! timestamps when it wakes and goes back to sleep if they moved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

use crate::watchdog_rules::{quiet_alarm, quiet_deadline, Dwell};
pub use crate::watchdog_rules::{Alarm, AlarmKind};

/// A liveness or progress deadline. Cheap to beat from any thread.
#[derive(Debug)]
pub struct Timer {
    kind: AlarmKind,
    key: String,
    limit: Duration,
    base: Instant,
    /// nanoseconds since `base` of the last beat; u64::MAX = paused
    last: AtomicU64,
    fired: AtomicBool,
    stalled: Notify,
    owner: Weak<Inner>,
}

const PAUSED: u64 = u64::MAX;

impl Timer {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Record activity. Re-arms after an alarm or a pause (waking the monitor only then: it does not
    /// watch a paused timer, so it must learn of the new deadline).
    #[inline]
    pub fn beat(&self) {
        let was_paused = self.last.load(Ordering::Relaxed) == PAUSED;
        // SeqCst store then load, as the monitor's `fire_if_due` stores `fired` then loads `last`: of a
        // beat and a firing that race, one sees the other's write
        self.last.store(self.now_ns(), Ordering::SeqCst);
        if was_paused || self.fired.load(Ordering::SeqCst) {
            self.rearm();
        }
    }

    #[cold]
    fn rearm(&self) {
        self.fired.store(false, Ordering::SeqCst);
        if let Some(o) = self.owner.upgrade() {
            o.wake.notify_one();
        }
    }

    /// Stop watching until the next `beat()` (e.g. while muted on purpose).
    pub fn pause(&self) {
        self.last.store(PAUSED, Ordering::SeqCst);
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Time since the last beat (None while paused).
    pub fn idle(&self) -> Option<Duration> {
        let last = self.last.load(Ordering::SeqCst);
        (last != PAUSED).then(|| Duration::from_nanos(self.now_ns().saturating_sub(last)))
    }

    pub fn has_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Resolves when this timer raises its alarm (no beat for `limit`).
    pub async fn stalled(&self) {
        loop {
            let n = self.stalled.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.fired.load(Ordering::SeqCst) {
                return;
            }
            n.await;
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.fired.load(Ordering::SeqCst) {
            return None;
        }
        self.deadline_of_last_beat()
    }

    fn deadline_of_last_beat(&self) -> Option<Instant> {
        let last = self.last.load(Ordering::SeqCst);
        (last != PAUSED)
            .then(|| Instant::from_std(quiet_deadline((self.base + Duration::from_nanos(last)).into_std(), self.limit)))
    }

    /// Fire if due at `now`; else the deadline to wake for, if any. A beat between the first
    /// look and the firing would not see `fired` and not re-arm: the second look sees its time, and the
    /// firing is taken back.
    fn fire_if_due(&self, now: Instant) -> Result<(), Option<Instant>> {
        match self.deadline() {
            Some(at) if now >= at => {}
            at => return Err(at),
        }
        self.fired.store(true, Ordering::SeqCst);
        match self.deadline_of_last_beat() {
            Some(at) if now < at => {
                self.fired.store(false, Ordering::SeqCst);
                Err(Some(at))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<Dwell>,
    timers: Mutex<Vec<Arc<Timer>>>,
    wake: Notify,
    closed: AtomicBool,
    /// Taken (dropped) on close, which ends every subscriber's stream after the buffered alarms.
    alarms: Mutex<Option<broadcast::Sender<Alarm>>>,
    name: String,
    /// Python logger the alarms are logged to (a key registered by the bindings); None: the module's
    /// `tether.watchdog`. Every record carries it as the `logger` field.
    logger: Option<Arc<str>>,
    /// An application handler reports the alarms (see `handle_with`): every alarm goes to it, and the
    /// record is DEBUG. Unbounded: an alarm is never dropped between the monitor and the handler
    /// (a burst of thousands of silent sources must not end the handler's stream, as a bounded
    /// broadcast's lag would); taken on close.
    handler: Mutex<Option<mpsc::UnboundedSender<Alarm>>>,
    /// Set when the watchdog is measured (`tether.metrics`): its alarms are counted by kind.
    metrics: Option<crate::metrics::Labels>,
}

/// A watchdog. Dropping it (or `close()`) stops its monitor task.
#[derive(Debug)]
pub struct Watchdog {
    inner: Arc<Inner>,
}

impl Watchdog {
    /// Create and start the monitor on the current tokio runtime.
    pub fn new(name: &str) -> Watchdog {
        Self::new_on(name, None, &tokio::runtime::Handle::current())
    }

    pub fn new_on(name: &str, logger: Option<Arc<str>>, rt: &tokio::runtime::Handle) -> Watchdog {
        let (alarms, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            state: Mutex::new(Dwell::default()),
            timers: Mutex::new(Vec::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            alarms: Mutex::new(Some(alarms)),
            name: name.to_string(),
            logger,
            handler: Mutex::new(None),
            metrics: crate::metrics::labels(&[("name", name)]),
        });
        rt.spawn(monitor(Arc::downgrade(&inner)));
        Watchdog { inner }
    }

    /// The `logger=` key its records carry.
    pub fn logger(&self) -> Option<Arc<str>> {
        self.inner.logger.clone()
    }

    /// Each alarm is reported once: by a handler the application gave (the bindings' `on_alarm`), as a
    /// custom exception handler replaces asyncio's default report, or else by a WARNING record. From
    /// this call on every alarm goes to the returned receiver (until close) and the record is DEBUG, so
    /// an alarm the handler prints or logs is not printed twice.
    pub fn handle_with(&self) -> mpsc::UnboundedReceiver<Alarm> {
        let (tx, rx) = mpsc::unbounded_channel();
        if !self.inner.closed.load(Ordering::SeqCst) {
            *self.inner.handler.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        }
        rx
    }

    /// Alarms from now on; the stream ends when the watchdog is closed.
    pub fn subscribe(&self) -> broadcast::Receiver<Alarm> {
        match &*self.inner.alarms.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Alarm when `state` stays current longer than `limit`.
    pub fn dwell(&self, state: &str, limit: Duration) {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).limit(state, limit);
        self.inner.wake.notify_one();
    }

    /// Enter `state` (re-entering the current state restarts its clock).
    pub fn set_state(&self, state: &str) {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).enter(state, Instant::now().into_std());
        self.inner.wake.notify_one();
    }

    pub fn state(&self) -> Option<(String, Duration)> {
        let st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let (current, entered) = st.current()?;
        Some((current.to_string(), Instant::now().into_std().saturating_duration_since(entered)))
    }

    pub fn liveness(&self, key: &str, limit: Duration) -> Arc<Timer> {
        self.timer(AlarmKind::Liveness, key, limit)
    }

    pub fn progress(&self, key: &str, limit: Duration) -> Arc<Timer> {
        self.timer(AlarmKind::Progress, key, limit)
    }

    fn timer(&self, kind: AlarmKind, key: &str, limit: Duration) -> Arc<Timer> {
        let t = Arc::new(Timer {
            kind,
            key: key.to_string(),
            limit,
            base: Instant::now(),
            last: AtomicU64::new(0),
            fired: AtomicBool::new(false),
            stalled: Notify::new(),
            owner: Arc::downgrade(&self.inner),
        });
        self.inner.timers.lock().unwrap_or_else(|p| p.into_inner()).push(t.clone());
        self.inner.wake.notify_one();
        t
    }

    /// Stop watching `timer`.
    pub fn remove(&self, timer: &Arc<Timer>) {
        self.inner.timers.lock().unwrap_or_else(|p| p.into_inner()).retain(|t| !Arc::ptr_eq(t, timer));
    }

    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.alarms.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.inner.handler.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.inner.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.close();
    }
}

fn fire(inner: &Inner, alarm: Alarm) {
    if let Some(labels) = &inner.metrics {
        crate::metrics::count(
            labels,
            crate::metrics::Instrument::Alarms,
            Some(("kind", alarm.kind.as_str().into())),
            1,
        );
    }
    let (logger, elapsed_s, limit_s) =
        (inner.logger.as_deref(), alarm.elapsed.as_secs_f64(), alarm.limit.as_secs_f64());
    let handler = inner.handler.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if handler.is_some() {
        tracing::debug!(target: "tether::watchdog", logger, watchdog = %inner.name, kind = alarm.kind.as_str(), key = %alarm.name,
            elapsed_s, limit_s, "{}", alarm.message);
    } else {
        tracing::warn!(target: "tether::watchdog", logger, watchdog = %inner.name, kind = alarm.kind.as_str(), key = %alarm.name,
            elapsed_s, limit_s, "{}", alarm.message);
    }
    if let Some(h) = handler {
        let _ = h.send(alarm.clone());
    }
    let tx = inner.alarms.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(tx) = tx {
        let _ = tx.send(alarm);
    }
}

async fn monitor(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<Alarm> = Vec::new();
        let (dwell, at) = inner.state.lock().unwrap_or_else(|p| p.into_inner()).poll(now.into_std(), &inner.name);
        due.extend(dwell);
        let mut next: Option<Instant> = at.map(Instant::from_std);
        let fired_timers: Vec<Arc<Timer>> = {
            let timers = inner.timers.lock().unwrap_or_else(|p| p.into_inner());
            let mut f = vec![];
            for t in timers.iter() {
                match t.fire_if_due(now) {
                    Ok(()) => f.push(t.clone()),
                    Err(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                    Err(None) => {}
                }
            }
            f
        };
        for t in fired_timers {
            let elapsed = t.idle().unwrap_or(t.limit);
            due.push(quiet_alarm(t.kind, &t.key, elapsed, t.limit, &inner.name));
            t.stalled.notify_waiters();
        }
        // emit after releasing every lock (the log bridge may take the GIL)
        for a in due {
            fire(&inner, a);
        }
        let notified = inner.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // (holding `inner` while asleep is fine: dropping the Watchdog closes it and wakes us)
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_alarm(rx: &mut broadcast::Receiver<Alarm>) -> Alarm {
        tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await.expect("no alarm").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn dwell_fires_once_per_entry() {
        let wd = Watchdog::new("room");
        let mut rx = wd.subscribe();
        wd.dwell("reconnecting", Duration::from_secs(20));
        wd.set_state("connected");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(rx.try_recv().is_err(), "no limit on connected");
        let t0 = Instant::now();
        wd.set_state("reconnecting");
        let a = next_alarm(&mut rx).await;
        assert_eq!(a.kind, AlarmKind::Dwell);
        assert_eq!(a.name, "reconnecting");
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
        assert!(a.message.contains("stuck in \"reconnecting\" for 20.0s"), "{}", a.message);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(rx.try_recv().is_err(), "once per entry");
        // leaving in time: no alarm
        wd.set_state("reconnecting");
        tokio::time::sleep(Duration::from_secs(10)).await;
        wd.set_state("connected");
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_alarms_on_silence_and_rearms() {
        let wd = Watchdog::new("room");
        let mut rx = wd.subscribe();
        let audio = wd.liveness("audio", Duration::from_secs(5));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            audio.beat();
        }
        assert!(rx.try_recv().is_err(), "beating: no alarm");
        let t0 = Instant::now();
        let a = next_alarm(&mut rx).await;
        assert_eq!((a.kind, a.name.as_str()), (AlarmKind::Liveness, "audio"));
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        assert!(audio.has_fired());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(rx.try_recv().is_err(), "one alarm per silence");
        audio.beat();
        assert!(!audio.has_fired());
        let a = next_alarm(&mut rx).await;
        assert_eq!(a.name, "audio");
    }

    #[tokio::test(start_paused = true)]
    async fn beat_after_pause_rearms() {
        let wd = Watchdog::new("t");
        let mut rx = wd.subscribe();
        let t = wd.liveness("audio", Duration::from_secs(1));
        t.pause();
        tokio::time::sleep(Duration::from_secs(5)).await; // the monitor now sleeps with no deadline
        assert!(rx.try_recv().is_err());
        t.beat();
        let a = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.expect("alarm after the beat").unwrap();
        assert_eq!(a.name, "audio");
    }

    #[tokio::test(start_paused = true)]
    async fn never_beating_source_alarms_and_pause_silences() {
        let wd = Watchdog::new("room");
        let mut rx = wd.subscribe();
        let video = wd.liveness("video", Duration::from_secs(3));
        let muted = wd.liveness("muted-mic", Duration::from_secs(1));
        muted.pause();
        let a = next_alarm(&mut rx).await;
        assert_eq!(a.name, "video");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(rx.try_recv().is_err(), "paused timer stays quiet");
        drop(video);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_stalled_resolves() {
        let wd = Watchdog::new("signal");
        let p = wd.progress("resume attempt", Duration::from_secs(2));
        let t0 = Instant::now();
        p.touch_for_test();
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.beat();
        p.stalled().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn close_stops_the_monitor() {
        let wd = Watchdog::new("x");
        let mut rx = wd.subscribe();
        let _t = wd.liveness("k", Duration::from_secs(1));
        wd.close();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Empty) | Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    impl Timer {
        fn touch_for_test(&self) {
            self.beat()
        }
    }
}
