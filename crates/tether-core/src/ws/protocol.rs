//! The delivery, liveness, close-handshake and poison rules of `tether.connect`, without I/O and
//! without a clock (sans-I/O, like websockets' `protocol.py`): the front end feeds it what happened and
//! the current `Instant`, and writes what it asks for.
//!
//! * Delivery: every accepted message gets a sequence number when it is handed to the socket. A send
//!   queued while `unwritten_bytes` is under the session's high-water mark resolved at once
//!   (`push_untracked`); one queued above it resolves once it was written (`Outcome::Sent`). A ping
//!   confirms what was written before it: its payload (this connection's nonce + a ping id) names the
//!   last sequence number written before it. It follows a batch at once, unless a ping went out less
//!   than `confirm_delay` ago: then the first batch written from `confirm_delay` after that one carries
//!   it, or, when the sender stopped, the timer writes it another `confirm_delay` later (at most one
//!   confirming ping per `confirm_delay`, like TCP's delayed ACK), so a paced sender does not pay a
//!   round trip per message, nor a wake-up per confirmation, while a lone request is confirmed as fast
//!   as before. Never deferred when a
//!   flush waits, when an eighth of `send_buffer` is pending, or when closing. A long batch (a backlog
//!   re-sent after a reconnect, a burst) also carries a ping after every eighth of `send_buffer`, so a
//!   connection that dies halfway through it still confirms what the peer read. A pong that echoes a
//!   ping confirms every message up to there, because frames are ordered on the connection: the peer's
//!   WebSocket layer read them ("confirmed" means no more). A flush resolves once every message
//!   accepted before it is confirmed, and reports those that failed. A flush whose caller stopped
//!   waiting is withdrawn (`cancel_flush`): the failures it would have reported stay for the next flush
//!   or the end, and the flushes still waiting are only the live ones, settled oldest first. Failures
//!   handed to a waiter that was gone by then come back (`restore`). Pongs that do not echo one of our
//!   pings (unsolicited, empty, another client's) confirm nothing.
//! * Liveness: a ping every `ping_interval`; a ping not echoed within `ping_timeout`, or one that could
//!   not even be written within `ping_timeout`, is a loss. So a peer that answers pings without echoing
//!   the payload is detected, not waited on. While the reader is paused (the application is not reading)
//!   pongs cannot be read: the deadlines stop and restart from the resume.
//! * Loss: unconfirmed messages go back to the head of the queue, in order, and are re-sent on the next
//!   connection (at-least-once). A server that crashes at random points must not get innocent messages
//!   failed, while a message that kills the server every time it reads it (a poison message) must not
//!   be re-sent forever. (A server that dies within the first few frames of every connection cannot be
//!   told from the second: a message it read before dying alone on the wire three times is failed.) So a loss blames at most one message, the oldest unconfirmed one, and only when
//!   the lost connection confirmed nothing (had it confirmed anything, the peer read past that, and the
//!   crash point is unknown) and the loss looks like the peer failing on what it read (`Ending::strikes`):
//!   the connection was cut without a close frame (TCP FIN or RST, a read or write error, a ping or
//!   heartbeat timeout, tether failing it for what the peer sent), or the peer's close says it could not
//!   take what it read (1002 protocol error, 1003 unsupported data, 1007 invalid data, 1008 policy
//!   violation, 1011 internal error). A close the peer chose for its own reasons blames nothing and
//!   clears nothing: 1000, 1001 going away, 1012 restart, 1013 try again later, 1014 bad gateway,
//!   3000-4999 (registered and application codes), a close frame without a code or with one not allowed
//!   on the wire. A draining instance must not fail the message that happened to be in flight. After a
//!   loss with messages in flight, the backlog is re-sent from a window
//!   of one message in flight (with its ping: nothing else is written until its pong), growing by what
//!   each pong confirms (TCP's slow start: it doubles per round trip) until it reaches an eighth of
//!   `send_buffer`, when it is lifted. So a connection that confirmed nothing after a loss had one
//!   message on the wire, and a message blamed at `poison_after` losses died alone on the
//!   wire at least `poison_after - 1` times: it is failed instead of re-sent. Its confirmation ends the
//!   suspicion (confirmations are in order, so the oldest unconfirmed message is the first one
//!   confirmed). A close 1009 (message too big) fails the largest unconfirmed message at once and
//!   blames no other.
//!   Every failure names its message (acceptance number and payload), so the application can re-send it.
//! * End: a connection that ends for good (given up, closed by a final close code, or closed) names what
//!   it never delivered (`finish`): every message never confirmed, and every failure no flush reported.
//! * Close: a requested close writes what was accepted, a ping, then the close frame; the reader keeps
//!   running meanwhile, so pongs still confirm. A close frame from the peer is answered (the session
//!   flushes tungstenite's automatic reply) and ends the connection with its code.
//! * Metrics (when the connection is measured): a loss counts the messages it puts back for re-sending
//!   and those it fails; a ping timeout records how long the peer had been silent, from the last pong
//!   that echoed one of our pings (or the connection's start) to the deadline that declared the loss.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A message for the peer, and the pings the protocol writes among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// UTF-8 (checked where it is made).
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
}

impl Message {
    pub fn text(s: impl Into<String>) -> Message {
        Message::Text(Bytes::from(s.into()))
    }

    pub fn binary(b: impl Into<Bytes>) -> Message {
        Message::Binary(b.into())
    }

    /// A text message whose UTF-8 stays in `owner` (a string the caller holds already): no copy, and
    /// the batch that writes it shares it without an allocation.
    pub fn text_in<T: AsRef<str> + AsRef<[u8]> + Send + 'static>(owner: T) -> Message {
        Message::Text(Bytes::from_owner(owner))
    }

    /// A binary message whose bytes stay in `owner` (see `text_in`).
    pub fn binary_in<T: AsRef<[u8]> + Send + 'static>(owner: T) -> Message {
        Message::Binary(Bytes::from_owner(owner))
    }

    /// The text of a text message.
    pub fn to_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        }
    }
}

/// Close code a server sends for a message bigger than it accepts (RFC 6455 §7.4.1).
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// How the reason of a loss by the ping rule begins (the metrics tell it from other losses by it).
pub const PING_TIMEOUT: &str = "ping timeout:";

/// Where a measured connection's losses are counted (the bindings' metrics, which this crate does not
/// know): each loss reports what it did to the send queue, and a loss by the ping rule how long the
/// peer had been silent. Called with the protocol's state in hand, so it must only count.
pub trait LossMeter: Send + Sync + std::fmt::Debug {
    /// The ping rule declared the loss `silence` after the last pong that echoed one of our pings (or
    /// the connection's start).
    fn ping_silence(&self, silence: Duration);
    /// Unconfirmed messages the loss put back, to be written again first on the next connection.
    fn resent(&self, n: usize);
    /// Messages the loss removed from the queue (reported in `SendFailed`).
    fn failed_sends(&self, n: usize);
}

#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Accepted messages (queued + unconfirmed) before `push` refuses.
    pub send_buffer: usize,
    /// A message larger than this (bytes of payload) is refused by `push`.
    pub max_message_size: usize,
    /// A message blamed at this many losses (see the module's Loss rule) is failed, not re-sent.
    pub poison_after: u32,
    /// Confirming pings are at least this far apart (zero: a ping behind every batch).
    pub confirm_delay: Duration,
    /// Where losses are counted; None: not measured.
    pub metrics: Option<Arc<dyn LossMeter>>,
}

/// `ProtocolConfig::confirm_delay` of every connection: a paced sender (one message per 1-20 ms, the
/// signaling pattern) gets one confirming round trip per few messages instead of one each. Each
/// confirmation costs the sender a wake-up to read its pong, which dominates a paced stream's CPU
/// beyond its own sends; longer delays save less and less of it while the messages re-sent after a
/// loss (those written since the last confirmation) grow in proportion.
pub const CONFIRM_DELAY: Duration = Duration::from_millis(20);

/// Frames of a batch vector kept for the next batch (`Protocol::recycle`), at most.
const SPARE_FRAMES: usize = 8;

/// Why a send will never be delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The peer closed with 1009 while this, the largest unconfirmed message, was in flight.
    TooBig { size: usize, reason: String },
    /// The oldest unconfirmed message at `losses` losses that blamed it (see the module's Loss rule);
    /// `last` is the last loss.
    Poisoned { size: usize, losses: u32, last: String },
}

impl Failure {
    /// Why the message was removed from the send queue (the caller says that it was).
    pub fn message(&self) -> String {
        match self {
            Failure::TooBig { size, reason } => format!(
                "the server closed the connection with 1009 (message too big{}) after this {size}-byte message",
                if reason.is_empty() { String::new() } else { format!(": {reason}") }
            ),
            Failure::Poisoned { size, losses, last } => format!(
                "this {size}-byte message was the oldest unconfirmed one at {losses} connection losses that \
                 confirmed nothing and looked like the server failing on it (no close frame, a timeout, or \
                 1002/1003/1007/1008/1011), re-sent alone after the first (last: {last})"
            ),
        }
    }
}

/// A message that will never be delivered: which one, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// Its acceptance number: the `seq`-th message this connection accepted, counting from 1.
    pub seq: u64,
    /// The message itself, so the application can re-send it.
    pub msg: Message,
    pub why: Failure,
}

/// What a connection that ended for good never delivered, so the application can re-send it or act on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Undelivered {
    /// Every message accepted and never confirmed by the peer (its send resolved or not), in send order,
    /// with its acceptance number. The peer may have read some of them: they are the at-least-once
    /// re-send of a connection that will not come back.
    pub unconfirmed: Vec<(u64, Message)>,
    /// Messages failed after their send resolved that no flush reported, in send order (never also in
    /// `unconfirmed`).
    pub failures: Vec<Failed>,
}

impl Undelivered {
    pub fn is_empty(&self) -> bool {
        self.unconfirmed.is_empty() && self.failures.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PushError {
    /// `send_buffer` messages are already waiting.
    Full(usize),
    /// Bigger than `max_message_size`.
    TooBig { size: usize, max: usize },
}

/// What the writer should do next.
#[derive(Debug, PartialEq)]
pub enum Write {
    /// Write these frames in order, then flush: messages, and the pings that confirm them (a ping
    /// confirms every message written before it).
    Batch(Vec<Message>),
    /// Write a ping.
    Ping(Bytes),
    /// Everything accepted was written and a ping covers it: write the close frame.
    Close,
    /// Nothing to do until something is pushed, a ping is due or a close is requested.
    Idle,
}

/// How a connection was lost, as the Loss rule reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// No close frame from the peer: TCP FIN or RST, a read or write error, a ping or heartbeat timeout,
    /// or tether failing the connection because of what the peer sent.
    Cut,
    /// The peer's close frame, with its code (None: it had none, or one not allowed on the wire).
    Closed(Option<u16>),
}

impl Ending {
    /// Whether the loss may be the doing of the message the peer was reading, so that it counts against
    /// the oldest unconfirmed one.
    pub fn strikes(self) -> bool {
        match self {
            Ending::Cut => true,
            // what the peer read broke it or was refused: protocol error, unsupported data, invalid
            // data, policy violation, internal error
            Ending::Closed(Some(code)) => matches!(code, 1002 | 1003 | 1007 | 1008 | 1011),
            // a close the peer chose (normal, going away, restart, try again later, bad gateway,
            // registered and application codes), or one without a usable code
            Ending::Closed(None) => false,
        }
    }
}

/// What a close frame from the peer means.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerClose {
    /// The reply to our close: the handshake is complete.
    Complete,
    /// The peer started the close: answer it, then the connection is over.
    Answer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Requested by the application; the close frame goes out once everything was written.
    Requested,
    /// Our close frame was written; waiting for the peer's.
    Sent,
    Done,
}

struct Entry<D> {
    msg: Message,
    size: usize,
    strikes: u32,
    /// Acceptance number: flushes wait for every entry accepted before them.
    n: u64,
    /// The send's waiter, until it resolves (written, or failed before that).
    done: Option<D>,
}

/// How a waiter resolves.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A send: written to the socket.
    Sent,
    /// A send that failed before it resolved.
    Failed(Failed),
    /// A flush: everything accepted before it was confirmed, except these (failed, never re-sent), in
    /// acceptance order.
    Flushed(Vec<Failed>),
}

/// A flush waiting for every message accepted up to `upto`.
struct Flush<D> {
    ticket: Ticket,
    upto: u64,
    waiter: D,
}

/// Names a waiting flush, to withdraw it (`Protocol::cancel_flush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

struct Ping {
    id: u64,
    /// Sequence number of the last message written before this ping.
    covers: u64,
    sent: Instant,
    deadline: Instant,
}

pub struct Protocol<D> {
    cfg: ProtocolConfig,
    nonce: u64,
    next_seq: u64,
    queue: VecDeque<Entry<D>>,
    unacked: VecDeque<(u64, Entry<D>)>,
    accepted: u64,
    /// See `unwritten_bytes`; `writing_bytes` of them were handed to the writer in the current batch.
    unwritten_bytes: usize,
    writing_bytes: usize,
    /// The batch being written has sends waiting for it (`written` resolves them).
    writing_tracked: bool,
    /// The frames vector of the last batch, given back by the writer (`recycle`) for the next one.
    spare: Vec<Message>,
    /// In ticket order; `upto` never decreases along it, so the flushes that settle are a prefix.
    flushes: VecDeque<Flush<D>>,
    next_ticket: u64,
    /// Failures of messages whose send had already resolved: reported by the next flush covering them.
    unreported: Vec<Failed>,
    /// The current connection confirmed at least one message.
    progress: bool,
    /// Messages allowed in flight (written, unconfirmed) while a backlog is re-sent after a loss (see the
    /// module's Loss rule); None: no limit.
    window: Option<usize>,
    pings: VecDeque<Ping>,
    next_ping_id: u64,
    next_ping_at: Option<Instant>,
    /// A ping (periodic, or confirming) is due and not yet written (since when).
    ping_due_since: Option<Instant>,
    /// When the last ping was written on this connection.
    last_ping_at: Option<Instant>,
    /// Messages were written that no ping covers yet: a ping is due `confirm_delay` after the last.
    uncovered: bool,
    paused: bool,
    foreign_pongs: u64,
    last_rtt: Option<Duration>,
    /// The last sign of life the ping rule saw: a pong echoing one of our pings, or the connection's start.
    last_life: Option<Instant>,
    /// Set when the ping rule declared the connection lost: the peer's silence until then.
    silence: Option<Duration>,
    closing: Closing,
    peer_closed: bool,
}

pub fn size_of(m: &Message) -> usize {
    match m {
        Message::Text(b) | Message::Binary(b) => b.len(),
        Message::Ping(_) => 0,
    }
}

impl<D> Protocol<D> {
    /// `nonce` tells this connection's pings from any other's; pick it at random.
    pub fn new(cfg: ProtocolConfig, nonce: u64) -> Self {
        Protocol {
            cfg,
            nonce,
            next_seq: 1,
            queue: VecDeque::new(),
            unacked: VecDeque::new(),
            accepted: 0,
            unwritten_bytes: 0,
            writing_bytes: 0,
            writing_tracked: false,
            spare: Vec::new(),
            flushes: VecDeque::new(),
            next_ticket: 0,
            unreported: vec![],
            progress: false,
            window: None,
            pings: VecDeque::new(),
            next_ping_id: 1,
            next_ping_at: None,
            ping_due_since: None,
            last_ping_at: None,
            uncovered: false,
            paused: false,
            foreign_pongs: 0,
            last_rtt: None,
            last_life: None,
            silence: None,
            closing: Closing::Open,
            peer_closed: false,
        }
    }

    pub fn config(&self) -> &ProtocolConfig {
        &self.cfg
    }

    /// Accept a message for delivery (order = call order); `done` resolves once it was written.
    pub fn push(&mut self, msg: Message, done: D) -> Result<(), (PushError, D)> {
        let size = match self.admit(&msg) {
            Ok(size) => size,
            Err(e) => return Err((e, done)),
        };
        self.queue_entry(msg, size, Some(done));
        Ok(())
    }

    /// Accept a message whose send already resolved (it was queued under the write high-water mark): a
    /// failure is reported by the next flush covering it.
    pub fn push_untracked(&mut self, msg: Message) -> Result<(), PushError> {
        let size = self.admit(&msg)?;
        self.queue_entry(msg, size, None);
        Ok(())
    }

    fn admit(&self, msg: &Message) -> Result<usize, PushError> {
        let size = size_of(msg);
        if size > self.cfg.max_message_size {
            return Err(PushError::TooBig { size, max: self.cfg.max_message_size });
        }
        let pending = self.pending();
        if pending >= self.cfg.send_buffer {
            return Err(PushError::Full(pending));
        }
        Ok(size)
    }

    fn queue_entry(&mut self, msg: Message, size: usize, done: Option<D>) {
        self.accepted += 1;
        self.unwritten_bytes += size;
        self.queue.push_back(Entry { msg, size, strikes: 0, n: self.accepted, done });
    }

    /// Payload bytes accepted and not yet written to the socket (the batch being written included).
    pub fn unwritten_bytes(&self) -> usize {
        self.unwritten_bytes
    }

    /// Wait until everything accepted so far is confirmed (or failed): resolves at once when nothing is
    /// pending, else through a later call's outcomes. Written messages no ping covers yet make a ping
    /// due now (see `ping_due`). The ticket withdraws it (`cancel_flush`).
    pub fn flush(&mut self, waiter: D, now: Instant) -> (Ticket, Vec<(D, Outcome)>) {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.flushes.push_back(Flush { ticket, upto: self.accepted, waiter });
        if self.uncovered && self.ping_due_since.is_none() {
            self.ping_due_since = Some(now);
        }
        (ticket, self.settle_flushes())
    }

    /// Withdraw a flush nobody waits on any more (its caller was cancelled): returns its waiter if it was
    /// still waiting. The failures it would have reported stay for the next flush covering them, or the
    /// end (`finish`). None: it already settled, and its outcome went to its waiter (see `restore`).
    pub fn cancel_flush(&mut self, ticket: Ticket) -> Option<D> {
        let i = self.flushes.binary_search_by_key(&ticket, |f| f.ticket).ok()?;
        self.flushes.remove(i).map(|f| f.waiter)
    }

    /// Failures handed to a waiter that was gone (a flush or send whose caller stopped waiting meanwhile):
    /// reported again, by the next flush covering them or by `finish`.
    pub fn restore(&mut self, failures: Vec<Failed>) {
        self.unreported.extend(failures);
    }

    fn oldest_pending(&self) -> Option<u64> {
        self.unacked.front().map(|(_, e)| e.n).or_else(|| self.queue.front().map(|e| e.n))
    }

    fn settle_flushes(&mut self) -> Vec<(D, Outcome)> {
        let oldest = self.oldest_pending();
        let mut out = vec![];
        while let Some(f) = self.flushes.pop_front() {
            if oldest.is_some_and(|n| n <= f.upto) {
                self.flushes.push_front(f);
                break;
            }
            let mut mine = vec![];
            if !self.unreported.is_empty() {
                let rest;
                (mine, rest) = self.unreported.drain(..).partition(|u| u.seq <= f.upto);
                self.unreported = rest;
                mine.sort_by_key(|u| u.seq);
            }
            out.push((f.waiter, Outcome::Flushed(mine)));
        }
        out
    }

    fn fail(&mut self, e: Entry<D>, why: Failure, out: &mut Vec<(D, Outcome)>, all: &mut Vec<Failed>) {
        let f = Failed { seq: e.n, msg: e.msg, why };
        all.push(f.clone());
        match e.done {
            Some(d) => out.push((d, Outcome::Failed(f))),
            None => self.unreported.push(f),
        }
    }

    /// The writer flushed everything handed to it to the socket: those sends resolve.
    pub fn written(&mut self) -> Vec<(D, Outcome)> {
        self.unwritten_bytes -= std::mem::take(&mut self.writing_bytes);
        if !std::mem::take(&mut self.writing_tracked) {
            // sends that resolved when queued: nothing in flight waits (a paced stream's every batch)
            return Vec::new();
        }
        self.unacked.iter_mut().filter_map(|(_, e)| e.done.take()).map(|d| (d, Outcome::Sent)).collect()
    }

    /// Accepted and not yet confirmed.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.unacked.len()
    }

    pub fn unconfirmed(&self) -> usize {
        self.unacked.len()
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub fn close_requested(&self) -> bool {
        self.closing != Closing::Open
    }

    /// A connection is up (handshake done): a fresh ping schedule.
    pub fn connected(&mut self, now: Instant) {
        self.pings.clear();
        self.next_ping_at = Some(now + self.cfg.ping_interval);
        self.ping_due_since = None;
        (self.last_ping_at, self.uncovered) = (None, false);
        self.paused = false;
        self.peer_closed = false;
        self.foreign_pongs = 0;
        self.progress = false;
        (self.last_life, self.silence) = (Some(now), None);
        if self.closing == Closing::Sent {
            self.closing = Closing::Requested;
        }
    }

    /// The application asked to close; the close frame follows everything already accepted.
    pub fn request_close(&mut self) {
        if self.closing == Closing::Open {
            self.closing = Closing::Requested;
        }
    }

    /// The next thing to write. Messages are handed over (and numbered) here, so a loss while they
    /// are being written counts them as in flight.
    pub fn next_write(&mut self, now: Instant) -> Write {
        if matches!(self.closing, Closing::Sent | Closing::Done) || self.peer_closed {
            return Write::Idle;
        }
        let room = self.window.map_or(usize::MAX, |w| w.saturating_sub(self.unacked.len()));
        if !self.queue.is_empty() && room > 0 {
            let n = self.queue.len().min(room);
            let every = self.eighth();
            let mut frames = std::mem::take(&mut self.spare);
            frames.reserve(n + n / every + 1);
            for i in 0..n {
                let Some(e) = self.queue.pop_front() else { break };
                self.writing_bytes += e.size;
                self.writing_tracked |= e.done.is_some();
                frames.push(e.msg.clone());
                self.unacked.push_back((self.next_seq, e));
                self.next_seq += 1;
                if (i + 1) % every == 0 && i + 1 < n {
                    frames.push(Message::Ping(self.ping(now)));
                }
            }
            if self.confirm_now(now) {
                frames.push(Message::Ping(self.ping(now)));
            } else {
                self.uncovered = true;
            }
            return Write::Batch(frames);
        }
        if self.ping_due_since.is_some() || (self.uncovered && self.confirm_now(now)) {
            return Write::Ping(self.ping(now));
        }
        if self.closing == Closing::Requested && self.queue.is_empty() {
            self.closing = Closing::Sent;
            return Write::Close;
        }
        Write::Idle
    }

    /// The frames of a batch, written: the next batch reuses the vector (a paced stream writes a
    /// batch per message). A large one is dropped rather than kept by an idle connection.
    pub fn recycle(&mut self, mut frames: Vec<Message>) {
        if frames.capacity() <= SPARE_FRAMES {
            frames.clear();
            self.spare = frames;
        }
    }

    /// Whether `next_write` has messages to hand over (some are queued and the window lets them out):
    /// a pong that opened the window must wake the writer.
    pub fn can_write(&self) -> bool {
        !self.queue.is_empty() && self.window.map_or(true, |w| self.unacked.len() < w)
    }

    /// An eighth of `send_buffer`: confirm at once from this many pending messages, ping at least this
    /// often inside a long batch, lift the window from this size.
    fn eighth(&self) -> usize {
        (self.cfg.send_buffer / 8).max(1)
    }

    /// Whether what was written must be confirmed by a ping right away.
    fn confirm_now(&self, now: Instant) -> bool {
        self.cfg.confirm_delay.is_zero()
            || self.ping_due_since.is_some()
            || !self.flushes.is_empty()
            || self.closing != Closing::Open
            || self.window.is_some()
            || self.pending() >= self.eighth()
            || self.confirm_at().map_or(true, |at| now >= at)
    }

    /// When a deferred confirming ping is due: `confirm_delay` after the last ping.
    fn confirm_at(&self) -> Option<Instant> {
        self.last_ping_at.map(|t| t + self.cfg.confirm_delay)
    }

    fn ping(&mut self, now: Instant) -> Bytes {
        let id = self.next_ping_id;
        self.next_ping_id += 1;
        self.pings.push_back(Ping { id, covers: self.next_seq - 1, sent: now, deadline: now + self.cfg.ping_timeout });
        self.ping_due_since = None;
        (self.last_ping_at, self.uncovered) = (Some(now), false);
        self.next_ping_at = Some(now + self.cfg.ping_interval);
        let mut p = Vec::with_capacity(16);
        p.extend_from_slice(&self.nonce.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.into()
    }

    /// A pong arrived: returns the waiters it resolves (sends confirmed before the writer reported them
    /// written, flushes). A pong that does not echo one of this connection's pings confirms nothing.
    pub fn on_pong(&mut self, payload: &[u8], now: Instant) -> Vec<(D, Outcome)> {
        let matched = (payload.len() == 16 && payload[..8] == self.nonce.to_be_bytes())
            .then(|| u64::from_be_bytes(payload[8..].try_into().unwrap_or([0; 8])))
            .and_then(|id| self.pings.iter().position(|p| p.id == id));
        let Some(i) = matched else {
            self.foreign_pongs += 1;
            return vec![];
        };
        // frames are ordered: this pong also answers every earlier ping
        let ping = self.pings.drain(..=i).next_back().expect("position is in range");
        self.last_rtt = Some(now.saturating_duration_since(ping.sent).max(Duration::from_micros(1)));
        self.last_life = Some(now);
        let n = self.unacked.iter().take_while(|(s, _)| *s <= ping.covers).count();
        if n > 0 {
            self.progress = true;
            // slow start: the window grows by what was confirmed (doubles per round trip)
            self.window = self.window.map(|w| w + n).filter(|&w| w < self.eighth());
        }
        let mut out: Vec<(D, Outcome)> =
            self.unacked.drain(..n).filter_map(|(_, e)| e.done).map(|d| (d, Outcome::Sent)).collect();
        out.extend(self.settle_flushes());
        out
    }

    /// The reader stopped reading (inbound buffer full): pong deadlines are suspended.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The reader reads again: outstanding pings get a full `ping_timeout` from now.
    pub fn resume(&mut self, now: Instant) {
        self.paused = false;
        let fresh = now + self.cfg.ping_timeout;
        for p in &mut self.pings {
            p.deadline = p.deadline.max(fresh);
        }
        if let Some(since) = &mut self.ping_due_since {
            *since = (*since).max(now);
        }
    }

    /// Timers: `Err(reason)` when the connection is lost by the liveness rule, else when to call again.
    pub fn poll(&mut self, now: Instant) -> Result<Instant, String> {
        if matches!(self.closing, Closing::Sent | Closing::Done) || self.peer_closed {
            return Ok(now + self.cfg.ping_interval);
        }
        if let Some(at) = self.next_ping_at {
            if now >= at && self.ping_due_since.is_none() {
                self.ping_due_since = Some(now);
            }
        }
        // a send written once the confirmation is due carries the ping (`next_write`); only a stream that
        // stopped needs the timer, a confirm_delay later: a paced sender's pings ride with its messages
        // instead of costing a wake-up of their own
        let confirm_at = self.confirm_at().filter(|_| self.uncovered).map(|at| at + self.cfg.confirm_delay);
        if confirm_at.is_some_and(|at| now >= at) && self.ping_due_since.is_none() {
            self.ping_due_since = Some(now);
        }
        if !self.paused {
            let timeout = self.cfg.ping_timeout.as_secs_f64();
            if let Some(p) = self.pings.front() {
                if now >= p.deadline {
                    self.silence = Some(now.saturating_duration_since(self.last_life.unwrap_or(now)));
                    let mut text = format!("{PING_TIMEOUT} no answer to a ping within ping_timeout ({timeout:.3}s)");
                    if self.foreign_pongs > 0 {
                        text.push_str(&format!(
                            "; {} pong(s) that did not echo a ping of this connection were ignored \
                             (RFC 6455 §5.5.3: a pong echoes the ping's payload)",
                            self.foreign_pongs
                        ));
                    }
                    return Err(text);
                }
            }
            if let Some(since) = self.ping_due_since {
                if now >= since + self.cfg.ping_timeout {
                    self.silence = Some(now.saturating_duration_since(self.last_life.unwrap_or(now)));
                    return Err(format!(
                        "{PING_TIMEOUT} a ping could not be written within ping_timeout ({timeout:.3}s); \
                         the peer is not reading"
                    ));
                }
            }
        }
        let mut wake = self.next_ping_at.unwrap_or(now + self.cfg.ping_interval);
        if let Some(since) = self.ping_due_since {
            wake = since + self.cfg.ping_timeout;
        } else if let Some(at) = confirm_at {
            wake = wake.min(at);
        }
        if !self.paused {
            if let Some(p) = self.pings.front() {
                wake = wake.min(p.deadline);
            }
        }
        Ok(wake.max(now))
    }

    /// Whether `poll` just found a ping due that the writer has not written yet.
    pub fn ping_due(&self) -> bool {
        self.ping_due_since.is_some()
    }

    /// The peer's close frame arrived.
    pub fn on_close_frame(&mut self) -> PeerClose {
        self.peer_closed = true;
        if self.closing == Closing::Sent {
            self.closing = Closing::Done;
            PeerClose::Complete
        } else {
            PeerClose::Answer
        }
    }

    /// The connection was lost (`ending`: how). Unconfirmed messages go back to the head of the queue,
    /// except one failed by the poison rule (see the module's Loss rule): returned here as the waiters to
    /// resolve, and every such failure (for the log).
    pub fn lost(&mut self, ending: Ending, reason: &str) -> (Vec<(D, Outcome)>, Vec<Failed>) {
        let (mut failed, mut all) = (vec![], vec![]);
        if !self.unacked.is_empty() {
            // the backlog is re-sent one message at a time first, so a later strike names its message
            self.window = Some(1);
        }
        if ending == Ending::Closed(Some(MESSAGE_TOO_BIG)) {
            // the peer read up to the message it could not take; the largest in flight is the one
            let largest = self.unacked.iter().enumerate().max_by_key(|(i, (_, e))| (e.size, usize::MAX - i));
            if let Some(i) = largest.map(|(i, _)| i) {
                if let Some((_, e)) = self.unacked.remove(i) {
                    let f = Failure::TooBig { size: e.size, reason: reason.to_string() };
                    self.fail(e, f, &mut failed, &mut all);
                }
            }
        } else if !self.progress && ending.strikes() {
            let condemned = self.unacked.front_mut().is_some_and(|(_, head)| {
                head.strikes += 1;
                head.strikes >= self.cfg.poison_after
            });
            if condemned {
                if let Some((_, e)) = self.unacked.pop_front() {
                    let f = Failure::Poisoned { size: e.size, losses: e.strikes, last: reason.to_string() };
                    self.fail(e, f, &mut failed, &mut all);
                }
            }
        }
        if let Some(m) = &self.cfg.metrics {
            if let Some(silence) = self.silence.take() {
                m.ping_silence(silence);
            }
            m.resent(self.unacked.len());
            m.failed_sends(all.len());
        }
        let mut keep: VecDeque<Entry<D>> = self.unacked.drain(..).map(|(_, e)| e).collect();
        keep.extend(self.queue.drain(..));
        self.queue = keep;
        self.unwritten_bytes = self.queue.iter().map(|e| e.size).sum();
        (self.writing_bytes, self.writing_tracked) = (0, false);
        self.pings.clear();
        self.next_ping_at = None;
        self.ping_due_since = None;
        (self.last_ping_at, self.uncovered) = (None, false);
        self.paused = false;
        if self.closing == Closing::Sent {
            self.closing = Closing::Requested;
        }
        failed.extend(self.settle_flushes());
        (failed, all)
    }

    /// The connection ended for good: every waiter still pending (sends not yet written, flushes), and
    /// what was never delivered. Nothing else will tell the application about those messages (the
    /// waiters of resolved sends are gone, and no flush will ever resolve), so all of them are named.
    pub fn finish(&mut self) -> (Vec<D>, Undelivered) {
        self.closing = Closing::Done;
        (self.unwritten_bytes, self.writing_bytes, self.writing_tracked) = (0, 0, false);
        let mut waiters = vec![];
        let mut unconfirmed = Vec::with_capacity(self.pending());
        for e in self.unacked.drain(..).map(|(_, e)| e).chain(self.queue.drain(..)) {
            waiters.extend(e.done);
            unconfirmed.push((e.n, e.msg));
        }
        waiters.extend(self.flushes.drain(..).map(|f| f.waiter));
        let mut failures = std::mem::take(&mut self.unreported);
        failures.sort_by_key(|f| f.seq);
        (waiters, Undelivered { unconfirmed, failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: u64 = 0x5EED_F00D_0000_0001;

    fn cfg() -> ProtocolConfig {
        ProtocolConfig {
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            send_buffer: 8,
            max_message_size: 100,
            poison_after: 3,
            confirm_delay: Duration::ZERO,
            metrics: None,
        }
    }

    fn proto() -> (Protocol<u32>, Instant) {
        let t0 = Instant::now();
        let mut p = Protocol::new(cfg(), NONCE);
        p.connected(t0);
        (p, t0)
    }

    /// A batch's messages and the pings inside it, in order.
    fn frames(w: Write) -> (Vec<Message>, Vec<Bytes>) {
        let Write::Batch(frames) = w else { panic!("expected a batch, got {w:?}") };
        let (mut msgs, mut pings) = (vec![], vec![]);
        for f in frames {
            match f {
                Message::Ping(b) => pings.push(b),
                m => msgs.push(m),
            }
        }
        (msgs, pings)
    }

    /// A batch that ends with its confirming ping: its messages and that ping.
    fn batch(p: &mut Protocol<u32>, now: Instant) -> (Vec<Message>, Bytes) {
        let w = p.next_write(now);
        assert!(matches!(&w, Write::Batch(f) if matches!(f.last(), Some(Message::Ping(_)))), "{w:?}");
        let (msgs, mut pings) = frames(w);
        (msgs, pings.pop().expect("a ping"))
    }

    fn ids(v: Vec<(u32, Outcome)>) -> Vec<u32> {
        v.into_iter().map(|(d, _)| d).collect()
    }

    fn s(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn unwritten_bytes_count_until_written_and_again_after_a_loss() {
        let t0 = Instant::now();
        let mut p = Protocol::new(cfg(), NONCE);
        p.connected(t0);
        p.push_untracked(Message::text("abc")).unwrap();
        p.push(Message::text("de"), 1).unwrap();
        assert_eq!(p.unwritten_bytes(), 5);
        assert_eq!(frames(p.next_write(t0)).0.len(), 2);
        p.push_untracked(Message::text("f")).unwrap();
        assert_eq!(p.unwritten_bytes(), 6, "the batch being written still counts");
        assert_eq!(p.written(), vec![(1, Outcome::Sent)], "only the tracked send resolves");
        assert_eq!(p.unwritten_bytes(), 1);
        p.lost(Ending::Cut, "gone");
        assert_eq!(p.unwritten_bytes(), 6, "unconfirmed messages go back to the queue");
        p.finish();
        assert_eq!(p.unwritten_bytes(), 0);
    }

    #[test]
    fn a_pong_echoing_the_ping_confirms_everything_written_before_it() {
        let (mut p, t0) = proto();
        for i in 0..3 {
            p.push(Message::text(format!("m{i}")), i).unwrap();
        }
        let (msgs, ping1) = batch(&mut p, t0);
        assert_eq!(msgs.len(), 3);
        p.push(Message::text("m3"), 3).unwrap();
        let (_, ping2) = batch(&mut p, s(t0, 0.1));
        assert_eq!(ids(p.on_pong(&ping1, s(t0, 0.2))), vec![0, 1, 2]);
        assert_eq!(p.last_rtt(), Some(Duration::from_millis(200)));
        assert_eq!(p.pending(), 1);
        assert_eq!(ids(p.on_pong(&ping2, s(t0, 0.3))), vec![3]);
        // echoed twice: nothing left to confirm
        assert!(p.on_pong(&ping2, s(t0, 0.3)).is_empty());
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn sends_resolve_when_written_and_flush_when_confirmed() {
        let (mut p, t0) = proto();
        // nothing pending: a flush resolves at once
        assert_eq!(p.flush(100, t0).1, vec![(100, Outcome::Flushed(vec![]))]);
        p.push(Message::text("a"), 1).unwrap();
        p.push(Message::text("b"), 2).unwrap();
        assert!(p.flush(101, t0).1.is_empty());
        p.push(Message::text("c"), 3).unwrap();
        let (_, ping) = batch(&mut p, t0);
        assert_eq!(p.written(), vec![(1, Outcome::Sent), (2, Outcome::Sent), (3, Outcome::Sent)]);
        assert!(p.written().is_empty());
        // the flush covers a and b only, and resolves with their confirmation
        assert_eq!(p.on_pong(&ping, t0), vec![(101, Outcome::Flushed(vec![]))]);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn a_failure_after_the_send_resolved_is_reported_by_the_flush() {
        let (mut p, t0) = proto();
        p.push(Message::binary(vec![0u8; 50]), 1).unwrap();
        let _ = batch(&mut p, t0);
        assert_eq!(ids(p.written()), vec![1]);
        // rejected after it was written: nobody waits on the send any more
        let (waiters, all) = p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "");
        assert!(waiters.is_empty() && all.len() == 1);
        p.push(Message::text("later"), 2).unwrap();
        assert!(p.flush(9, t0).1.is_empty());
        p.connected(t0);
        let (_, ping) = batch(&mut p, t0);
        let out = p.on_pong(&ping, t0);
        assert_eq!(out[0], (2, Outcome::Sent));
        assert!(matches!(&out[1], (9, Outcome::Flushed(f))
            if matches!(&f[..], [Failed { seq: 1, why: Failure::TooBig { size: 50, .. }, msg }] if size_of(msg) == 50)));
        // reported once
        assert_eq!(p.flush(10, t0).1, vec![(10, Outcome::Flushed(vec![]))]);
    }

    /// (acceptance number, message) of every unconfirmed message `finish` named.
    fn unconfirmed(u: &Undelivered) -> Vec<(u64, &str)> {
        u.unconfirmed.iter().map(|(n, m)| (*n, m.to_text().unwrap_or("?"))).collect()
    }

    #[test]
    fn ending_fails_pending_waiters_and_names_every_unconfirmed_message() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        let _ = batch(&mut p, t0);
        let _ = p.written();
        p.push(Message::text("b"), 2).unwrap();
        // "a" resolved (written) and "b" did not: both are named, in send order
        let (waiters, u) = p.finish();
        assert_eq!((waiters, unconfirmed(&u)), (vec![2], vec![(1, "a"), (2, "b")]));
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        let _ = batch(&mut p, t0);
        let _ = p.written();
        assert!(p.flush(7, t0).1.is_empty());
        // the flush waiter ends too, and the terminal error it gets names "a"
        let (waiters, u) = p.finish();
        assert_eq!((waiters, unconfirmed(&u)), (vec![7], vec![(1, "a")]));
    }

    #[test]
    fn ending_names_failures_no_flush_reported_and_never_confirmed_messages_once_each() {
        let (mut p, t0) = proto();
        p.push_untracked(Message::text("ok")).unwrap();
        p.push_untracked(Message::binary(vec![0u8; 60])).unwrap();
        p.push_untracked(Message::text("c")).unwrap();
        let (_, ping) = batch(&mut p, t0);
        // the peer confirmed nothing and closed with 1009: the 60-byte message fails, the others stay
        assert_eq!(p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "").1.len(), 1);
        assert!(p.on_pong(&ping, t0).is_empty(), "a pong of the lost connection confirms nothing");
        p.connected(t0);
        let (msgs, ping) = batch(&mut p, t0);
        assert_eq!(msgs, vec![Message::text("ok")], "re-sent alone after the loss");
        let _ = p.on_pong(&ping, t0);
        let _ = batch(&mut p, t0);
        p.push_untracked(Message::text("d")).unwrap();
        let (waiters, u) = p.finish();
        assert!(waiters.is_empty());
        assert_eq!(unconfirmed(&u), vec![(3, "c"), (4, "d")], "confirmed \"ok\" is not named");
        assert!(matches!(&u.failures[..], [Failed { seq: 2, why: Failure::TooBig { size: 60, .. }, .. }]), "{u:?}");
        assert_eq!(p.finish(), (vec![], Undelivered::default()), "named once");
    }

    #[test]
    fn a_later_pong_answers_earlier_pings_too() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        let (_, _lost_pong) = batch(&mut p, t0);
        p.push(Message::text("b"), 2).unwrap();
        let (_, ping2) = batch(&mut p, t0);
        assert_eq!(ids(p.on_pong(&ping2, s(t0, 0.1))), vec![1, 2]);
        assert!(p.poll(s(t0, 4.9)).is_ok());
        // nothing outstanding: no ping deadline fires
        assert!(p.poll(s(t0, 5.05)).is_ok());
    }

    #[test]
    fn unsolicited_empty_and_foreign_pongs_confirm_nothing() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        let (_, ping) = batch(&mut p, t0);
        assert!(p.on_pong(b"", t0).is_empty());
        let mut foreign = ping.to_vec();
        foreign[0] ^= 0xff; // another connection's nonce
        assert!(p.on_pong(&foreign, t0).is_empty());
        let mut unknown = ping.to_vec();
        unknown[15] ^= 0x40; // our nonce, a ping we never sent
        assert!(p.on_pong(&unknown, t0).is_empty());
        assert!(p.on_pong(&[0u8; 16], t0).is_empty());
        assert_eq!(p.pending(), 1);
        // a peer that never echoes our payload is a loss at the ping deadline, and says why
        let e = p.poll(s(t0, 5.0)).unwrap_err();
        assert!(e.contains("ping timeout") && e.contains("4 pong(s)"), "{e}");
    }

    #[test]
    fn periodic_pings_and_the_silent_peer() {
        let (mut p, t0) = proto();
        assert_eq!(p.next_write(t0), Write::Idle);
        assert_eq!(p.poll(t0), Ok(s(t0, 5.0)));
        assert_eq!(p.poll(s(t0, 5.0)), Ok(s(t0, 10.0)));
        assert!(p.ping_due());
        let ping = match p.next_write(s(t0, 5.0)) {
            Write::Ping(b) => b,
            other => panic!("{other:?}"),
        };
        assert!(!p.ping_due());
        assert_eq!(p.poll(s(t0, 6.0)), Ok(s(t0, 10.0)));
        assert!(p.on_pong(&ping, s(t0, 6.0)).is_empty());
        // next ping at 10; not echoed by 15: lost
        assert!(p.poll(s(t0, 10.0)).is_ok());
        let _ = p.next_write(s(t0, 10.0));
        assert!(p.poll(s(t0, 14.9)).is_ok());
        assert!(p.poll(s(t0, 15.0)).unwrap_err().contains("no answer to a ping"));
    }

    #[test]
    fn a_ping_that_cannot_be_written_is_a_loss() {
        let (mut p, t0) = proto();
        assert!(p.poll(s(t0, 5.0)).is_ok());
        // the writer is stuck (the peer does not read): the ping never goes out
        let e = p.poll(s(t0, 10.0)).unwrap_err();
        assert!(e.contains("could not be written"), "{e}");
    }

    #[test]
    fn paused_reader_suspends_pong_deadlines_until_resume() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        let _ = batch(&mut p, t0);
        p.pause();
        assert!(p.poll(s(t0, 60.0)).is_ok());
        // pings keep going out while paused (the kernel's TCP_USER_TIMEOUT watches them)
        assert!(p.ping_due());
        assert!(matches!(p.next_write(s(t0, 60.0)), Write::Ping(_)));
        p.resume(s(t0, 100.0));
        assert!(p.poll(s(t0, 104.9)).is_ok());
        assert!(p.poll(s(t0, 105.0)).is_err());
    }

    #[test]
    fn push_limits() {
        let (mut p, t0) = proto();
        assert_eq!(
            p.push(Message::binary(vec![0u8; 101]), 9).unwrap_err().0,
            PushError::TooBig { size: 101, max: 100 }
        );
        for i in 0..8 {
            p.push(Message::text("x"), i).unwrap();
        }
        let _ = batch(&mut p, t0);
        // unconfirmed messages still count
        assert_eq!(p.push(Message::text("x"), 8).unwrap_err().0, PushError::Full(8));
    }

    #[test]
    fn loss_requeues_unconfirmed_in_order_before_queued() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        p.push(Message::text("b"), 2).unwrap();
        let _ = batch(&mut p, t0);
        p.push(Message::text("c"), 3).unwrap();
        assert!(p.lost(Ending::Cut, "EOF").0.is_empty());
        p.connected(s(t0, 1.0));
        // one message in flight first, then the window doubles
        let (msgs, ping) = batch(&mut p, s(t0, 1.0));
        assert_eq!(msgs, vec![Message::text("a")]);
        assert_eq!(ids(p.on_pong(&ping, s(t0, 1.1))), vec![1]);
        let (msgs, ping) = batch(&mut p, s(t0, 1.1));
        assert_eq!(msgs, vec![Message::text("b"), Message::text("c")]);
        assert_eq!(ids(p.on_pong(&ping, s(t0, 1.2))), vec![2, 3]);
    }

    #[test]
    fn close_1009_fails_the_largest_unconfirmed_message_and_keeps_the_rest() {
        let (mut p, t0) = proto();
        p.push(Message::text("small"), 1).unwrap();
        p.push(Message::binary(vec![7u8; 90]), 2).unwrap();
        p.push(Message::text("after"), 3).unwrap();
        let _ = batch(&mut p, t0);
        let (failed, all) = p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "too big");
        assert_eq!(all.len(), 1);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 2);
        let why = Failure::TooBig { size: 90, reason: "too big".into() };
        assert!(why.message().contains("1009"));
        assert_eq!(failed[0].1, Outcome::Failed(Failed { seq: 2, msg: Message::binary(vec![7u8; 90]), why }));
        // no other message is blamed: the rest is re-sent, in order
        p.connected(s(t0, 1.0));
        let (msgs, ping) = batch(&mut p, s(t0, 1.0));
        assert_eq!(msgs, vec![Message::text("small")]);
        let _ = p.on_pong(&ping, s(t0, 1.0));
        assert_eq!(batch(&mut p, s(t0, 1.0)).0, vec![Message::text("after")]);
    }

    #[test]
    fn a_message_alone_in_flight_at_n_consecutive_losses_that_confirmed_nothing_is_failed() {
        let (mut p, t0) = proto();
        p.push(Message::text("poison"), 1).unwrap();
        for round in 1..=3u32 {
            p.connected(t0);
            let (msgs, _) = batch(&mut p, t0);
            assert_eq!(msgs, vec![Message::text("poison")], "round {round}");
            if round == 2 {
                // queued but never written at a loss (the window holds it back): no strike for this one
                p.push(Message::text("late"), 2).unwrap();
                assert_eq!(p.next_write(t0), Write::Idle);
            }
            let (failed, all) = p.lost(Ending::Closed(Some(1011)), "server error");
            if round < 3 {
                assert!(failed.is_empty() && all.is_empty(), "round {round}");
            } else {
                assert_eq!(ids(failed.clone()), vec![1]);
                assert!(
                    matches!(&failed[0].1, Outcome::Failed(Failed { seq: 1, why: Failure::Poisoned { losses: 3, .. }, msg })
                        if *msg == Message::text("poison")),
                    "{:?}",
                    failed[0].1
                );
                assert_eq!(all.len(), 1);
            }
        }
        // "late" was never in flight: still queued, and sent next
        assert_eq!(p.pending(), 1);
        p.connected(t0);
        assert_eq!(batch(&mut p, t0).0, vec![Message::text("late")]);
    }

    /// send_buffer 64: a ping after every 8 messages of a long batch, the window lifted at 8.
    fn big() -> (Protocol<u32>, Instant) {
        let t0 = Instant::now();
        let mut p = Protocol::new(ProtocolConfig { send_buffer: 64, max_message_size: 1000, ..cfg() }, NONCE);
        p.connected(t0);
        (p, t0)
    }

    fn texts(range: std::ops::Range<u32>) -> Vec<Message> {
        range.map(|i| Message::text(format!("m{i}"))).collect()
    }

    fn push_texts(p: &mut Protocol<u32>, range: std::ops::Range<u32>) {
        for m in texts(range) {
            p.push_untracked(m).unwrap();
        }
    }

    #[test]
    fn a_long_batch_carries_a_ping_after_every_eighth_of_send_buffer() {
        let (mut p, t0) = big();
        push_texts(&mut p, 0..20);
        let Write::Batch(frames) = p.next_write(t0) else { panic!("a batch") };
        let pings: Vec<usize> = (0..frames.len()).filter(|&i| matches!(frames[i], Message::Ping(_))).collect();
        assert_eq!((frames.len(), pings), (23, vec![8, 17, 22]));
        // the peer read up to the first inner ping and died: its pong confirms the first 8 only
        let Message::Ping(first) = &frames[8] else { unreachable!() };
        let _ = p.on_pong(first, t0);
        assert_eq!(p.pending(), 12);
    }

    #[test]
    fn a_loss_blames_nobody_when_the_connection_confirmed_something() {
        let (mut p, t0) = big();
        push_texts(&mut p, 0..40);
        let _ = p.next_write(t0);
        for round in 0..4u32 {
            // the same kind of loss every time, after the peer confirmed one message: never a strike
            let (failed, all) = p.lost(Ending::Closed(Some(1011)), "crash");
            assert!(failed.is_empty() && all.is_empty(), "round {round}");
            p.connected(t0);
            let (msgs, ping) = batch(&mut p, t0);
            assert_eq!(msgs, texts(round..round + 1), "after a loss the backlog starts with one message");
            let _ = p.on_pong(&ping, t0);
            let (msgs, _) = batch(&mut p, t0);
            assert_eq!(msgs, texts(round + 1..round + 3), "the window doubled");
        }
        assert_eq!(p.pending(), 36);
    }

    #[test]
    fn a_loss_that_confirmed_nothing_blames_the_oldest_message_only_and_re_sends_it_alone() {
        let (mut p, t0) = big();
        push_texts(&mut p, 0..30);
        let _ = p.next_write(t0);
        assert!(p.lost(Ending::Cut, "reset").1.is_empty());
        p.connected(t0);
        let (msgs, ping) = batch(&mut p, t0);
        assert_eq!(msgs, texts(0..1));
        assert!(!p.can_write());
        assert_eq!(p.next_write(t0), Write::Idle, "nothing more until m0 is confirmed");
        assert!(p.on_pong(&ping, t0).is_empty());
        // slow start: what may be in flight grows by what each pong confirmed, until an eighth of send_buffer
        let mut sizes = vec![];
        let mut next = 1;
        while next < 30 {
            assert!(p.can_write());
            let (msgs, ping) = batch(&mut p, t0);
            assert_eq!(msgs, texts(next..next + msgs.len() as u32));
            next += msgs.len() as u32;
            sizes.push(msgs.len());
            let _ = p.on_pong(&ping, t0);
        }
        assert_eq!(sizes, vec![2, 4, 23]);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn a_confirmation_clears_the_strikes() {
        let (mut p, t0) = big();
        push_texts(&mut p, 0..3);
        for _ in 0..2 {
            let _ = batch(&mut p, t0);
            assert!(p.lost(Ending::Cut, "reset").1.is_empty());
            p.connected(t0);
        }
        // m0 has two strikes; it is confirmed, m1 and m2 go out, and the connection dies: no strike
        let (_, ping) = batch(&mut p, t0);
        let _ = p.on_pong(&ping, t0);
        assert_eq!(batch(&mut p, t0).0, texts(1..3));
        assert!(p.lost(Ending::Cut, "reset").1.is_empty());
        // m1 is blamed from zero: failed at its third strike, not its first
        for strike in 1..=3 {
            p.connected(t0);
            assert_eq!(batch(&mut p, t0).0, texts(1..2));
            let (_, all) = p.lost(Ending::Cut, "reset");
            assert_eq!(all.len(), usize::from(strike == 3), "strike {strike}");
        }
    }

    /// One connection to a peer that reads frames in order, answers every ping it reads at once, and
    /// dies after reading `budget` frames or on reading `poison`: what the protocol failed at the loss.
    fn crashing_peer(
        p: &mut Protocol<u32>,
        now: Instant,
        budget: usize,
        poison: &str,
        read: &mut Vec<Message>,
    ) -> Vec<Failed> {
        p.connected(now);
        let mut frames_read = 0;
        while let Write::Batch(frames) = p.next_write(now) {
            for f in frames {
                if frames_read == budget || f == Message::text(poison) {
                    return p.lost(Ending::Closed(Some(1011)), "crash").1;
                }
                frames_read += 1;
                match f {
                    Message::Ping(b) => {
                        let _ = p.on_pong(&b, now);
                    }
                    m => read.push(m),
                }
            }
        }
        p.lost(Ending::Closed(Some(1011)), "crash").1
    }

    /// 10..=250, from a fixed linear congruential sequence.
    fn budgets() -> impl Iterator<Item = usize> {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        std::iter::repeat_with(move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            10 + (x >> 33) as usize % 241
        })
    }

    #[test]
    fn a_peer_crashing_every_10_to_250_frames_gets_every_message_and_fails_none() {
        for send_buffer in [64, 1024] {
            let t0 = Instant::now();
            let mut p: Protocol<u32> =
                Protocol::new(ProtocolConfig { send_buffer, max_message_size: 1000, ..cfg() }, NONCE);
            let (mut read, mut losses, mut next) = (vec![], 0, 0);
            let mut budget = budgets();
            while next < 5000 || p.pending() > 0 {
                while next < 5000 && p.pending() < send_buffer {
                    p.push_untracked(Message::text(format!("m{next}"))).unwrap();
                    next += 1;
                }
                let failed = crashing_peer(&mut p, t0, budget.next().unwrap_or(10), "", &mut read);
                assert!(
                    failed.is_empty(),
                    "send_buffer {send_buffer}: {} innocent message(s) failed, first {:?}",
                    failed.len(),
                    failed.first()
                );
                losses += 1;
            }
            for i in 0..5000 {
                assert!(read.contains(&Message::text(format!("m{i}"))), "m{i} never read");
            }
            assert!(losses > 30, "{losses}");
        }
    }

    #[test]
    fn a_poison_message_in_a_backlog_is_failed_and_nothing_else() {
        let (mut p, t0) = big();
        push_texts(&mut p, 0..60);
        let (mut read, mut failed, mut losses) = (vec![], vec![], 0);
        while p.pending() > 0 {
            failed.extend(crashing_peer(&mut p, t0, usize::MAX, "m30", &mut read));
            losses += 1;
            assert!(losses < 20, "{failed:?}");
        }
        assert!(
            matches!(&failed[..], [Failed { seq: 31, why: Failure::Poisoned { losses: 3, .. }, msg }] if *msg == Message::text("m30")),
            "{failed:?}"
        );
        for m in texts(0..60).into_iter().filter(|m| *m != Message::text("m30")) {
            assert!(read.contains(&m), "{m:?} never read");
        }
    }

    #[test]
    fn a_flush_reports_every_failure_in_send_order_with_its_message() {
        let (mut p, t0) = proto();
        let (a, c) = (Message::binary(vec![1u8; 50]), Message::binary(vec![3u8; 90]));
        p.push_untracked(a.clone()).unwrap();
        p.push_untracked(Message::text("ok")).unwrap();
        p.push_untracked(c.clone()).unwrap();
        assert!(p.flush(7, t0).1.is_empty());
        // rejected with 1009 twice: the 90-byte message (#3) first, then, re-sent alone, the 50-byte one (#1)
        for _ in 0..2 {
            let _ = batch(&mut p, t0);
            assert_eq!(p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "").1.len(), 1);
            p.connected(t0);
        }
        let (msgs, ping) = batch(&mut p, t0);
        assert_eq!(msgs, vec![Message::text("ok")]);
        let out = p.on_pong(&ping, t0);
        let [(7, Outcome::Flushed(f))] = &out[..] else { panic!("{out:?}") };
        let named: Vec<(u64, &Message)> = f.iter().map(|f| (f.seq, &f.msg)).collect();
        assert_eq!(named, vec![(1, &a), (3, &c)]);
    }

    #[test]
    fn requested_close_writes_everything_then_a_ping_then_the_close_frame() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        p.request_close();
        let (msgs, ping) = batch(&mut p, t0);
        assert_eq!(msgs.len(), 1);
        assert_eq!(p.next_write(t0), Write::Close);
        assert_eq!(p.next_write(t0), Write::Idle);
        // the reader still runs while closing: the pong confirms the send
        assert_eq!(ids(p.on_pong(&ping, s(t0, 0.01))), vec![1]);
        assert_eq!(p.on_close_frame(), PeerClose::Complete);
        assert_eq!(p.finish(), (vec![], Undelivered::default()));
        // no ping deadline while the close handshake runs (close_timeout bounds it)
        assert!(p.poll(s(t0, 100.0)).is_ok());
    }

    #[test]
    fn a_close_started_by_the_peer_is_answered() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        let _ = batch(&mut p, t0);
        assert_eq!(p.on_close_frame(), PeerClose::Answer);
        assert_eq!(p.next_write(t0), Write::Idle);
        let (waiters, u) = p.finish();
        assert_eq!((waiters, unconfirmed(&u)), (vec![1], vec![(1, "a")]));
    }

    #[test]
    fn close_requested_during_an_outage_waits_for_the_next_connection() {
        let (mut p, t0) = proto();
        p.push(Message::text("a"), 1).unwrap();
        p.request_close();
        let _ = batch(&mut p, t0);
        assert_eq!(p.next_write(t0), Write::Close);
        assert!(p.lost(Ending::Cut, "EOF").0.is_empty());
        p.connected(t0);
        let (msgs, _) = batch(&mut p, t0);
        assert_eq!(msgs, vec![Message::text("a")]);
        assert_eq!(p.next_write(t0), Write::Close);
    }

    fn delayed() -> (Protocol<u32>, Instant) {
        let t0 = Instant::now();
        let cfg = ProtocolConfig { send_buffer: 64, confirm_delay: Duration::from_millis(10), ..cfg() };
        let mut p = Protocol::new(cfg, NONCE);
        p.connected(t0);
        (p, t0)
    }

    fn pinged(p: &mut Protocol<u32>, now: Instant) -> Bytes {
        batch(p, now).1
    }

    fn unpinged(p: &mut Protocol<u32>, now: Instant) -> Vec<Message> {
        let (msgs, pings) = frames(p.next_write(now));
        assert!(pings.is_empty(), "expected a batch without a ping");
        msgs
    }

    fn ping_of(w: Write) -> Bytes {
        match w {
            Write::Ping(b) => b,
            other => panic!("expected a ping, got {other:?}"),
        }
    }

    #[test]
    fn a_lone_send_is_confirmed_at_once_and_a_paced_stream_once_per_confirm_delay() {
        let (mut p, t0) = delayed();
        p.push(Message::text("a"), 1).unwrap();
        let ping = pinged(&mut p, t0);
        assert_eq!(ids(p.on_pong(&ping, s(t0, 0.001))), vec![1]);
        // within confirm_delay of that ping: deferred to 10 ms after it, one ping for both
        p.push(Message::text("b"), 2).unwrap();
        assert_eq!(unpinged(&mut p, s(t0, 0.002)).len(), 1);
        assert_eq!(p.next_write(s(t0, 0.002)), Write::Idle);
        // a send from 10 ms on carries the ping; the timer waits another confirm_delay for one
        assert_eq!(p.poll(s(t0, 0.002)), Ok(s(t0, 0.020)), "the timer wakes when a stream that stopped is due");
        p.push(Message::text("c"), 3).unwrap();
        assert_eq!(unpinged(&mut p, s(t0, 0.006)).len(), 1);
        assert!(p.poll(s(t0, 0.010)).is_ok());
        assert!(!p.ping_due(), "a send would carry it now");
        assert!(p.poll(s(t0, 0.020)).is_ok());
        assert!(p.ping_due(), "no send came: the timer writes it");
        let ping = ping_of(p.next_write(s(t0, 0.020)));
        assert_eq!(ids(p.on_pong(&ping, s(t0, 0.021))), vec![2, 3]);
        assert_eq!(p.poll(s(t0, 0.021)), Ok(s(t0, 5.020)), "nothing left to confirm: the periodic ping");
        // a batch written confirm_delay after the last ping carries its own
        p.push(Message::text("d"), 4).unwrap();
        let ping = pinged(&mut p, s(t0, 0.030));
        assert_eq!(ids(p.on_pong(&ping, s(t0, 0.031))), vec![4]);
    }

    #[test]
    fn a_flush_makes_the_confirming_ping_due_at_once() {
        let (mut p, t0) = delayed();
        p.push_untracked(Message::text("a")).unwrap();
        let _ = pinged(&mut p, t0);
        p.push_untracked(Message::text("b")).unwrap();
        let _ = unpinged(&mut p, t0);
        assert!(p.flush(7, s(t0, 0.001)).1.is_empty());
        assert!(p.ping_due());
        let ping = ping_of(p.next_write(s(t0, 0.001)));
        assert_eq!(p.on_pong(&ping, s(t0, 0.002)), vec![(7, Outcome::Flushed(vec![]))]);
        // a batch written while a flush waits carries its ping
        p.push_untracked(Message::text("c")).unwrap();
        assert!(p.flush(8, s(t0, 0.003)).1.is_empty());
        let ping = pinged(&mut p, s(t0, 0.003));
        assert_eq!(p.on_pong(&ping, s(t0, 0.004)), vec![(8, Outcome::Flushed(vec![]))]);
    }

    #[test]
    fn an_eighth_of_send_buffer_pending_is_confirmed_at_once() {
        let (mut p, t0) = delayed();
        p.push(Message::text("x"), 0).unwrap();
        let _ = pinged(&mut p, t0);
        for i in 1..7 {
            p.push(Message::text("x"), i).unwrap();
        }
        assert_eq!(unpinged(&mut p, t0).len(), 6);
        p.push(Message::text("x"), 7).unwrap();
        let ping = pinged(&mut p, t0);
        assert_eq!(ids(p.on_pong(&ping, t0)), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_requested_close_confirms_unconfirmed_writes_before_the_close_frame() {
        let (mut p, t0) = delayed();
        p.push(Message::text("a"), 1).unwrap();
        let _ = pinged(&mut p, t0);
        p.push(Message::text("b"), 2).unwrap();
        let _ = unpinged(&mut p, t0);
        p.request_close();
        let ping = ping_of(p.next_write(t0));
        assert_eq!(p.next_write(t0), Write::Close);
        assert_eq!(ids(p.on_pong(&ping, t0)), vec![1, 2]);
    }

    #[test]
    fn a_loss_before_the_confirming_ping_resends_with_a_ping_at_once() {
        let (mut p, t0) = delayed();
        p.push(Message::text("a"), 1).unwrap();
        let _ = pinged(&mut p, t0);
        p.push(Message::text("b"), 2).unwrap();
        let _ = unpinged(&mut p, t0);
        assert!(p.lost(Ending::Cut, "EOF").0.is_empty());
        p.connected(s(t0, 0.001));
        assert_eq!(p.poll(s(t0, 0.001)), Ok(s(t0, 5.001)), "no confirmation is due on the new connection yet");
        let ping = pinged(&mut p, s(t0, 0.001));
        assert_eq!(ids(p.on_pong(&ping, s(t0, 0.002))), vec![1]);
        let ping = pinged(&mut p, s(t0, 0.002));
        assert_eq!(ids(p.on_pong(&ping, s(t0, 0.003))), vec![2]);
    }

    /// What a measured protocol reported, in order.
    #[derive(Debug, Default)]
    struct Recorded(std::sync::Mutex<Vec<(&'static str, f64)>>);

    impl Recorded {
        fn take(&self) -> Vec<(&'static str, f64)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl LossMeter for Recorded {
        fn ping_silence(&self, silence: Duration) {
            self.0.lock().unwrap().push(("silence", silence.as_secs_f64()));
        }
        fn resent(&self, n: usize) {
            self.0.lock().unwrap().push(("resent", n as f64));
        }
        fn failed_sends(&self, n: usize) {
            self.0.lock().unwrap().push(("failed", n as f64));
        }
    }

    #[test]
    fn a_measured_loss_counts_what_it_resends_and_fails_and_the_silence_before_a_ping_timeout() {
        let m = Arc::new(Recorded::default());
        let t0 = Instant::now();
        let mut p = Protocol::new(ProtocolConfig { metrics: Some(m.clone()), ..cfg() }, NONCE);
        p.connected(t0);
        p.push(Message::text("a"), 1).unwrap();
        let (_, ping) = batch(&mut p, t0);
        assert_eq!(ids(p.on_pong(&ping, s(t0, 1.0))), vec![1]);
        // two more are written, and the peer goes silent: the ping behind them is never echoed
        p.push(Message::text("b"), 2).unwrap();
        p.push(Message::text("c"), 3).unwrap();
        batch(&mut p, s(t0, 2.0));
        let reason = p.poll(s(t0, 7.0)).unwrap_err();
        assert!(reason.starts_with(PING_TIMEOUT), "{reason}");
        p.lost(Ending::Cut, &reason);
        // from the pong at 1 s to the deadline at 7 s
        assert_eq!(m.take(), [("silence", 6.0), ("resent", 2.0), ("failed", 0.0)]);
        // after the loss one message goes out alone; a close 1009 fails it (the largest in flight):
        // counted as failed, not as re-sent, and with no deadline there is no silence
        p.connected(s(t0, 8.0));
        assert_eq!(batch(&mut p, s(t0, 8.0)).0.len(), 1);
        p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "too big");
        assert_eq!(m.take(), [("resent", 0.0), ("failed", 1.0)]);
    }

    #[test]
    fn a_withdrawn_flush_leaves_its_failures_to_the_next_flush() {
        let (mut p, t0) = proto();
        p.push_untracked(Message::binary(vec![0u8; 50])).unwrap();
        let (_, _lost_pong) = batch(&mut p, t0);
        let (cancelled, out) = p.flush(7, t0);
        assert!(out.is_empty());
        // its caller stopped waiting (a timeout): withdrawn, nothing is reported to it any more
        assert_eq!(p.cancel_flush(cancelled), Some(7));
        assert_eq!(p.cancel_flush(cancelled), None);
        let (waiters, all) = p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "too big");
        assert!(waiters.is_empty() && all.len() == 1, "{waiters:?}");
        p.connected(t0);
        p.push_untracked(Message::text("after")).unwrap();
        assert!(p.flush(8, t0).1.is_empty());
        let (_, ping) = batch(&mut p, t0);
        let out = p.on_pong(&ping, t0);
        assert!(
            matches!(&out[..], [(8, Outcome::Flushed(f))] if matches!(&f[..], [Failed { seq: 1, why: Failure::TooBig { size: 50, .. }, .. }])),
            "{out:?}"
        );
    }

    #[test]
    fn a_withdrawn_flush_leaves_its_failures_to_the_end() {
        let (mut p, t0) = proto();
        p.push_untracked(Message::binary(vec![0u8; 50])).unwrap();
        let _ = batch(&mut p, t0);
        let (ticket, _) = p.flush(7, t0);
        assert_eq!(p.cancel_flush(ticket), Some(7));
        let _ = p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "");
        let (waiters, u) = p.finish();
        assert!(waiters.is_empty());
        assert!(matches!(&u.failures[..], [Failed { seq: 1, .. }]), "{u:?}");
    }

    #[test]
    fn withdrawn_flushes_are_forgotten_and_the_live_ones_settle_in_order() {
        let (mut p, t0) = delayed();
        p.push_untracked(Message::text("a")).unwrap();
        let (_, ping) = batch(&mut p, t0);
        let (first, _) = p.flush(1, t0);
        // an application polling with a timeout of zero, 100,000 times: nothing stays registered
        for i in 0..100_000 {
            let (t, out) = p.flush(1000 + i, t0);
            assert!(out.is_empty());
            assert_eq!(p.cancel_flush(t), Some(1000 + i));
        }
        assert_eq!(p.flushes.len(), 1);
        p.push_untracked(Message::text("b")).unwrap();
        let (last, _) = p.flush(2, t0);
        assert_eq!(p.cancel_flush(first), Some(1));
        // the live flush covers "a" and "b"; "a"'s pong settles nothing, "b"'s settles it
        assert!(p.on_pong(&ping, t0).is_empty());
        let (_, ping) = batch(&mut p, t0);
        assert_eq!(p.on_pong(&ping, t0), vec![(2, Outcome::Flushed(vec![]))]);
        assert_eq!(p.cancel_flush(last), None, "settled");
        assert!(p.flushes.is_empty());
        // no flush waits: confirming pings are deferred again (a withdrawn flush used to force one per batch)
        p.push_untracked(Message::text("c")).unwrap();
        assert!(frames(p.next_write(s(t0, 0.001))).1.is_empty());
    }

    #[test]
    fn failures_a_gone_waiter_never_took_are_reported_again() {
        let (mut p, t0) = proto();
        p.push_untracked(Message::binary(vec![0u8; 50])).unwrap();
        let _ = batch(&mut p, t0);
        let _ = p.flush(7, t0);
        let (mut settled, _) = p.lost(Ending::Closed(Some(MESSAGE_TOO_BIG)), "");
        // the flush settled with the failure, and its caller was gone by the time it was handed over
        let Some((7, Outcome::Flushed(f))) = settled.pop() else { panic!("{settled:?}") };
        p.restore(f);
        let (_, out) = p.flush(8, t0);
        assert!(matches!(&out[..], [(8, Outcome::Flushed(f))] if f.len() == 1 && f[0].seq == 1), "{out:?}");
    }

    #[test]
    fn a_close_the_peer_chose_blames_no_message_and_clears_no_strike() {
        let chosen = [1000, 1001, 1012, 1013, 1014, 3000, 4000, 4999].map(|c| Ending::Closed(Some(c)));
        for ending in chosen.into_iter().chain([Ending::Closed(None)]) {
            assert!(!ending.strikes(), "{ending:?}");
            let (mut p, t0) = proto();
            p.push(Message::text("join"), 1).unwrap();
            // a crash, then five deliberate closes (a draining instance): only the crash counts
            let _ = batch(&mut p, t0);
            assert!(p.lost(Ending::Cut, "reset").1.is_empty());
            for _ in 0..5 {
                p.connected(t0);
                assert_eq!(batch(&mut p, t0).0, vec![Message::text("join")]);
                let (failed, all) = p.lost(ending, "draining");
                assert!(failed.is_empty() && all.is_empty(), "{ending:?}");
            }
            // two more crash-like losses make three strikes
            for (i, crash) in [Ending::Closed(Some(1011)), Ending::Cut].into_iter().enumerate() {
                p.connected(t0);
                let _ = batch(&mut p, t0);
                let (failed, _) = p.lost(crash, "crash");
                assert_eq!(failed.len(), i, "{ending:?} then {crash:?}");
            }
        }
    }

    #[test]
    fn a_loss_that_looks_like_the_peer_failing_on_what_it_read_is_a_strike() {
        for ending in [Ending::Cut].into_iter().chain([1002, 1003, 1007, 1008, 1011].map(|c| Ending::Closed(Some(c)))) {
            assert!(ending.strikes(), "{ending:?}");
            let (mut p, t0) = proto();
            p.push(Message::text("poison"), 1).unwrap();
            let mut failed = vec![];
            for _ in 0..3 {
                p.connected(t0);
                let _ = batch(&mut p, t0);
                failed = p.lost(ending, "crash").1;
            }
            assert!(matches!(&failed[..], [Failed { why: Failure::Poisoned { losses: 3, .. }, .. }]), "{ending:?}");
        }
    }
}
