//! A TCP chaos proxy: forward to an upstream, and on command black-hole, reset, close, delay or
//! throttle every connection, per direction.
//!
//! * **blackhole**: stop forwarding; sockets stay open, no FIN, no RST: the peer sees silence, like a
//!   Wi-Fi switch. Bytes already read are held and delivered after `heal` (as TCP would retransmit).
//!   New connections are accepted by the kernel but not connected upstream until healed, so their
//!   handshakes time out like SYNs into a black hole; one whose client gives up meanwhile (closes or
//!   resets it) is never connected.
//! * **reset**: RST every current connection (SO_LINGER 0, then close). **close**: FIN them.
//! * **latency**: each chunk is delivered `ms` after it was read (order kept). Each direction holds up to
//!   16 MiB read but not yet delivered, so throughput is capped only past 16 MiB per latency period.
//! * **bandwidth**: pace writes to `bytes_per_sec`.
//! * **heal**: clear every toxic (existing connections resume).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// client -> upstream
    Up,
    /// upstream -> client
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Up,
    Down,
    Both,
}

impl Which {
    pub fn parse(s: &str) -> Option<Which> {
        match s {
            "up" | "upstream" => Some(Which::Up),
            "down" | "downstream" => Some(Which::Down),
            "both" => Some(Which::Both),
            _ => None,
        }
    }
    fn covers(self, d: Direction) -> bool {
        matches!((self, d), (Which::Both, _) | (Which::Up, Direction::Up) | (Which::Down, Direction::Down))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Toxics {
    pub blackhole: bool,
    pub latency: Duration,
    pub bandwidth: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Both {
    up: Toxics,
    down: Toxics,
}

impl Both {
    fn get(&self, d: Direction) -> Toxics {
        match d {
            Direction::Up => self.up,
            Direction::Down => self.down,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cmd {
    Reset,
    Close,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    resets: AtomicU64,
    closes: AtomicU64,
    upstream_failures: AtomicU64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub accepted: u64,
    pub active: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub resets: u64,
    pub closes: u64,
    pub upstream_failures: u64,
}

struct Shared {
    upstream: String,
    toxics: watch::Sender<Both>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Cmd>>>,
    next_id: AtomicU64,
    counters: Counters,
}

pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ChaosProxy {
    pub async fn start(listen: &str, upstream: &str) -> std::io::Result<ChaosProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (toxics, _) = watch::channel(Both::default());
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            toxics,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        });
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Ok(ChaosProxy { addr, shared, stop, task: Mutex::new(Some(task)) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    fn update(&self, which: Which, f: impl Fn(&mut Toxics)) {
        self.shared.toxics.send_modify(|b| {
            if which.covers(Direction::Up) {
                f(&mut b.up);
            }
            if which.covers(Direction::Down) {
                f(&mut b.down);
            }
        });
    }

    pub fn blackhole(&self, which: Which) {
        self.update(which, |t| t.blackhole = true);
    }

    pub fn latency(&self, which: Which, latency: Duration) {
        self.update(which, |t| t.latency = latency);
    }

    pub fn bandwidth(&self, which: Which, bytes_per_sec: Option<u64>) {
        self.update(which, |t| t.bandwidth = bytes_per_sec);
    }

    pub fn heal(&self) {
        self.shared.toxics.send_replace(Both::default());
    }

    pub fn toxics(&self, d: Direction) -> Toxics {
        self.shared.toxics.borrow().get(d)
    }

    fn broadcast(&self, cmd: Cmd) -> usize {
        let conns = self.shared.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().filter(|tx| tx.send(cmd).is_ok()).count()
    }

    /// RST every current connection. Returns how many.
    pub fn reset(&self) -> usize {
        self.broadcast(Cmd::Reset)
    }

    /// FIN every current connection. Returns how many.
    pub fn close(&self) -> usize {
        self.broadcast(Cmd::Close)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Ordering::SeqCst),
            active: self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
            resets: c.resets.load(Ordering::SeqCst),
            closes: c.closes.load(Ordering::SeqCst),
            upstream_failures: c.upstream_failures.load(Ordering::SeqCst),
        }
    }

    /// Stop accepting and reset every connection; returns once the port is free, so a proxy can start
    /// on it again (an aborted task drops its listener later, on the runtime).
    pub async fn shutdown(&self) {
        self.stop.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<Notify>) {
    loop {
        let accepted = tokio::select! {
            () = stop.notified() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, _)) => {
                shared.counters.accepted.fetch_add(1, Ordering::SeqCst);
                let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = mpsc::unbounded_channel();
                shared.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
                let s = shared.clone();
                tokio::spawn(async move {
                    serve(client, &s, rx).await;
                    s.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    // only this loop registers connections: once it has stopped, this reaches every one
    drop(listener);
    let conns = shared.conns.lock().unwrap_or_else(|p| p.into_inner());
    for tx in conns.values() {
        let _ = tx.send(Cmd::Reset);
    }
}

async fn wait_clear(rx: &mut watch::Receiver<Both>, d: Direction) {
    loop {
        if !rx.borrow_and_update().get(d).blackhole {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn rst(s: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn serve(client: TcpStream, shared: &Arc<Shared>, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let _ = client.set_nodelay(true);
    // a black hole swallows new connections too: hold them until healed (or told to reset/close)
    let mut toxics = shared.toxics.subscribe();
    let client_ctl = match client.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
        Ok((ctl, s)) => match s.set_nonblocking(true).and_then(|_| TcpStream::from_std(s)) {
            Ok(c) => (ctl, c),
            Err(_) => return,
        },
        Err(_) => return,
    };
    let (client_ctl, mut client) = client_ctl;
    // what the client wrote while held, for the upstream first
    let mut early = Vec::new();
    let upstream = tokio::select! {
        u = async {
            tokio::select! {
                biased;
                () = wait_clear(&mut toxics, Direction::Up) => {}
                // a client that gave up meanwhile (closed or reset its socket) never connected: a real
                // black hole does not deliver its SYN after heal either, nor what it had written
                () = until_gone(&mut client, &mut early) => return None,
            }
            Some(TcpStream::connect(shared.upstream.as_str()).await)
        } => u,
        c = cmds.recv() => {
            match c {
                Some(Cmd::Reset) => { shared.counters.resets.fetch_add(1, Ordering::SeqCst); rst(&client_ctl) }
                _ => { shared.counters.closes.fetch_add(1, Ordering::SeqCst); let _ = client_ctl.shutdown(std::net::Shutdown::Both); }
            }
            return;
        }
    };
    let upstream = match upstream {
        None => return,
        Some(Ok(u)) => u,
        Some(Err(_)) => {
            shared.counters.upstream_failures.fetch_add(1, Ordering::SeqCst);
            rst(&client_ctl);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let Ok(up_std) = upstream.into_std() else { return };
    let Ok(up_ctl) = up_std.try_clone() else { return };
    let Ok(upstream) = up_std.set_nonblocking(true).and_then(|_| TcpStream::from_std(up_std)) else { return };

    // borrowed halves: unlike owned ones they do not send a FIN when dropped, so a reset stays a reset
    let mut upstream = upstream;
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let up = pump(cr, uw, Direction::Up, early, shared.clone());
    let down = pump(ur, cw, Direction::Down, Vec::new(), shared.clone());
    let both = async { tokio::join!(up, down) };
    tokio::select! {
        _ = both => {}
        c = cmds.recv() => match c {
            Some(Cmd::Reset) | None => {
                shared.counters.resets.fetch_add(1, Ordering::SeqCst);
                rst(&client_ctl);
                rst(&up_ctl);
            }
            Some(Cmd::Close) => {
                shared.counters.closes.fetch_add(1, Ordering::SeqCst);
                let _ = client_ctl.shutdown(std::net::Shutdown::Both);
                let _ = up_ctl.shutdown(std::net::Shutdown::Both);
            }
        },
    }
}

/// The bytes a direction holds between reading and delivering them: with latency, what a latency period
/// carries is in flight, so latency caps throughput only past 16 MiB per period (32 MiB/s at 500 ms).
const IN_FLIGHT: usize = 16 << 20;

/// What a read of `n` bytes takes of `IN_FLIGHT`: its queue entry too, so that small reads cannot pile
/// up without bound.
fn held(n: usize) -> u32 {
    (n + std::mem::size_of::<(Instant, Vec<u8>)>()) as u32
}

/// Reads what `client` sends into `early` until it closes or resets its socket. Past 1 MiB it stops
/// reading (the client's socket buffers fill, as they would with no connection to send on), and only
/// heal or a command ends the wait.
async fn until_gone(client: &mut TcpStream, early: &mut Vec<u8>) {
    let mut buf = vec![0u8; 16 * 1024];
    while early.len() < 1 << 20 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => early.extend_from_slice(&buf[..n]),
        }
    }
    std::future::pending().await
}

/// Forwards `r` to `w` in direction `d`, `early` (read before the pump started) first.
async fn pump<R, W>(mut r: R, mut w: W, d: Direction, early: Vec<u8>, shared: Arc<Shared>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // bounded by bytes, not by reads: with latency the bytes of a whole latency period are in flight
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let room = &Semaphore::new(IN_FLIGHT);
    let mut toxics_r = shared.toxics.subscribe();
    let mut toxics_w = shared.toxics.subscribe();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut next = Some(early).filter(|e| !e.is_empty());
        loop {
            let data = match next.take() {
                Some(data) => data,
                None => {
                    wait_clear(&mut toxics_r, d).await;
                    let n = tokio::select! {
                        n = r.read(&mut buf) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
                        // a black hole starting while we wait for bytes: stop reading at once
                        _ = async {
                            loop {
                                if toxics_r.changed().await.is_err() { std::future::pending::<()>().await; }
                                if toxics_r.borrow().get(d).blackhole { return; }
                            }
                        } => continue,
                    };
                    buf[..n].to_vec()
                }
            };
            let read_at = Instant::now();
            match room.acquire_many(held(data.len())).await {
                Ok(permits) => permits.forget(),
                Err(_) => break,
            }
            if tx.send((read_at, data)).is_err() {
                break;
            }
        }
    };
    let counter = match d {
        Direction::Up => &shared.counters.bytes_up,
        Direction::Down => &shared.counters.bytes_down,
    };
    let writer = async {
        let source_closed = async {
            while let Some((read_at, data)) = rx.recv().await {
                let t = toxics_w.borrow().get(d);
                if !t.latency.is_zero() {
                    tokio::time::sleep_until(read_at + t.latency).await;
                }
                wait_clear(&mut toxics_w, d).await;
                let bw = toxics_w.borrow().get(d).bandwidth;
                match bw {
                    Some(bps) if bps > 0 => {
                        // pace in slices so a cap change applies quickly
                        for chunk in data.chunks(((bps / 20).max(1)) as usize) {
                            let started = Instant::now();
                            if w.write_all(chunk).await.is_err() {
                                return false;
                            }
                            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            let budget = Duration::from_secs_f64(chunk.len() as f64 / bps as f64);
                            tokio::time::sleep_until(started + budget).await;
                        }
                    }
                    _ => {
                        if w.write_all(&data).await.is_err() {
                            return false;
                        }
                        counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                room.add_permits(held(data.len()) as usize);
            }
            true
        }
        .await;
        // a reader waiting for room would wait for good
        room.close();
        if source_closed {
            // pass the FIN on
            let _ = w.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(c: &mut TcpStream, msg: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
        c.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, c.read_exact(&mut got)).await {
            Ok(r) => r.map(|_| got),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")),
        }
    }

    #[tokio::test]
    async fn forwards_blackholes_heals_resets_closes() {
        let up = echo_server().await;
        let p = ChaosProxy::start("127.0.0.1:0", &up.to_string()).await.unwrap();
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"hello", Duration::from_secs(5)).await.unwrap(), b"hello");

        p.blackhole(Which::Both);
        let e = roundtrip(&mut c, b"lost?", Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "silence, not EOF or RST");
        p.heal();
        let mut rest = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut rest)).await.unwrap().unwrap();
        assert_eq!(&rest, b"lost?", "held bytes are delivered after heal");

        p.reset();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await.unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);

        let mut c2 = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c2, b"x", Duration::from_secs(5)).await.unwrap(), b"x");
        p.close();
        let n = tokio::time::timeout(Duration::from_secs(5), c2.read(&mut b)).await.unwrap().unwrap();
        assert_eq!(n, 0, "FIN: EOF");
    }

    /// A connection accepted during a black hole whose client closed it before heal never reaches the
    /// upstream; one still open does, with what it wrote (heal connected both, and replayed the
    /// abandoned one's bytes).
    #[tokio::test]
    async fn a_connection_given_up_during_a_blackhole_never_reaches_upstream() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = ChaosProxy::start("127.0.0.1:0", &l.local_addr().unwrap().to_string()).await.unwrap();
        p.blackhole(Which::Both);
        let mut gone = TcpStream::connect(p.addr()).await.unwrap();
        gone.write_all(b"given up").await.unwrap();
        drop(gone);
        let mut waiting = TcpStream::connect(p.addr()).await.unwrap();
        waiting.write_all(b"still here").await.unwrap();
        while p.stats().accepted < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.heal();
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept()).await.unwrap().unwrap();
        let mut got = [0u8; 10];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still here");
        let ghost = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
        assert!(ghost.is_err(), "the connection given up reached the upstream");
    }

    /// Once `shutdown` returned, a proxy starts on its port (the listener was dropped later, on the
    /// runtime: restarts met EADDRINUSE).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_port_is_free_once_shutdown_returned() {
        let mut listen = "127.0.0.1:0".to_string();
        for _ in 0..100 {
            let p = ChaosProxy::start(&listen, "127.0.0.1:9").await.unwrap();
            listen = p.addr().to_string();
            p.shutdown().await;
        }
    }

    /// 16 MiB through 300 ms of latency take about 300 ms longer, not seconds (at most 64 reads were in
    /// flight: 1 MiB per latency period).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latency_does_not_cap_throughput() {
        let up = echo_server().await;
        let p = ChaosProxy::start("127.0.0.1:0", &up.to_string()).await.unwrap();
        p.latency(Which::Up, Duration::from_millis(300));
        let (mut r, mut w) = TcpStream::connect(p.addr()).await.unwrap().into_split();
        let t0 = Instant::now();
        let sent = tokio::spawn(async move { w.write_all(&vec![7u8; 16 << 20]).await.map(|_| w) });
        let mut got = vec![0u8; 16 << 20];
        tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got)).await.unwrap().unwrap();
        let took = t0.elapsed();
        sent.await.unwrap().unwrap();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(2500), "{took:?}");
    }

    #[tokio::test]
    async fn latency_delays_one_direction() {
        let up = echo_server().await;
        let p = ChaosProxy::start("127.0.0.1:0", &up.to_string()).await.unwrap();
        p.latency(Which::Down, Duration::from_millis(150));
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        let t0 = Instant::now();
        roundtrip(&mut c, b"ping", Duration::from_secs(5)).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(150), "{:?}", t0.elapsed());
    }
}
