//! One TCP connection of a loop-thread WebSocket: the asyncio protocol (`WireProtocol`, given to
//! `loop.create_connection`), what the server sends (the upgrade answer, messages, control frames,
//! violations, the end), and what is written (batches of the delivery core, pongs, close frames).

use std::ops::ControlFlow;
use std::sync::{Arc, Weak};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::ws::error::{
    not_an_upgrade, peer_close, refused_status, violation, CLOSED_WITHOUT_CLOSE_FRAME, RESET_WITHOUT_CLOSE_FRAME,
};
use crate::ws::frame::{self, Inbound};
use crate::ws::protocol::{Message, PeerClose, Write};
use crate::ws::redirect;
use crate::ws::upgrade::Refusal;
use crate::ws::wire::{WireError, WireEvent};
use crate::ws::WsError;

use super::reader::{read_buffer, End};
use super::{Conn, Fx, Goodbye, Inner, Phase, Res, LOG};

impl Conn {
    /// Leave the current TCP connection (later callbacks of it are ignored).
    pub(super) fn drop_link(&self, py: Python<'_>, st: &mut Inner, fx: &mut Fx, goodbye: Goodbye) {
        let Some(mut link) = st.link.take() else { return };
        #[cfg(unix)]
        if let Some(r) = link.reader.take() {
            super::reader::Reader::stop_later(r, fx);
        }
        let Some(transport) = link.transport.take() else {
            return; // still connecting: the task is cancelled with the attempt
        };
        match goodbye {
            Goodbye::Abort => fx.closes.push((transport, true)),
            Goodbye::Close => {
                let mut out = Vec::new();
                link.wire.close_tls(&mut out);
                self.goodbye(py, st, fx, link.id, transport, out);
            }
            Goodbye::Frame(frame) => {
                let mut out = Vec::new();
                let body = frame.map(|(code, reason)| frame::close_payload(code, &reason)).unwrap_or_default();
                let _ = link.wire.frame(frame::OP_CLOSE, &body, &mut out);
                link.wire.close_tls(&mut out);
                self.goodbye(py, st, fx, link.id, transport, out);
            }
        }
    }

    /// Write `last`, close, and abort if still open at close_timeout (a peer that does not read).
    fn goodbye(&self, py: Python<'_>, st: &mut Inner, fx: &mut Fx, id: u64, transport: Py<PyAny>, last: Vec<u8>) {
        if !last.is_empty() {
            // through the transport: its close() flushes what it holds first
            fx.writes.push(Outgoing { id, transport: transport.clone_ref(py), fd: None, data: last });
        }
        st.draining.push((id, transport.clone_ref(py), Instant::now() + self.cfg.close_timeout));
        fx.closes.push((transport, false));
    }

    /// Write what the delivery core hands over (batches with their pings, a ping, the close frame),
    /// while the connection is live and the transport accepts writes.
    pub(super) fn pump(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        if st.phase != Phase::Live {
            return;
        }
        let Inner { link, proto, out, .. } = st;
        let Some(link) = link.as_mut() else { return };
        if link.paused_writing || link.transport.is_none() {
            return;
        }
        let (mut n, mut bytes, mut pings) = (0u64, 0u64, 0u64);
        let mut failed = None;
        loop {
            let r = match proto.next_write(now) {
                Write::Batch(mut frames) => {
                    let mut r = Ok(());
                    for m in frames.drain(..) {
                        r = match &m {
                            Message::Text(t) => {
                                n += 1;
                                bytes += t.len() as u64;
                                link.wire.frame(frame::OP_TEXT, t, out)
                            }
                            Message::Binary(b) => {
                                n += 1;
                                bytes += b.len() as u64;
                                link.wire.frame(frame::OP_BINARY, b, out)
                            }
                            Message::Ping(p) => {
                                pings += 1;
                                link.wire.frame(frame::OP_PING, p, out)
                            }
                        };
                        if r.is_err() {
                            break;
                        }
                    }
                    proto.recycle(frames);
                    fx.outcomes(proto.written());
                    r
                }
                Write::Ping(p) => {
                    pings += 1;
                    link.wire.frame(frame::OP_PING, &p, out)
                }
                Write::Close => link.wire.frame(frame::OP_CLOSE, &frame::close_payload(frame::CLOSE_NORMAL, ""), out),
                Write::Idle => break,
            };
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        st.messages_out += n;
        st.bytes_out += bytes;
        st.pings_sent += pings;
        self.flush_out(py, st, fx, now);
        if let Some(e) = failed {
            self.end_attempt(py, st, fx, WsError::retry(format!("TLS error: {}", e.text)), Goodbye::Abort);
        }
    }

    /// Hand the bytes framed so far to the transport.
    pub(super) fn flush_out(&self, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        if st.out.is_empty() {
            return;
        }
        let Some(link) = st.link.as_ref() else { return st.out.clear() };
        let Some(t) = link.transport.as_ref() else { return st.out.clear() };
        let data = std::mem::replace(&mut st.out, spare_buffer());
        let fd = link.fd.filter(|_| !link.buffered);
        fx.writes.push(Outgoing { id: link.id, transport: t.clone_ref(py), fd, data });
        st.last_write = Some(now);
    }

    pub(super) fn on_made(self: &Arc<Self>, py: Python<'_>, id: u64, transport: &Bound<'_, PyAny>) {
        let current = {
            let mut st = self.lock(py);
            let connecting = st.phase == Phase::Connecting;
            match st.link.as_mut() {
                Some(l) if l.id == id && connecting => {
                    l.transport = Some(transport.clone().unbind());
                    true
                }
                _ => false,
            }
        };
        if !current {
            close_transport(py, transport, true);
            return;
        }
        let fd = tune_socket(transport, &self.cfg);
        #[cfg(unix)]
        let reader = fd.and_then(|fd| super::reader::Reader::start(py, self, id, transport, fd));
        self.with(py, |c, st, fx| {
            let Some(link) = st.link.as_mut().filter(|l| l.id == id) else {
                // the attempt ended while the socket was being set up (its transport is closed with it)
                #[cfg(unix)]
                if let Some(r) = reader {
                    super::reader::Reader::stop_later(r, fx);
                }
                return;
            };
            link.fd = fd;
            #[cfg(unix)]
            {
                link.reader = reader;
            }
            st.phase = Phase::Upgrading;
            if let Some(a) = st.attempt.as_mut() {
                a.task = None;
            }
            let Some(link) = st.link.as_mut() else { return };
            let mut out = std::mem::take(&mut st.out);
            let r = link.wire.take_outgoing(&mut out);
            st.out = out;
            match r {
                Ok(()) => c.flush_out(py, st, fx, Instant::now()),
                Err(e) => c.end_attempt(py, st, fx, tls_failed(e), Goodbye::Abort),
            }
        });
    }

    pub(super) fn on_tcp_failed(self: &Arc<Self>, py: Python<'_>, id: u64, why: String) {
        self.with(py, |c, st, fx| {
            let Some(link) = st.link.as_ref().filter(|l| l.id == id && l.transport.is_none()) else { return };
            let text = format!("TCP connect to {}:{} failed: {why}", link.ep.host, link.ep.port);
            c.end_attempt(py, st, fx, WsError::retry(text), Goodbye::Abort);
        });
    }

    /// Bytes read from link `id` (`by_transport`: read by the transport, not the reader); false if that
    /// link is not the current one any more.
    pub(super) fn on_data(self: &Arc<Self>, py: Python<'_>, id: u64, data: &[u8], by_transport: bool) -> bool {
        self.with(py, |c, st, fx| {
            let Some(link) = st.link.as_ref().filter(|l| l.id == id) else { return false };
            let Some(transport) = link.transport.as_ref() else { return false };
            #[cfg(unix)]
            if by_transport && link.reader.is_some() {
                // a loop started the transport's reading again behind the reader: the bytes are the next
                // ones all the same, but a full inbound buffer would pause only the reader
                let t = transport.clone_ref(py);
                fx.later(move |py, _| super::reader::pause_again(py, t.bind(py)));
            }
            #[cfg(not(unix))]
            let _ = (transport, by_transport);
            c.feed(py, st, fx, Some(data));
            true
        })
    }

    /// What the server sent (`None`: go on with what a pause kept), routed by the phase.
    pub(super) fn feed(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, data: Option<&[u8]>) {
        let now = Instant::now();
        let Some(mut link) = st.link.take() else { return };
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        let mut refused: Option<Refusal> = None;
        let mut close: Option<Option<(u16, String)>> = None;
        let mut full = false;
        let mut on = |ev: WireEvent<'_>| -> ControlFlow<()> {
            match ev {
                WireEvent::Answer(checked) => match checked {
                    Ok(()) => {
                        self.upgraded(py, st, fx, now);
                        ControlFlow::Continue(())
                    }
                    Err(r) => {
                        refused = Some(r);
                        ControlFlow::Break(())
                    }
                },
                WireEvent::Frame(Inbound::Text(t)) => {
                    let size = t.len();
                    self.message(py, st, fx, now, PyString::new(py, t).into_any().unbind(), size, &mut full)
                }
                WireEvent::Frame(Inbound::Binary(b)) => {
                    let size = b.len();
                    self.message(py, st, fx, now, PyBytes::new(py, b).into_any().unbind(), size, &mut full)
                }
                WireEvent::Frame(Inbound::Ping(p)) => {
                    pongs.push(p.to_vec());
                    ControlFlow::Continue(())
                }
                WireEvent::Frame(Inbound::Pong(p)) => {
                    if st.phase == Phase::Live {
                        let done = st.proto.on_pong(p, now);
                        fx.outcomes(done);
                        if !st.room.is_empty() && st.proto.pending() <= self.cfg.send_buffer / 4 {
                            for slot in st.room.drain(..) {
                                fx.resolve.push((slot, Res::Ok));
                            }
                        }
                    }
                    ControlFlow::Continue(())
                }
                WireEvent::Frame(Inbound::Close(f)) => {
                    close = Some(f.map(|(c, r)| (c, r.to_string())));
                    ControlFlow::Break(())
                }
            }
        };
        let fed = match data {
            Some(d) => link.wire.receive(d, &mut on),
            None => link.wire.resume(&mut on),
        };
        // pongs and TLS records leave before anything that ends the connection
        let mut out = std::mem::take(&mut st.out);
        for p in &pongs {
            let _ = link.wire.frame(frame::OP_PONG, p, &mut out);
        }
        let _ = link.wire.take_outgoing(&mut out);
        st.out = out;
        st.link = Some(link);
        self.flush_out(py, st, fx, now);

        // what was read before the end is there to take
        if !st.inbound.is_empty() {
            for slot in st.readable.drain(..) {
                fx.resolve.push((slot, Res::Ok));
            }
        }
        if let Some(hs) = st.hs.as_mut().filter(|hs| !hs.queue.is_empty()) {
            for slot in hs.readable.drain(..) {
                fx.resolve.push((slot, Res::Ok));
            }
        }
        if let Err(e) = fed {
            return self.wire_failed(py, st, fx, e);
        }
        if let Some(r) = refused {
            return self.refused(py, st, fx, r);
        }
        if let Some(f) = close {
            return self.closed_by_peer(py, st, fx, f);
        }
        if full && !st.reader_paused {
            st.reader_paused = true;
            st.proto.pause();
            if let Some(hb) = st.hb.as_mut() {
                hb.pause();
            }
            if let Some(r) = st.link.as_ref().and_then(|l| l.reads(py)) {
                fx.reading.push((r, true));
            }
        }
        if !st.hb_candidates.is_empty() {
            let batch = std::mem::take(&mut st.hb_candidates);
            fx.later(move |py, c| c.check_replies(py, batch));
        }
        if st.phase == Phase::Live && st.proto.can_write() {
            self.pump(py, st, fx, now);
        }
    }

    /// A data message, routed by the phase; `Break` once the inbound buffer is full.
    #[allow(clippy::too_many_arguments)]
    fn message(
        self: &Arc<Self>,
        py: Python<'_>,
        st: &mut Inner,
        fx: &mut Fx,
        now: Instant,
        m: Py<PyAny>,
        size: usize,
        full: &mut bool,
    ) -> ControlFlow<()> {
        match st.phase {
            Phase::Hook => {
                if let Some(hs) = st.hs.as_mut() {
                    hs.queue.push_back((m, size));
                }
                return ControlFlow::Continue(());
            }
            Phase::FirstMessage => {
                if let Some(a) = st.attempt.as_mut() {
                    a.first_seen = true;
                }
                self.push_inbound(py, st, m, size, now);
                self.connected(py, st, fx, now);
            }
            Phase::Live => self.push_inbound(py, st, m, size, now),
            _ => return ControlFlow::Continue(()),
        }
        // counting the message just added, so the bounds hold to within one message. Not while closing:
        // the pong that confirms the last sends and the peer's close frame are behind what comes in,
        // for `close_timeout` at most
        let over = st.inbound.len() >= self.cfg.recv_buffer || st.inbound_bytes >= self.cfg.recv_buffer_bytes;
        if over && !st.close_requested {
            *full = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn push_inbound(&self, py: Python<'_>, st: &mut Inner, m: Py<PyAny>, size: usize, now: Instant) {
        st.messages_in += 1;
        st.bytes_in += size as u64;
        st.inbound_bytes += size;
        if let Some(hb) = st.hb.as_mut().filter(|h| h.awaiting_reply()) {
            match &self.hooks.heartbeat {
                Some(b) if b.is_reply.is_some() => st.hb_candidates.push(m.clone_ref(py)),
                _ => hb.answered(now),
            }
        }
        st.inbound.push_back((m, size));
    }

    fn refused(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, r: Refusal) {
        let Some(a) = st.attempt.as_mut() else { return };
        let first = a.first;
        let err = match r {
            Refusal::Status { status, location: Some(loc), .. } if redirect::is_redirect(status) => {
                let from = a.url.clone();
                match a.follow(status, &loc) {
                    Ok(dropped) => {
                        let (to, redirects) = (a.url.clone(), a.redirects);
                        fx.later(move |_, c| {
                            tracing::debug!(target: LOG, logger = c.cfg.reconnect.logger.as_deref(), http_status = status,
                                redirects = redirects as u64, "HTTP {status} redirect from {} to {}{}", crate::redact::redact_url(&from),
                                crate::redact::redact_url(&to),
                                if dropped > 0 { format!(" (another origin: {dropped} credential header(s) not forwarded)") } else { String::new() });
                        });
                        self.drop_link(py, st, fx, Goodbye::Abort);
                        return self.connect_link(py, st, fx);
                    }
                    Err(e) => e,
                }
            }
            Refusal::Status { status, .. } => refused_status(status, &self.cfg, first),
            Refusal::NotUpgrade(why) => not_an_upgrade(&why, first),
        };
        self.end_attempt(py, st, fx, err, Goodbye::Abort);
    }

    fn wire_failed(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, e: WireError) {
        let first = st.attempt.as_ref().map_or(true, |a| a.first);
        let (err, goodbye) = match e {
            WireError::Tls(t) => (tls_failed(t), Goodbye::Close),
            WireError::NotHttp(why) => (not_an_upgrade(&why, first), Goodbye::Abort),
            WireError::Violation(v) => {
                (violation(&v, &self.cfg), Goodbye::Frame(Some((v.code(), v.reason().to_string()))))
            }
        };
        self.end_read(py, st, fx, err, goodbye);
    }

    /// The server's close frame: the reply to ours, or its own close, answered with the same code
    /// (RFC 6455 §5.5.1; an empty close frame with an empty one).
    fn closed_by_peer(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, f: Option<(u16, String)>) {
        let err = peer_close(f.as_ref().map(|(c, r)| (*c, r.as_str())), &self.cfg);
        if st.phase == Phase::Live && st.proto.on_close_frame() == PeerClose::Complete {
            self.drop_link(py, st, fx, Goodbye::Close);
            return self.finish(py, st, fx, crate::ws::Terminal::closed());
        }
        self.end_read(py, st, fx, err, Goodbye::Frame(f));
    }

    /// The server ended what can be read (a close frame, a violation, EOF): the attempt ends, except
    /// while on_connect has messages still to take. The hook reads them first, as it would from the
    /// socket, and the end comes at its next wait for a message, or after it returned.
    pub(super) fn end_read(
        self: &Arc<Self>,
        py: Python<'_>,
        st: &mut Inner,
        fx: &mut Fx,
        err: WsError,
        goodbye: Goodbye,
    ) {
        if st.phase == Phase::Hook {
            if let Some(hs) = st.hs.as_mut().filter(|hs| !hs.queue.is_empty()) {
                if hs.pending_end.is_none() {
                    hs.pending_end = Some((err, goodbye));
                }
                return;
            }
        }
        self.end_attempt(py, st, fx, err, goodbye);
    }

    pub(super) fn on_end(self: &Arc<Self>, py: Python<'_>, id: u64, end: End) {
        self.with(py, |c, st, fx| {
            if !st.link.as_ref().is_some_and(|l| l.id == id && l.transport.is_some()) {
                st.draining.retain(|d| d.0 != id);
                return;
            }
            let text = match (st.phase, &end) {
                (Phase::Upgrading, End::Eof) => {
                    "handshake failed: the server closed the connection before answering".into()
                }
                (Phase::Upgrading, End::Reset) => "handshake failed: IO error: Connection reset by peer".into(),
                (Phase::Upgrading, End::Error(e)) => format!("handshake failed: IO error: {e}"),
                // the same words on every read after the upgrade (on_connect's, the first message's)
                (_, End::Eof) => CLOSED_WITHOUT_CLOSE_FRAME.into(),
                (_, End::Reset) => RESET_WITHOUT_CLOSE_FRAME.into(),
                (_, End::Error(e)) => format!("read error: {e}"),
            };
            c.end_read(py, st, fx, WsError::retry(text), Goodbye::Abort);
        });
    }

    pub(super) fn on_writing(self: &Arc<Self>, py: Python<'_>, id: u64, paused: bool) {
        self.with(py, |c, st, fx| {
            let Some(link) = st.link.as_mut().filter(|l| l.id == id) else { return };
            link.paused_writing = paused;
            if !paused {
                c.pump(py, st, fx, Instant::now());
            }
        });
    }
}

fn tls_failed(e: crate::ws::tls::TlsError) -> WsError {
    WsError { fatal: e.certificate, ..WsError::retry(format!("TLS handshake failed: {}", e.text)) }
}

/// The reader reads again once the application took half of the inbound buffer.
pub(super) fn resume_reading(py: Python<'_>, conn: &Arc<Conn>) {
    if !conn.on_loop_thread() {
        if let (Some(el), Ok(cb)) = (conn.event_loop(py), Py::new(py, Resume { conn: Arc::downgrade(conn) })) {
            let _ = el.call_method1("call_soon_threadsafe", (cb,));
        }
        return;
    }
    conn.with(py, |c, st, fx| c.resume_reader(py, st, fx));
}

impl Conn {
    /// Read again after a full inbound buffer paused the reader (the application read, or a close
    /// needs the pong and the close frame).
    pub(super) fn resume_reader(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx) {
        if !st.reader_paused {
            return;
        }
        let now = Instant::now();
        st.reader_paused = false;
        st.proto.resume(now);
        if let Some(hb) = st.hb.as_mut() {
            hb.resume(now);
        }
        if let Some(r) = st.link.as_ref().and_then(|l| l.reads(py)) {
            fx.reading.push((r, false));
        }
        // frames kept when the buffer filled come first
        self.feed(py, st, fx, None);
    }
}

/// Close or abort a transport; on a loop that is closed already, shut its socket down directly so the
/// peer sees the end (the socket object closes its descriptor when it is collected).
pub(super) fn close_transport(py: Python<'_>, transport: &Bound<'_, PyAny>, abort: bool) {
    let method = if abort { pyo3::intern!(py, "abort") } else { pyo3::intern!(py, "close") };
    if transport.call_method0(method).is_ok() {
        return;
    }
    #[cfg(unix)]
    if let Some(fd) = socket_fd(transport) {
        // SAFETY: shutdown(2) on a descriptor the socket object still owns; it does not release it
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

#[cfg(unix)]
fn socket_fd(transport: &Bound<'_, PyAny>) -> Option<i32> {
    let sock = transport.call_method1("get_extra_info", ("socket",)).ok()?;
    let fd: i32 = sock.call_method0("fileno").ok()?.extract().ok()?;
    (fd >= 0).then_some(fd)
}

/// TCP keepalive and TCP_USER_TIMEOUT back up the ping deadline in the kernel (asyncio already set
/// TCP_NODELAY); an option the kernel refuses leaves only the ping deadline, which still works. Returns
/// the socket's descriptor.
fn tune_socket(transport: &Bound<'_, PyAny>, cfg: &crate::ws::WsConfig) -> Option<i32> {
    #[cfg(unix)]
    {
        let raw = socket_fd(transport)?;
        // SAFETY: the transport owns the socket and keeps it open while this runs
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        crate::ws::socket::set_socket_options(socket2::SockRef::from(&fd), cfg);
        Some(raw)
    }
    #[cfg(not(unix))]
    {
        let _ = (transport, cfg);
        None
    }
}

/// Bytes for the transport of link `id`; `fd`: the socket may be written directly.
pub(crate) struct Outgoing {
    pub(super) id: u64,
    transport: Py<PyAny>,
    pub(super) fd: Option<i32>,
    data: Vec<u8>,
}

/// Write bytes for a link. While the transport holds nothing, they go straight to the socket, as
/// asyncio's own `write` does first, without its Python layer (a system call from Rust instead of
/// two Python calls); what the socket does not take, and everything while the transport still holds
/// something, goes through `transport.write`, which keeps the order, buffers and applies flow control.
/// Write `w`: straight to the socket when its `fd` is given and the socket takes it all, else (the rest)
/// through the transport. Whether the transport holds bytes of it afterwards.
pub(super) fn write(py: Python<'_>, conn: &Arc<Conn>, w: Outgoing) -> bool {
    let Outgoing { id, transport, fd, data } = w;
    let t = transport.bind(py);
    let mut rest: &[u8] = &data;
    #[cfg(unix)]
    if let Some(fd) = fd {
        match send_now(fd, rest) {
            Some(n) if n == rest.len() => {
                keep_buffer(data);
                return false;
            }
            Some(n) => rest = &rest[n..],
            None => {}
        }
    }
    #[cfg(not(unix))]
    let _ = fd;
    let written = t.call_method1(pyo3::intern!(py, "write"), (PyBytes::new(py, rest),));
    keep_buffer(data);
    if let Err(e) = written {
        // a transport closed under us: its connection_lost says what happened
        tracing::debug!(target: LOG, logger = conn.cfg.reconnect.logger.as_deref(), "write refused: {e}");
        return true;
    }
    // the transport holds bytes from now on, until it says it holds none
    let held =
        t.call_method0(pyo3::intern!(py, "get_write_buffer_size")).and_then(|n| n.extract::<usize>()).unwrap_or(1);
    if let Some(l) = conn.lock(py).link.as_mut().filter(|l| l.id == id) {
        l.buffered = held > 0;
    }
    held > 0
}

/// Output buffers up to this size are kept for the next write instead of freed.
const SPARE_MAX: usize = 64 << 10;

thread_local! {
    /// The buffer of the last write, emptied: the next one frames into it instead of allocating one
    /// (every paced send is a write of its own).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

fn spare_buffer() -> Vec<u8> {
    SPARE.with(|s| s.take())
}

fn keep_buffer(mut data: Vec<u8>) {
    if data.capacity() <= SPARE_MAX {
        data.clear();
        SPARE.with(|s| s.set(data));
    }
}

/// One non-blocking `send(2)`: the bytes the socket took, or None when it took none (it would block,
/// or failed: the transport then finds the failure and reports it).
#[cfg(unix)]
fn send_now(fd: i32, data: &[u8]) -> Option<usize> {
    #[cfg(target_os = "linux")]
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    #[cfg(not(target_os = "linux"))]
    let flags = libc::MSG_DONTWAIT;
    loop {
        // SAFETY: `data` is valid for its length; `fd` is the transport's open socket (the caller holds
        // the transport, which closes it only on the loop thread, after this returns)
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), flags) };
        if n >= 0 {
            return Some(n as usize);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

impl Conn {
    /// `loop.create_connection(protocol, host, port)` as a task; its failure ends the attempt.
    pub(super) fn open_tcp(self: &Arc<Self>, py: Python<'_>, id: u64, host: String, port: u16) {
        let conn = self;
        let started = (|| -> PyResult<Bound<'_, PyAny>> {
            let el = conn.event_loop(py).ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("no event loop"))?;
            let native = Bound::new(py, WireProtocol { conn: Arc::downgrade(conn), id })?;
            let protocol = wire_class(py)?.call0()?;
            for name in [
                "connection_made",
                "get_buffer",
                "buffer_updated",
                "eof_received",
                "connection_lost",
                "pause_writing",
                "resume_writing",
            ] {
                protocol.setattr(name, native.getattr(name)?)?;
            }
            let protocol = Py::new(py, Factory(protocol.unbind()))?;
            let coro = el.call_method1("create_connection", (protocol, host, port))?;
            let task = el.call_method1("create_task", (coro,))?;
            task.call_method1("add_done_callback", (Py::new(py, TcpDone { conn: Arc::downgrade(conn), id })?,))?;
            Ok(task)
        })();
        match started {
            Ok(task) => {
                let mut st = conn.lock(py);
                let current = st.link.as_ref().is_some_and(|l| l.id == id);
                match st.attempt.as_mut() {
                    Some(a) if current => a.task = Some(task.unbind()),
                    _ => {
                        drop(st);
                        let _ = task.call_method0("cancel");
                    }
                }
            }
            Err(e) => conn.on_tcp_failed(py, id, super::super::convert::describe(py, &e)),
        }
    }
}

fn wire_class(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static WIRE: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    WIRE.import(py, "tether._wire", "Wire")
}

/// An `OSError` as the operating system says it ("Connection refused (os error 111)"), else as Python.
fn os_error_text(py: Python<'_>, exc: &Bound<'_, PyAny>) -> String {
    let errno = exc.getattr("errno").ok().and_then(|e| e.extract::<i32>().ok());
    match errno {
        Some(n) if n > 0 => std::io::Error::from_raw_os_error(n).to_string(),
        _ => super::super::convert::describe(py, &PyErr::from_value(exc.clone())),
    }
}

/// The native side of the asyncio protocol of one TCP connection: its methods are installed on a
/// `tether._wire.Wire` (a `BufferedProtocol`, so the transport reads into `get_buffer`).
#[pyclass(module = "tether._native", frozen)]
pub(super) struct WireProtocol {
    conn: Weak<Conn>,
    id: u64,
}

#[pymethods]
impl WireProtocol {
    fn connection_made(&self, py: Python<'_>, transport: &Bound<'_, PyAny>) {
        match self.conn.upgrade() {
            Some(c) => c.on_made(py, self.id, transport),
            None => close_transport(py, transport, true),
        }
    }

    /// Where the transport reads to (`read_buffer`).
    fn get_buffer(&self, py: Python<'_>, _sizehint: isize) -> PyResult<Py<PyByteArray>> {
        read_buffer(py)
    }

    fn buffer_updated(&self, py: Python<'_>, nbytes: usize) -> PyResult<()> {
        let Some(c) = self.conn.upgrade() else { return Ok(()) };
        let buf = read_buffer(py)?;
        let buf = buf.bind(py);
        // SAFETY: the buffer is this thread's and only the transport's read writes to it, which
        // happens before this call, not during it; nothing resizes it
        let data = unsafe { buf.as_bytes() };
        c.on_data(py, self.id, &data[..nbytes.min(data.len())], true);
        Ok(())
    }

    /// False: the transport closes itself.
    fn eof_received(&self, py: Python<'_>) -> bool {
        if let Some(c) = self.conn.upgrade() {
            c.on_end(py, self.id, End::Eof);
        }
        false
    }

    #[pyo3(signature = (exc=None))]
    fn connection_lost(&self, py: Python<'_>, exc: Option<&Bound<'_, PyAny>>) {
        let Some(c) = self.conn.upgrade() else { return };
        let end = match exc {
            None => End::Eof,
            Some(e) if e.is_instance_of::<pyo3::exceptions::PyConnectionResetError>() => End::Reset,
            Some(e) => End::Error(os_error_text(py, e)),
        };
        c.on_end(py, self.id, end);
    }

    fn pause_writing(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            c.on_writing(py, self.id, true);
        }
    }

    fn resume_writing(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            c.on_writing(py, self.id, false);
        }
    }
}

/// The protocol factory `create_connection` calls: the protocol made for this connection.
#[pyclass(module = "tether._native", frozen)]
struct Factory(Py<PyAny>);

#[pymethods]
impl Factory {
    fn __call__(&self, py: Python<'_>) -> Py<PyAny> {
        self.0.clone_ref(py)
    }
}

/// Done-callback of the `create_connection` task: a failure ends the attempt (success is
/// `connection_made`).
#[pyclass(module = "tether._native", frozen)]
struct TcpDone {
    conn: Weak<Conn>,
    id: u64,
}

#[pymethods]
impl TcpDone {
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(c) = self.conn.upgrade() else { return Ok(()) };
        if task.call_method0("cancelled")?.is_truthy()? {
            return Ok(());
        }
        let exc = task.call_method0("exception")?;
        if !exc.is_none() {
            c.on_tcp_failed(py, self.id, os_error_text(py, &exc));
        }
        Ok(())
    }
}

/// `call_soon(_threadsafe)` target: the batch of sends made during one loop iteration.
#[pyclass(module = "tether._native", frozen)]
struct Uncork {
    conn: Weak<Conn>,
}

#[pymethods]
impl Uncork {
    fn __call__(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            c.uncork(py);
        }
    }
}

pub(super) fn schedule_uncork(py: Python<'_>, conn: &Arc<Conn>) {
    let Some(el) = conn.event_loop(py) else { return };
    let scheduled =
        Py::new(py, Uncork { conn: Arc::downgrade(conn) }).and_then(|cb| el.call_method1("call_soon", (cb,)));
    if scheduled.is_err() {
        // the loop is gone: nothing will be written on it
        conn.lock(py).corked = false;
    }
}

/// Effects made on another thread, run by the loop; then what was queued meanwhile is written.
#[pyclass(module = "tether._native", frozen)]
struct HandOver {
    conn: Weak<Conn>,
    /// The connection's name, for its waiters' error if it is gone by then.
    name: String,
    fx: std::sync::Mutex<Option<Fx>>,
}

#[pymethods]
impl HandOver {
    fn __call__(&self, py: Python<'_>) {
        let first = self.fx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(c) = self.conn.upgrade() else {
            // let go meanwhile: its own end took care of the rest
            if let Some(fx) = first {
                fx.release(py, &self.name);
            }
            return;
        };
        run_handed(py, &c, first, false);
        c.uncork(py);
    }
}

/// Run `first` and the effects that joined it while the hand-over waited (the next call from another
/// thread schedules a new one); on a closed loop no deadline is armed.
fn run_handed(py: Python<'_>, conn: &Arc<Conn>, first: Option<Fx>, loop_closed: bool) {
    let more = {
        let mut st = conn.lock(py);
        st.handing_over = false;
        std::mem::take(&mut st.handed)
    };
    for mut fx in first.into_iter().chain(more) {
        if loop_closed {
            fx.timer = None;
        }
        conn.run(py, fx);
    }
}

pub(super) fn hand_over(py: Python<'_>, conn: &Arc<Conn>, mut fx: Fx) {
    fx.uncork = None;
    let Some(el) = conn.event_loop(py) else { return };
    let cb = HandOver { conn: Arc::downgrade(conn), name: conn.name.clone(), fx: std::sync::Mutex::new(None) };
    let Ok(cb) = Py::new(py, cb) else { return };
    *cb.get().fx.lock().unwrap_or_else(|p| p.into_inner()) = Some(fx);
    if el.call_method1("call_soon_threadsafe", (cb.clone_ref(py),)).is_ok() {
        return;
    }
    // the loop is closed: nothing will run on it again, so the effects run here (a socket to close, a
    // waiter to tell)
    let first = cb.get().fx.lock().unwrap_or_else(|p| p.into_inner()).take();
    run_handed(py, conn, first, true);
}

/// The reader resumes on the loop, after a `try_recv` from another thread made room.
#[pyclass(module = "tether._native", frozen)]
struct Resume {
    conn: Weak<Conn>,
}

#[pymethods]
impl Resume {
    fn __call__(&self, py: Python<'_>) {
        if let Some(c) = self.conn.upgrade() {
            resume_reading(py, &c);
        }
    }
}
