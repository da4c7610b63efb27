//! An embedded WebSocket server with scripted misbehaviour, for tests, benchmarks and the demo.
//!
//! By default it echoes every text/binary message and answers pings. Misbehaviour, switchable at any
//! time: drop connections without a close frame, close them with a code, freeze (stop reading: no pongs,
//! no echoes, socket stays open), refuse handshakes with an HTTP status, delay handshakes, accept and drop
//! at once, stop listening (connection refused), push or flood messages to every client.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone)]
enum Cmd {
    Drop,
    Close(u16, String),
    Freeze,
    Unfreeze,
    Push(Message),
    Flood(u64, usize),
}

#[derive(Debug, Default, Clone)]
struct Mode {
    /// Refuse handshakes with this HTTP status; `refuse_left` counts down when set.
    refuse: Option<u16>,
    refuse_left: Option<u64>,
    handshake_delay: Duration,
    accept_then_drop: bool,
    freeze_new: bool,
    echo: bool,
    /// Forward every client's messages to every other client (a room).
    relay: bool,
    /// Sent to every client right after the handshake (like a join response).
    greeting: Option<Message>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub tcp_accepts: AtomicU64,
    pub handshakes: AtomicU64,
    pub refused: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub pings: AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub tcp_accepts: u64,
    pub handshakes: u64,
    pub refused: u64,
    pub active: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub pings: u64,
}

struct Shared {
    mode: Mutex<Mode>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Cmd>>>,
    next_id: AtomicU64,
    counters: Counters,
    requests: Mutex<Vec<String>>,
    received: Mutex<Vec<Message>>,
    changed: Notify,
    listening: AtomicBool,
}

pub struct SignalServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl SignalServer {
    /// Bind (use port 0 for any free port) and start accepting on the current tokio runtime.
    pub async fn start(host: &str, port: u16) -> std::io::Result<SignalServer> {
        let listener = TcpListener::bind((host, port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode { echo: true, ..Default::default() }),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            requests: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            changed: Notify::new(),
            listening: AtomicBool::new(true),
        });
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(SignalServer { addr, shared, stop, accept_task: Mutex::new(Some(task)) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.shared.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broadcast(&self, cmd: Cmd) -> usize {
        let conns = self.shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().filter(|tx| tx.send(cmd.clone()).is_ok()).count()
    }

    /// Drop every connection without a close frame (TCP FIN, no WebSocket close). Returns how many.
    pub fn drop_all(&self) -> usize {
        self.broadcast(Cmd::Drop)
    }

    /// Close every connection with a close frame.
    pub fn close_all(&self, code: u16, reason: &str) -> usize {
        self.broadcast(Cmd::Close(code, reason.to_string()))
    }

    /// Stop reading on every connection and on new ones: no pongs, no echoes, sockets stay open.
    pub fn freeze(&self) {
        self.mode().freeze_new = true;
        self.broadcast(Cmd::Freeze);
    }

    pub fn unfreeze(&self) {
        self.mode().freeze_new = false;
        self.broadcast(Cmd::Unfreeze);
    }

    /// Refuse handshakes with `status` (e.g. 503, 401); `times` limits how many.
    pub fn refuse(&self, status: u16, times: Option<u64>) {
        let mut m = self.mode();
        m.refuse = Some(status);
        m.refuse_left = times;
    }

    /// Undo `refuse`, `slow_handshake`, `accept_then_drop` and `freeze`.
    pub fn behave(&self) {
        {
            let mut m = self.mode();
            *m = Mode { echo: m.echo, relay: m.relay, greeting: m.greeting.clone(), ..Default::default() };
        }
        self.broadcast(Cmd::Unfreeze);
    }

    pub fn slow_handshake(&self, delay: Duration) {
        self.mode().handshake_delay = delay;
    }

    pub fn accept_then_drop(&self, enabled: bool) {
        self.mode().accept_then_drop = enabled;
    }

    /// Forward each client's text/binary messages to every other client (a room).
    pub fn set_relay(&self, enabled: bool) {
        self.mode().relay = enabled;
    }

    /// Send `msg` to every new client right after its handshake (None: nothing).
    pub fn greet(&self, msg: Option<Message>) {
        self.mode().greeting = msg;
    }

    pub fn set_echo(&self, enabled: bool) {
        self.mode().echo = enabled;
    }

    /// Stop accepting TCP connections (clients get connection refused) or start again.
    pub fn set_listening(&self, on: bool) {
        self.shared.listening.store(on, Ordering::SeqCst);
    }

    pub fn push(&self, msg: Message) -> usize {
        self.broadcast(Cmd::Push(msg))
    }

    /// Send `count` binary messages of `size` bytes to every client as fast as the socket takes them.
    pub fn flood(&self, count: u64, size: usize) -> usize {
        self.broadcast(Cmd::Flood(count, size))
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            tcp_accepts: c.tcp_accepts.load(Ordering::SeqCst),
            handshakes: c.handshakes.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            active: self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            messages_in: c.messages_in.load(Ordering::SeqCst),
            messages_out: c.messages_out.load(Ordering::SeqCst),
            pings: c.pings.load(Ordering::SeqCst),
        }
    }

    /// Request targets (path and query) of every handshake, in order. Not redacted: this is a test server.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn received(&self) -> Vec<Message> {
        self.shared.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until `pred(stats)` holds or `timeout` passes; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.stats()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.stats());
            }
        }
    }

    /// Stop accepting and drop every connection, those still in their handshake too; returns once they
    /// are closed and the port is free, so a server can start on it again (an aborted task drops its
    /// listener later, on the runtime).
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        let task = self.accept_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for SignalServer {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<Notify>) {
    // every connection is a task of this loop's, so that stopping it ends them all: also those still in
    // their handshake, which no command reaches (registered only with their 101)
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.notified() => break,
            Some(_) = conns.join_next() => continue,
            a = listener.accept() => a,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if !shared.listening.load(Ordering::SeqCst) {
            // emulate a dead server: reset immediately
            // linger 0: close sends RST at once (it does not block with a zero timeout)
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        }
        shared.counters.tcp_accepts.fetch_add(1, Ordering::SeqCst);
        shared.changed.notify_waiters();
        conns.spawn(serve(stream, shared.clone()));
    }
    drop(listener);
    conns.shutdown().await;
    shared.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
    shared.changed.notify_waiters();
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mode = shared.mode.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !mode.handshake_delay.is_zero() {
        tokio::time::sleep(mode.handshake_delay).await;
    }
    let refuse = {
        let mut m = shared.mode.lock().unwrap_or_else(|p| p.into_inner());
        match (m.refuse, m.refuse_left) {
            (Some(_), Some(0)) => {
                m.refuse = None;
                m.refuse_left = None;
                None
            }
            (Some(s), Some(n)) => {
                m.refuse_left = Some(n - 1);
                Some(s)
            }
            (s, _) => s,
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let shared_cb = shared.clone();
    let keep = !mode.accept_then_drop;
    // the error type is tungstenite's, fixed by the `Callback` trait
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
        shared_cb.requests.lock().unwrap_or_else(|p| p.into_inner()).push(target);
        if let Some(status) = refuse {
            let mut e = ErrorResponse::new(Some(format!("refused by test server with {status}")));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
                .unwrap_or(tokio_tungstenite::tungstenite::http::StatusCode::SERVICE_UNAVAILABLE);
            return Err(e);
        }
        // registered before the 101 goes out: a command given once the client sees the connection open
        // (`close`, `drop`, `push`, ...) reaches it, queued until the loop below takes it
        if keep {
            shared_cb.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        }
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(_) => {
            shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if refuse.is_some() {
                shared.counters.refused.fetch_add(1, Ordering::SeqCst);
                shared.changed.notify_waiters();
            }
            return;
        }
    };
    shared.counters.handshakes.fetch_add(1, Ordering::SeqCst);
    shared.changed.notify_waiters();
    if !keep {
        drop(ws);
        return;
    }

    let (mut sink, mut stream) = ws.split();
    let mut frozen = mode.freeze_new;
    // commands taken while a send waited, in their order
    let mut later = VecDeque::new();
    let end = 'conn: {
        if let Some(g) = mode.greeting.clone() {
            if let Err(end) = unless_ended(sink.send(g), &mut rx, &mut later).await {
                break 'conn end;
            }
            shared.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let next = match later.pop_front() {
                Some(cmd) => Next::Cmd(Some(cmd)),
                None => tokio::select! {
                    cmd = rx.recv() => Next::Cmd(cmd),
                    msg = stream.next(), if !frozen => Next::Msg(msg),
                },
            };
            match next {
                Next::Cmd(None) => break 'conn Cmd::Drop,
                Next::Cmd(Some(end @ (Cmd::Drop | Cmd::Close(..)))) => break 'conn end,
                Next::Cmd(Some(Cmd::Freeze)) => frozen = true,
                Next::Cmd(Some(Cmd::Unfreeze)) => frozen = false,
                Next::Cmd(Some(Cmd::Push(m))) => {
                    if let Err(end) = unless_ended(sink.send(m), &mut rx, &mut later).await {
                        break 'conn end;
                    }
                    shared.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                }
                Next::Cmd(Some(Cmd::Flood(count, size))) => {
                    let payload = bytes_of(size);
                    let flood = async {
                        for _ in 0..count {
                            sink.feed(Message::Binary(payload.clone())).await?;
                        }
                        sink.flush().await
                    };
                    if let Err(end) = unless_ended(flood, &mut rx, &mut later).await {
                        break 'conn end;
                    }
                    shared.counters.messages_out.fetch_add(count, Ordering::Relaxed);
                }
                Next::Msg(None | Some(Err(_))) => break 'conn Cmd::Drop,
                Next::Msg(Some(Ok(Message::Close(_)))) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                    break 'conn Cmd::Drop;
                }
                Next::Msg(Some(Ok(Message::Ping(_)))) => {
                    // tungstenite queued the pong; flush it out
                    shared.counters.pings.fetch_add(1, Ordering::Relaxed);
                    if let Err(end) = unless_ended(sink.flush(), &mut rx, &mut later).await {
                        break 'conn end;
                    }
                }
                Next::Msg(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                    shared.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut r = shared.received.lock().unwrap_or_else(|p| p.into_inner());
                        if r.len() < 100_000 {
                            r.push(m.clone());
                        }
                    }
                    let (echo, relay) = {
                        let m = shared.mode.lock().unwrap_or_else(|p| p.into_inner());
                        (m.echo, m.relay)
                    };
                    if relay {
                        let conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
                        for (other, tx) in conns.iter() {
                            if *other != id {
                                let _ = tx.send(Cmd::Push(m.clone()));
                            }
                        }
                    }
                    if echo {
                        if let Err(end) = unless_ended(sink.send(m), &mut rx, &mut later).await {
                            break 'conn end;
                        }
                        shared.counters.messages_out.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.changed.notify_waiters();
                }
                Next::Msg(Some(Ok(_))) => {}
            }
        }
    };
    if let Cmd::Close(code, reason) = end {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(Some(frame)))).await;
        // give the client a moment to answer the close, then go
        let _ =
            tokio::time::timeout(Duration::from_millis(500), async { while let Some(Ok(_)) = stream.next().await {} })
                .await;
    }
    shared.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    shared.changed.notify_waiters();
}

/// What the connection's loop waits for next.
enum Next {
    Cmd(Option<Cmd>),
    Msg(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

/// Runs `send` unless a command ending the connection comes first: a send to a client that stopped
/// reading waits for room in its socket for good, and `drop`, `close` and the server's shutdown must
/// still end it. `Err` is how the connection ends (`Cmd::Drop` or `Cmd::Close`; a failed send drops it);
/// commands that do not end it go to `later`, in order.
async fn unless_ended<E>(
    send: impl Future<Output = Result<(), E>>,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    later: &mut VecDeque<Cmd>,
) -> Result<(), Cmd> {
    tokio::pin!(send);
    loop {
        tokio::select! {
            // the send first: one the socket takes at once is made before a close queued behind it
            biased;
            r = &mut send => return r.map_err(|_| Cmd::Drop),
            cmd = rx.recv() => match cmd {
                None => return Err(Cmd::Drop),
                Some(end @ (Cmd::Drop | Cmd::Close(..))) => return Err(end),
                Some(other) => later.push_back(other),
            },
        }
    }
}

fn bytes_of(size: usize) -> tokio_tungstenite::tungstenite::Bytes {
    let v: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_and_counts() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}?token=abc", srv.url())).await.unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text("hi"));
        assert_eq!(srv.requests(), vec!["/?token=abc".to_string()]);
        assert!(srv.wait_until(Duration::from_secs(5), |s| s.messages_in == 1 && s.active == 1).await);
        srv.close_all(4000, "bye");
        let m = ws.next().await.unwrap().unwrap();
        assert!(matches!(m, Message::Close(Some(ref f)) if u16::from(f.code) == 4000), "{m:?}");
    }

    /// A command given as soon as the client sees the connection open reaches it: the server registers
    /// a connection before its 101 goes out, not after (a test's `close()` right after connecting
    /// closed nothing now and then).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_right_after_the_handshake_reaches_the_connection() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        for round in 0..200 {
            let (mut ws, _) = tokio_tungstenite::connect_async(srv.url()).await.unwrap();
            assert_eq!(srv.close_all(4000, "bye"), 1, "round {round}");
            let m = ws.next().await.unwrap().unwrap();
            assert!(matches!(m, Message::Close(Some(ref f)) if u16::from(f.code) == 4000), "{m:?}");
            drop(ws);
            assert!(srv.wait_until(Duration::from_secs(5), |s| s.active == 0).await);
        }
    }

    /// `drop_all` ends a connection whose flood waits for room in the socket of a client that stopped
    /// reading (commands were taken only between sends: it stayed open).
    #[tokio::test]
    async fn drop_ends_a_connection_blocked_sending() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        let (_unread, _) = tokio_tungstenite::connect_async(srv.url()).await.unwrap();
        assert!(srv.wait_until(Duration::from_secs(5), |s| s.active == 1).await);
        assert_eq!(srv.flood(200, 1 << 20), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(srv.drop_all(), 1);
        assert!(srv.wait_until(Duration::from_secs(3), |s| s.active == 0).await, "{:?}", srv.stats());
    }

    /// Once `shutdown` returned, a server starts on its port (the listener was dropped later, on the
    /// runtime: most restarts met EADDRINUSE).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_port_is_free_once_shutdown_returned() {
        let mut port = 0;
        for _ in 0..100 {
            let srv = SignalServer::start("127.0.0.1", port).await.unwrap();
            port = srv.addr().port();
            srv.shutdown().await;
        }
    }

    /// A connection still in its handshake when the server shuts down is closed, never answered (it
    /// was not registered yet: it completed its handshake afterwards and was served).
    #[tokio::test]
    async fn shutdown_ends_a_connection_in_its_handshake() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        srv.slow_handshake(Duration::from_millis(500));
        let mut c = TcpStream::connect(srv.addr()).await.unwrap();
        c.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(srv.wait_until(Duration::from_secs(5), |s| s.tcp_accepts == 1).await);
        srv.shutdown().await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut answer)).await;
        // closed (its unread request makes the close a reset), with no answer
        assert!(read.is_ok() && answer.is_empty(), "{read:?}: {}", String::from_utf8_lossy(&answer));
    }

    #[tokio::test]
    async fn refuses_with_status_then_recovers() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        srv.refuse(401, Some(1));
        let err = tokio_tungstenite::connect_async(srv.url()).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        tokio_tungstenite::connect_async(srv.url()).await.unwrap();
        assert_eq!(srv.stats().refused, 1);
    }

    #[tokio::test]
    async fn freeze_stops_pongs() {
        let srv = SignalServer::start("127.0.0.1", 0).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(srv.url()).await.unwrap();
        assert!(srv.wait_until(Duration::from_secs(5), |s| s.active == 1).await);
        srv.freeze();
        ws.send(Message::Ping(vec![1].into())).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        assert!(r.is_err(), "frozen server must not answer: {r:?}");
        srv.unfreeze();
        let r = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert!(matches!(r, Message::Pong(_)));
    }
}
