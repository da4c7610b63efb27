//! In-band heartbeat of the supervised WebSocket, for protocols whose liveness is an application
//! message (Stream's HealthCheckRequest/Response) rather than WebSocket pings: a server can keep the TCP
//! connection and answer pings while its application stopped serving this client.
//!
//! Cost on the read path: the reader calls [`HeartbeatWatch::on_inbound`] for each data message, which
//! is one atomic load unless a heartbeat is out and unanswered. Only then is the message noted: a flag
//! when any message counts as the reply, or a cheap clone (the payload is reference-counted) when a
//! predicate decides. The predicate runs in batches, over the messages that arrived since the heartbeat
//! went out, wherever the source runs it (the Python bindings: on the event loop, one hop per batch), and
//! never again once the reply was seen. Replies are still delivered to the application.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::WsError;
use crate::ws_handshake::BoxFuture;

/// Where heartbeats come from and how replies are recognised.
pub trait HeartbeatSource: Send + Sync + 'static {
    /// The next heartbeat message. An error ends the connection with it.
    fn message(&self) -> BoxFuture<Result<Message, WsError>>;
    /// False: any inbound data message counts as the reply, and no message is kept.
    fn has_predicate(&self) -> bool;
    /// Whether any message of `batch` (data messages received since the heartbeat went out) is the reply.
    fn is_reply(&self, batch: Vec<Message>) -> BoxFuture<Result<bool, WsError>>;
}

#[derive(Clone)]
pub struct HeartbeatConfig {
    pub interval: Duration,
    /// No reply within this after a heartbeat went out = the connection is lost.
    pub timeout: Duration,
    pub source: Arc<dyn HeartbeatSource>,
}

impl fmt::Debug for HeartbeatConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatConfig").field("interval", &self.interval).field("timeout", &self.timeout).finish()
    }
}

/// Shared by the session's reader (which notes arrivals) and the heartbeat task; one per connection.
#[derive(Default)]
pub struct HeartbeatWatch {
    /// A heartbeat is out and unanswered.
    armed: AtomicBool,
    keep: AtomicBool,
    seen: AtomicBool,
    candidates: Mutex<Vec<Message>>,
    /// Wakes the heartbeat: a message arrived, or the reader resumed.
    arrived: Notify,
    /// The reader is paused (the application is not reading and the inbound buffer is full): replies
    /// cannot be read, so the reply deadline does not run.
    paused: AtomicBool,
    /// Resumes so far: a resume restarts the reply deadline (replies could not be read before it).
    resumes: AtomicU64,
}

impl HeartbeatWatch {
    /// Called by the reader for every inbound data message.
    pub fn on_inbound(&self, m: &Message) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        if self.keep.load(Ordering::Relaxed) {
            self.candidates.lock().unwrap_or_else(|p| p.into_inner()).push(m.clone());
        } else {
            self.seen.store(true, Ordering::Release);
        }
        self.arrived.notify_one();
    }

    /// Called by the reader when it stops reading.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Called by the reader when it reads again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumes.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_one();
    }

    fn arm(&self, keep: bool) {
        self.candidates.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.seen.store(false, Ordering::Release);
        self.keep.store(keep, Ordering::Relaxed);
        self.armed.store(true, Ordering::Release);
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
    }

    fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.candidates.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How the reason of a loss by a missing heartbeat reply begins (the metrics tell it from other losses
/// by it).
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat timeout:";

/// The heartbeat of one live connection: never returns `Ok`; `Err` when a reply is missing (or the
/// source failed). `send` hands a heartbeat to the writer (false: the writer is gone). While the reader
/// is paused (see [`HeartbeatWatch::pause`]) replies cannot be seen, so the reply deadline waits, and
/// restarts at the resume. A measured connection (`metrics`) records, at a missing reply, how long the
/// peer's application had been silent: since the last reply, or since the connection started.
pub async fn run(
    cfg: Option<&HeartbeatConfig>,
    watch: &HeartbeatWatch,
    send: impl Fn(Message) -> bool,
    metrics: Option<&crate::metrics::Loop>,
) -> Result<(), WsError> {
    let Some(cfg) = cfg else { return std::future::pending().await };
    let predicate = cfg.source.has_predicate();
    let mut next = Instant::now() + cfg.interval;
    let mut last_reply = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let msg = bounded(cfg, "the heartbeat message factory", cfg.source.message()).await?;
        // armed before the write: the reply cannot arrive earlier
        watch.arm(predicate);
        let sent = Instant::now();
        if !send(msg) {
            return std::future::pending().await;
        }
        let answered = wait_reply(cfg, watch, predicate, sent + cfg.timeout).await;
        watch.disarm();
        if !answered? {
            if let Some(m) = metrics {
                m.detected(crate::metrics::LossKind::HeartbeatTimeout, last_reply.elapsed());
            }
            return Err(WsError::retry(format!(
                "{HEARTBEAT_TIMEOUT} no reply within {:.3}s (heartbeat interval {:.3}s)",
                cfg.timeout.as_secs_f64(),
                cfg.interval.as_secs_f64()
            )));
        }
        last_reply = Instant::now();
        next = (sent + cfg.interval).max(Instant::now());
    }
}

/// A call into the source, bounded by the heartbeat timeout: a blocked or stopped event loop must not
/// stall liveness silently.
async fn bounded<T>(
    cfg: &HeartbeatConfig,
    what: &str,
    call: impl Future<Output = Result<T, WsError>>,
) -> Result<T, WsError> {
    tokio::time::timeout(cfg.timeout, call).await.unwrap_or_else(|_| {
        Err(WsError::retry(format!(
            "{HEARTBEAT_TIMEOUT} {what} did not return within {:.3}s (is the event loop blocked?)",
            cfg.timeout.as_secs_f64()
        )))
    })
}

/// Whether a reply arrived by `deadline` (which waits while the reader is paused and restarts when it
/// resumes). A predicate call in progress at the deadline is waited for, within the heartbeat timeout:
/// it judges messages that arrived in time.
async fn wait_reply(
    cfg: &HeartbeatConfig,
    watch: &HeartbeatWatch,
    predicate: bool,
    mut deadline: Instant,
) -> Result<bool, WsError> {
    let mut resumes = watch.resumes.load(Ordering::SeqCst);
    loop {
        let paused = watch.paused.load(Ordering::SeqCst);
        let mut expired = tokio::select! {
            biased;
            _ = watch.arrived.notified() => false,
            _ = tokio::time::sleep_until(deadline), if !paused => true,
        };
        let now_resumes = watch.resumes.load(Ordering::SeqCst);
        if now_resumes != resumes {
            resumes = now_resumes;
            deadline = Instant::now() + cfg.timeout;
            expired = false;
        }
        if watch.paused.load(Ordering::SeqCst) {
            expired = false;
        }
        if expired {
            watch.disarm();
        }
        if !predicate {
            if watch.seen.load(Ordering::Acquire) {
                return Ok(true);
            }
        } else {
            let batch = watch.take();
            if !batch.is_empty() && bounded(cfg, "is_reply", cfg.source.is_reply(batch)).await? {
                return Ok(true);
            }
        }
        if expired {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Src {
        predicate: bool,
        batches: AtomicUsize,
    }

    impl HeartbeatSource for Src {
        fn message(&self) -> BoxFuture<Result<Message, WsError>> {
            Box::pin(async { Ok(Message::text("hb")) })
        }
        fn has_predicate(&self) -> bool {
            self.predicate
        }
        fn is_reply(&self, batch: Vec<Message>) -> BoxFuture<Result<bool, WsError>> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(batch.iter().any(|m| m == &Message::text("pong"))) })
        }
    }

    fn cfg(predicate: bool) -> (HeartbeatConfig, Arc<Src>) {
        let src = Arc::new(Src { predicate, batches: AtomicUsize::new(0) });
        let cfg =
            HeartbeatConfig { interval: Duration::from_secs(1), timeout: Duration::from_secs(1), source: src.clone() };
        (cfg, src)
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_heartbeat_is_a_loss_and_no_message_is_kept_when_idle() {
        let (cfg, _) = cfg(true);
        let watch = HeartbeatWatch::default();
        // before any heartbeat went out nothing is noted
        watch.on_inbound(&Message::text("pong"));
        assert!(watch.take().is_empty());
        let t0 = Instant::now();
        let err = run(Some(&cfg), &watch, |_| true, None).await.unwrap_err();
        assert!(err.text.starts_with("heartbeat timeout"), "{}", err.text);
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn replies_keep_it_alive_and_other_traffic_does_not() {
        let (cfg, src) = cfg(true);
        let watch = Arc::new(HeartbeatWatch::default());
        let w = watch.clone();
        // the peer answers the first three heartbeats, then only chatters
        let answered = Arc::new(AtomicUsize::new(0));
        let a = answered.clone();
        let send = move |_m: Message| {
            let w = w.clone();
            let n = a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                w.on_inbound(&Message::text("chatter"));
                if n < 3 {
                    w.on_inbound(&Message::text("pong"));
                }
            });
            true
        };
        let t0 = Instant::now();
        let err = run(Some(&cfg), &watch, send, None).await.unwrap_err();
        assert!(err.text.starts_with("heartbeat timeout"), "{}", err.text);
        assert_eq!(answered.load(Ordering::SeqCst), 4);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        assert!(src.batches.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test(start_paused = true)]
    async fn without_predicate_any_message_answers() {
        let (cfg, src) = cfg(false);
        let watch = Arc::new(HeartbeatWatch::default());
        let w = watch.clone();
        let send = move |_m: Message| {
            w.on_inbound(&Message::text("anything"));
            true
        };
        let r = tokio::time::timeout(Duration::from_secs(30), run(Some(&cfg), &watch, send, None)).await;
        assert!(r.is_err(), "still alive after 30 s");
        assert_eq!(src.batches.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_reader_is_not_a_loss() {
        let (cfg, _) = cfg(true);
        let watch = HeartbeatWatch::default();
        watch.pause();
        let r = tokio::time::timeout(Duration::from_secs(30), run(Some(&cfg), &watch, |_| true, None)).await;
        assert!(r.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_reply_deadline_restarts_when_the_reader_resumes() {
        let (cfg, _) = cfg(true);
        let watch = Arc::new(HeartbeatWatch::default());
        let w = watch.clone();
        let sent = AtomicUsize::new(0);
        // first heartbeat out at 1.0 s; reader paused 1.5..1.9 s; the reply, held meanwhile, read at 2.5 s
        let send = move |_m: Message| {
            if sent.fetch_add(1, Ordering::SeqCst) > 0 {
                return true;
            }
            let w = w.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                w.pause();
                tokio::time::sleep(Duration::from_millis(400)).await;
                w.resume();
                tokio::time::sleep(Duration::from_millis(600)).await;
                w.on_inbound(&Message::text("pong"));
            });
            true
        };
        let t0 = Instant::now();
        let _attached = crate::metrics::tests::attached_async().await;
        let m = crate::metrics::Loop::new(crate::metrics::labels(&[("name", "heartbeat-metrics")]).unwrap());
        let err = run(Some(&cfg), &watch, send, Some(&m)).await.unwrap_err();
        // the first heartbeat was answered; the second (at 2.5 s) never is: lost at 3.5 s
        assert!(err.text.starts_with("heartbeat timeout: no reply"), "{}", err.text);
        assert_eq!(crate::metrics::LossKind::classify(&err.text), crate::metrics::LossKind::HeartbeatTimeout);
        assert_eq!(t0.elapsed(), Duration::from_millis(3500));
        // silent since the reply read at 2.5 s
        let silences: Vec<f64> = crate::metrics::drain()
            .into_iter()
            .filter(|(_, a, _)| a.contains(&("name", "heartbeat-metrics".into())))
            .map(|(_, _, v)| v)
            .collect();
        assert_eq!(silences, [1.0]);
    }

    struct Stuck {
        factory: bool,
    }

    impl HeartbeatSource for Stuck {
        fn message(&self) -> BoxFuture<Result<Message, WsError>> {
            if self.factory {
                return Box::pin(std::future::pending());
            }
            Box::pin(async { Ok(Message::text("hb")) })
        }
        fn has_predicate(&self) -> bool {
            true
        }
        fn is_reply(&self, _batch: Vec<Message>) -> BoxFuture<Result<bool, WsError>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_factory_or_predicate_is_a_heartbeat_timeout() {
        for (factory, what) in [(true, "the heartbeat message factory"), (false, "is_reply")] {
            let cfg = HeartbeatConfig {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(2),
                source: Arc::new(Stuck { factory }),
            };
            let watch = Arc::new(HeartbeatWatch::default());
            let w = watch.clone();
            let send = move |_m: Message| {
                w.on_inbound(&Message::text("pong"));
                true
            };
            let err = tokio::time::timeout(Duration::from_secs(30), run(Some(&cfg), &watch, send, None))
                .await
                .expect("stalled")
                .unwrap_err();
            assert_eq!(
                err.text,
                format!("heartbeat timeout: {what} did not return within 2.000s (is the event loop blocked?)")
            );
        }
    }
}
