//! The `on_connect` hook of the supervised WebSocket: an application-level handshake (livekit's
//! RegisterWorkerRequest -> RegisterWorkerResponse, Stream's JoinRequest -> JoinResponse) that runs on
//! every new socket before anything queued is written, and decides when the attempt counts as connected.
//!
//! While the hook runs, the session serves it: `send` writes straight to the socket, `recv` reads the
//! next data frame for the hook. The socket is read only while the hook waits for a message, so whatever
//! the hook does not take stays on the socket, in order, for the application.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::ws::{
    answer_close, close_error, fail_connection, read_error, WsConfig, WsError, CLOSED_WITHOUT_CLOSE_FRAME,
};
use crate::ws_close_tap::CloseSeen;
use crate::ws_wait::{self, Waiting};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the hook is told about the attempt it runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeInfo {
    /// 1 for the first connect, then the attempt number within the current outage.
    pub attempt: u32,
    /// "connect" for the first connect, then the ladder rung of this attempt.
    pub strategy: Arc<str>,
    /// The connection was connected before (the application may resume its session).
    pub reconnect: bool,
}

/// The application's handshake. `Ok` means the attempt is connected; `Err` fails the attempt (retried on
/// the ladder unless the error is fatal).
pub trait OnConnect: Send + Sync + 'static {
    fn run(&self, hs: Handshake) -> BoxFuture<Result<(), WsError>>;
}

#[derive(Clone)]
pub struct OnConnectHook(pub Arc<dyn OnConnect>);

impl fmt::Debug for OnConnectHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnConnectHook")
    }
}

type SendRequest = (Message, oneshot::Sender<Result<(), String>>);

struct Channel {
    inbound: Mutex<VecDeque<Message>>,
    /// Why the handshake is over; every later call fails with it.
    ended: Mutex<Option<String>>,
    readable: Notify,
    /// `readable` calls in progress: the session reads the socket only while there is one.
    waiting: AtomicUsize,
    wake_session: Notify,
    outbound: mpsc::UnboundedSender<SendRequest>,
}

impl Channel {
    fn lock_in(&self) -> MutexGuard<'_, VecDeque<Message>> {
        self.inbound.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The hook's handle on the socket, valid while the hook runs.
#[derive(Clone)]
pub struct Handshake {
    pub info: HandshakeInfo,
    ch: Arc<Channel>,
}

impl Handshake {
    /// Queue `msg` for the socket now (so writes keep call order); the receiver resolves once written.
    pub fn start_send(&self, msg: Message) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        if let Some(e) = self.ch.ended() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        self.ch.outbound.send((msg, tx)).map_err(|_| self.ended_text())?;
        Ok(rx)
    }

    /// Write `msg` ahead of every queued application message; resolves once the socket accepted it.
    pub async fn send(&self, msg: Message) -> Result<(), String> {
        let rx = self.start_send(msg)?;
        rx.await.unwrap_or_else(|_| Err(self.ended_text()))
    }

    /// A message read for the hook, if any; `Err` once the handshake is over and nothing is left.
    pub fn try_recv(&self) -> Result<Option<Message>, String> {
        if let Some(m) = self.ch.lock_in().pop_front() {
            return Ok(Some(m));
        }
        match self.ch.ended() {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Resolves once `try_recv` has something to return. Consumes nothing, so cancelling it loses no
    /// message; while it waits, the session reads the socket.
    pub async fn readable(&self) {
        let _waiting = Waiting::new(&self.ch.waiting);
        self.ch.wake_session.notify_one();
        let ch = &self.ch;
        ws_wait::until(&ch.readable, || !ch.lock_in().is_empty() || ch.ended().is_some()).await
    }

    pub async fn recv(&self) -> Result<Message, String> {
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            self.readable().await;
        }
    }

    fn ended_text(&self) -> String {
        self.ch.ended().unwrap_or_else(|| "the on_connect handshake is over".into())
    }
}

async fn write<S>(sink: &mut S, m: Message, done: oneshot::Sender<Result<(), String>>) -> Result<(), WsError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    if let Err(e) = sink.send(m).await {
        let e = WsError::retry(format!("write error during on_connect: {e}"));
        let _ = done.send(Err(e.text.clone()));
        return Err(e);
    }
    let _ = done.send(Ok(()));
    Ok(())
}

/// Run `hook` on a fresh socket, bounded by `open_timeout` as a whole. What ends a read is reported as the
/// session's reads report it: a close frame from the peer is answered, and a peer that breaks the
/// protocol gets the close code that says how (1002, 1007, 1009), each within `close_timeout` (after
/// the hook's bound, so a slow peer cannot turn a protocol error into a timeout). Returns the messages
/// read for the hook but not taken by it: they belong to the application, ahead of anything read later.
/// A measured connection records how long a successful hook took.
pub async fn run_on_connect<S, R>(
    hook: &OnConnectHook,
    info: HandshakeInfo,
    cfg: &WsConfig,
    sink: &mut S,
    stream: &mut R,
    seen: &CloseSeen,
) -> Result<Vec<Message>, WsError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
    R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let (tx, mut requests) = mpsc::unbounded_channel();
    let ch = Arc::new(Channel {
        inbound: Mutex::new(VecDeque::new()),
        ended: Mutex::new(None),
        readable: Notify::new(),
        waiting: AtomicUsize::new(0),
        wake_session: Notify::new(),
        outbound: tx,
    });
    let began = tokio::time::Instant::now();
    let run = hook.0.run(Handshake { info, ch: ch.clone() });
    let (limit, close_timeout) = (cfg.open_timeout, cfg.close_timeout);
    // the close frame that fails the connection, written once the hook is over
    let mut failing = None;
    let serve = async {
        tokio::pin!(run);
        loop {
            let wanted = ch.waiting.load(Ordering::SeqCst) > 0 && ch.lock_in().is_empty();
            tokio::select! {
                biased;
                r = &mut run => {
                    if r.is_ok() {
                        // sends the hook started but did not await still go out before the application's
                        while let Ok((m, done)) = requests.try_recv() {
                            write(sink, m, done).await?;
                        }
                    }
                    return r;
                }
                Some((m, done)) = requests.recv() => write(sink, m, done).await?,
                m = stream.next(), if wanted => match m {
                    None => return Err(WsError::retry(CLOSED_WITHOUT_CLOSE_FRAME)),
                    Some(Err(e)) => {
                        let (err, answer) = read_error(e, cfg);
                        failing = answer;
                        return Err(err);
                    }
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        ch.lock_in().push_back(m);
                        ch.readable.notify_waiters();
                    }
                    // tungstenite queued the pong; it leaves with the next flush
                    Some(Ok(Message::Ping(_))) => sink
                        .flush()
                        .await
                        .map_err(|e| WsError::retry(format!("write error during on_connect: {e}")))?,
                    Some(Ok(Message::Close(f))) => {
                        answer_close(sink, close_timeout).await;
                        return Err(close_error(f, seen.code_and_reason(), cfg));
                    }
                    Some(Ok(_)) => {}
                },
                _ = ch.wake_session.notified() => {}
            }
        }
    };
    // dropping `serve` at the bound cancels the hook (the bindings cancel its Python task)
    let outcome = tokio::time::timeout(limit, serve).await.unwrap_or_else(|_| {
        Err(WsError::retry(format!("on_connect did not finish within open_timeout ({}s)", limit.as_secs_f64())))
    });
    // the hook's own time, before a failing close frame is written
    if let (Ok(()), Some(m)) = (&outcome, &cfg.reconnect.metrics) {
        m.on_connect(began.elapsed());
    }
    if let Some(frame) = failing {
        fail_connection(sink, frame, close_timeout).await;
    }
    let why = match &outcome {
        Ok(()) => "the on_connect handshake is over".to_string(),
        Err(e) => format!("on_connect failed: {}", e.text),
    };
    *ch.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    ch.readable.notify_waiters();
    outcome?;
    let leftover = ch.lock_in().drain(..).collect();
    Ok(leftover)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::time::Duration;

    /// Replies to "join" with the next message read; fails on anything else.
    struct Join;

    impl OnConnect for Join {
        fn run(&self, hs: Handshake) -> BoxFuture<Result<(), WsError>> {
            Box::pin(async move {
                hs.send(Message::text(format!("join reconnect={}", hs.info.reconnect)))
                    .await
                    .map_err(WsError::retry)?;
                match hs.recv().await.map_err(WsError::retry)? {
                    Message::Text(t) if t.as_str() == "joined" => Ok(()),
                    other => Err(WsError::retry(format!("unexpected {other:?}"))),
                }
            })
        }
    }

    /// Starts its send and returns without awaiting it.
    struct FireAndForget;

    impl OnConnect for FireAndForget {
        fn run(&self, hs: Handshake) -> BoxFuture<Result<(), WsError>> {
            let started = hs.start_send(Message::text("register"));
            Box::pin(async move { started.map(drop).map_err(WsError::retry) })
        }
    }

    struct Hang;

    impl OnConnect for Hang {
        fn run(&self, _hs: Handshake) -> BoxFuture<Result<(), WsError>> {
            Box::pin(std::future::pending())
        }
    }

    /// `hook` run as the handshake of a reconnect, bounded by `open_timeout` seconds.
    async fn run_hook<S, R>(
        hook: impl OnConnect + 'static,
        open_timeout: u64,
        sink: &mut S,
        stream: &mut R,
    ) -> Result<Vec<Message>, WsError>
    where
        S: Sink<Message, Error = tungstenite::Error> + Unpin,
        R: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    {
        let info = HandshakeInfo { attempt: 1, strategy: Arc::from("connect"), reconnect: true };
        let cfg = WsConfig {
            open_timeout: Duration::from_secs(open_timeout),
            close_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        run_on_connect(&OnConnectHook(Arc::new(hook)), info, &cfg, sink, stream, &CloseSeen::default()).await
    }

    fn null_sink() -> impl Sink<Message, Error = tungstenite::Error> + Unpin {
        futures_util::sink::drain().sink_map_err(|e: std::convert::Infallible| -> tungstenite::Error { match e {} })
    }

    /// A sink that keeps what is written to it, for asserting the order of writes.
    fn recording_sink() -> (impl Sink<Message, Error = tungstenite::Error> + Unpin, Arc<Mutex<Vec<Message>>>) {
        let written = Arc::new(Mutex::new(vec![]));
        let w = written.clone();
        let sink = Box::pin(futures_util::sink::unfold((), move |(), m: Message| {
            w.lock().unwrap().push(m);
            async { Ok::<_, tungstenite::Error>(()) }
        }));
        (sink, written)
    }

    #[tokio::test]
    async fn hook_writes_first_and_takes_only_what_it_reads() {
        let (mut sink, written) = recording_sink();
        let mut stream = stream::iter(vec![Ok(Message::text("joined")), Ok(Message::text("app"))]);
        let left = run_hook(Join, 5, &mut sink, &mut stream).await.unwrap();
        assert_eq!(*written.lock().unwrap(), vec![Message::text("join reconnect=true")]);
        // "app" was never read: it stays on the stream for the application
        assert!(left.is_empty());
        assert_eq!(stream.next().await.unwrap().unwrap(), Message::text("app"));
    }

    #[tokio::test]
    async fn sends_started_by_the_hook_go_out_before_it_counts_as_done() {
        let (mut sink, written) = recording_sink();
        let mut stream = stream::pending::<Result<Message, tungstenite::Error>>();
        run_hook(FireAndForget, 5, &mut sink, &mut stream).await.unwrap();
        assert_eq!(*written.lock().unwrap(), vec![Message::text("register")]);
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_hook_is_cut_at_the_limit() {
        let mut sink = null_sink();
        let mut stream = stream::pending::<Result<Message, tungstenite::Error>>();
        let err = run_hook(Hang, 3, &mut sink, &mut stream).await.unwrap_err();
        assert!(err.text.contains("did not finish within open_timeout (3s)"), "{}", err.text);
        assert!(!err.fatal);
    }

    #[tokio::test]
    async fn peer_close_during_the_hook_fails_the_attempt() {
        let mut sink = null_sink();
        let mut stream = stream::iter(vec![Ok(Message::Close(None))]);
        let err = run_hook(Join, 5, &mut sink, &mut stream).await.unwrap_err();
        assert_eq!(err.text, "server closed the connection without a status code");
    }

    #[tokio::test]
    async fn a_peer_that_breaks_the_protocol_during_the_hook_gets_the_close_code_that_says_how() {
        use tungstenite::error::ProtocolError;
        use tungstenite::protocol::frame::coding::CloseCode;
        let cases = [
            (tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits), CloseCode::Protocol, "1002"),
            (tungstenite::Error::Utf8("invalid utf-8 sequence".into()), CloseCode::Invalid, "1007"),
        ];
        for (e, code, said) in cases {
            let (mut sink, written) = recording_sink();
            let mut stream = stream::iter(vec![Err(e)]);
            let err = run_hook(Join, 5, &mut sink, &mut stream).await.unwrap_err();
            assert!(err.text.contains(said), "{}", err.text);
            let written = written.lock().unwrap().clone();
            // the hook's own "join" went out first; then the close frame, and nothing after it
            assert!(matches!(&written[..], [_, Message::Close(Some(f))] if f.code == code), "{written:?}");
        }
    }

    #[tokio::test]
    async fn the_end_of_the_stream_during_the_hook_is_reported_as_the_session_reports_it() {
        let (mut sink, written) = recording_sink();
        let mut stream = stream::iter(Vec::<Result<Message, tungstenite::Error>>::new());
        let err = run_hook(Join, 5, &mut sink, &mut stream).await.unwrap_err();
        assert_eq!(err.text, CLOSED_WITHOUT_CLOSE_FRAME);
        assert_eq!(written.lock().unwrap().len(), 1, "no close frame on a connection already gone");
    }
}
