//! The reconnect supervisor of a loop-thread connection: attempts (url_for, TCP, TLS, the upgrade and
//! its redirects, on_connect, the first message), the live connection's end, the retry decision of
//! `crate::retry_state` and its reports, and the end of the connection. Every bound is a deadline
//! checked by [`Conn::service`], which every entry point runs last and which re-arms the timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::reconnect::{report, Event};
use crate::redact::redact_url;
use crate::retry_state::Decision;
use crate::retry_state::GaveUp;
use crate::ws::upgrade::{self, Endpoint};
use crate::ws::wire::Wire;
use crate::ws::{SendError, State, Terminal, WsError};

use super::coroutine::{self, Slot};
use super::hooks::HandshakeInfo;
use super::{Attempt, Conn, EventLoop, Fx, Goodbye, Inner, Link, Phase, Res, LOG};

/// Bound on a close whatever happens: close_timeout plus this, then the socket is aborted.
const CLOSE_SLACK: Duration = Duration::from_millis(200);

impl Conn {
    /// The first step of `start()`, on the loop that awaits it: the connection runs on that loop from
    /// here. Ready once connected, or with the end; otherwise a slot set then.
    pub(crate) fn begin<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.started.store(true, std::sync::atomic::Ordering::SeqCst);
        let running = super::super::bridge::completer::running_loop(py)?;
        if let Some(el) = self.el.get() {
            if el.obj.bind(py).as_ptr() != running.as_ptr() {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "the connection to {} runs on the event loop that first awaited it; await it there",
                    self.name
                )));
            }
        } else {
            let context = py.import("contextvars")?.call_method0("copy_context")?;
            let _ = self.el.set(EventLoop {
                obj: running.clone().unbind(),
                thread: std::thread::current().id(),
                context: context.unbind(),
            });
        }
        let slot = self.with(py, |c, st, fx| {
            if st.phase == Phase::Idle && !st.close_requested && c.terminal.get().is_none() {
                c.forward_alarms(py, st);
                c.set_state(State::Connecting);
                c.start_attempt(py, st, fx, Instant::now());
            }
            if c.terminal.get().is_some() || c.connects() > 0 {
                return None;
            }
            let slot = Slot::new();
            st.started.push(slot.clone());
            Some(slot)
        });
        match slot {
            Some(slot) => coroutine::on_slot(py, "Connection.start", false, slot, self.hint(py)),
            None => coroutine::resolved(py, "Connection.start", false, self.start_result(py)),
        }
    }

    /// Connected once (even if the server has since ended it with a final code: what it sent is there
    /// to read), or the end.
    fn start_result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.terminal.get() {
            Some(Terminal::PeerClosed { .. }) | None if self.connects() > 0 => Ok(py.None()),
            Some(t) => Err(self.end_error(py, t)),
            None => Ok(py.None()),
        }
    }

    /// The watchdog's alarms become connection events: its monitor runs on tether's runtime, so each
    /// alarm is handed to the connection's loop.
    fn forward_alarms(&self, py: Python<'_>, st: &mut Inner) {
        let (Some(wd), Some(el)) = (&self.hooks.watchdog, self.event_loop(py)) else { return };
        let mut rx = wd.subscribe();
        let (me, el) = (self.me.clone(), el.clone().unbind());
        st.watchdog_forward = Some(super::super::bridge::runtime::get().spawn(async move {
            while let Ok(a) = rx.recv().await {
                let ev = Event::Alarm(a);
                let handed = super::super::with_python(|py| {
                    let cb = Py::new(py, super::Emit { conn: me.clone(), ev })?;
                    el.bind(py).call_method1("call_soon_threadsafe", (cb,)).map(drop)
                });
                if !matches!(handed, Some(Ok(()))) {
                    return;
                }
            }
        }));
    }

    pub(super) fn new_id(st: &mut Inner) -> u64 {
        st.next_id += 1;
        st.next_id
    }

    pub(super) fn start_attempt(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        let started = st.retry.start(now);
        {
            let started = started.clone();
            fx.later(move |_, c| report::started(c.report(), &started));
        }
        st.retry_at = None;
        st.attempt = Some(Box::new(Attempt {
            number: started.number,
            strategy: started.strategy.clone(),
            stall_at: started.deadline,
            begun: now,
            open_by: now + self.cfg.open_timeout,
            hook_by: None,
            first_by: None,
            url: self.cfg.url.clone(),
            headers: self.cfg.headers.clone(),
            redirects: 0,
            first: !st.connected_once,
            task: None,
            first_seen: false,
        }));
        if self.hooks.url_for.is_some() {
            st.phase = Phase::Target;
            let id = Self::new_id(st);
            let (strategy, number) = (started.strategy, started.number);
            fx.later(move |py, c| c.start_url_for(py, id, &strategy, number));
        } else {
            self.connect_link(py, st, fx);
        }
    }

    /// `url_for` returned where to connect.
    pub(super) fn target(
        self: &Arc<Self>,
        py: Python<'_>,
        st: &mut Inner,
        fx: &mut Fx,
        url: String,
        headers: Vec<(String, String)>,
    ) {
        if let Some(a) = st.attempt.as_mut() {
            a.url = url;
            a.headers = self.cfg.headers.iter().chain(headers.iter()).cloned().collect();
            a.task = None;
        }
        self.connect_link(py, st, fx);
    }

    /// TCP (and TLS) to the attempt's URL, then the upgrade request.
    pub(super) fn connect_link(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx) {
        let Some(a) = st.attempt.as_ref() else { return };
        let ep = match Endpoint::parse(&a.url) {
            Ok(ep) => ep,
            Err(e) => {
                return self.end_attempt(
                    py,
                    st,
                    fx,
                    WsError::fatal(format!("invalid URL {}: {e}", a.url)),
                    Goodbye::Abort,
                )
            }
        };
        let request = upgrade::request(&ep, &a.headers, rand::random(), self.cfg.compression.as_ref());
        let tls = ep.tls.then(|| self.cfg.tls.clone().unwrap_or_else(crate::ws::tls::default_config));
        let wire = match Wire::new(
            tls.map(|c| (c, ep.host.as_str())),
            &request,
            self.cfg.max_message_size,
            self.cfg.read_buffer_size,
        ) {
            Ok(w) => w,
            Err(e) => {
                let err =
                    WsError { fatal: e.certificate, ..WsError::retry(format!("TLS handshake failed: {}", e.text)) };
                return self.end_attempt(py, st, fx, err, Goodbye::Abort);
            }
        };
        let shown = redact_url(&a.url);
        let (strategy, number) = (a.strategy.clone(), a.number);
        let id = Self::new_id(st);
        let (host, port) = (ep.host.clone(), ep.port);
        st.link = Some(Box::new(Link::new(id, wire, ep)));
        st.phase = Phase::Connecting;
        fx.later(move |py, c| {
            tracing::debug!(target: LOG, logger = c.cfg.reconnect.logger.as_deref(), url = %shown, strategy = &*strategy,
                attempt = number, "opening WebSocket to {shown}");
            c.open_tcp(py, id, host, port);
        });
    }

    /// The upgrade succeeded: on_connect, the first message, or connected.
    pub(super) fn upgraded(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        if self.hooks.on_connect.is_some() {
            st.phase = Phase::Hook;
            let id = Self::new_id(st);
            st.hs = Some(Box::new(super::HsState { id, began: Some(now), ..Default::default() }));
            let Some(a) = st.attempt.as_mut() else { return };
            a.hook_by = Some(now + self.cfg.open_timeout);
            let info = HandshakeInfo { attempt: a.number, strategy: a.strategy.clone(), reconnect: st.connected_once };
            fx.later(move |py, c| c.start_on_connect(py, id, info));
        } else {
            self.after_hook(py, st, fx, now);
        }
    }

    /// on_connect returned (or there is none): what it read and did not take is the application's.
    pub(super) fn after_hook(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        if let Some(mut hs) = st.hs.take() {
            hs.ended = Some("the on_connect handshake is over".into());
            for slot in hs.readable.drain(..) {
                fx.resolve.push((slot, Res::HsClosed("the on_connect handshake is over".into())));
            }
            if !hs.queue.is_empty() {
                if let Some(a) = st.attempt.as_mut() {
                    a.first_seen = true;
                }
                for (m, size) in hs.queue.drain(..) {
                    st.messages_in += 1;
                    st.bytes_in += size as u64;
                    st.inbound_bytes += size;
                    st.inbound.push_back((m, size));
                }
            }
        }
        match (self.cfg.first_message_timeout, st.attempt.as_mut()) {
            (Some(fm), Some(a)) if !a.first_seen => {
                a.first_by = Some(now + fm);
                a.task = None;
                st.phase = Phase::FirstMessage;
            }
            _ => self.connected(py, st, fx, now),
        }
    }

    pub(super) fn connected(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        st.phase = Phase::Live;
        st.live = true;
        st.connected_once = true;
        self.opened.store(true, std::sync::atomic::Ordering::SeqCst);
        st.connected_at = Some(now);
        st.proto.connected(now);
        if let Some(a) = st.attempt.as_mut() {
            a.task = None;
        }
        if let Some(up) = st.retry.connected(now) {
            st.settle_at = Some(up.stable_at);
            fx.later(move |_, c| report::up(&c.cfg.reconnect, c.report(), &up));
        }
        st.hb = self
            .hooks
            .heartbeat
            .as_ref()
            .map(|b| crate::ws::heartbeat::HeartbeatClock::new(b.interval, b.timeout, now));
        st.hb_candidates.clear();
        for slot in st.started.drain(..) {
            fx.resolve.push((slot, Res::Ok));
        }
        if !st.inbound.is_empty() {
            for slot in st.readable.drain(..) {
                fx.resolve.push((slot, Res::Ok));
            }
        }
        self.pump(py, st, fx, now);
    }

    /// The attempt failed, or the live connection was lost: leave the socket as `goodbye` says, then
    /// retry or give up as the policy decides.
    pub(super) fn end_attempt(
        self: &Arc<Self>,
        py: Python<'_>,
        st: &mut Inner,
        fx: &mut Fx,
        err: WsError,
        goodbye: Goodbye,
    ) {
        let now = Instant::now();
        self.drop_link(py, st, fx, goodbye);
        self.stop_attempt(st, fx, &format!("on_connect failed: {}", err.text));
        let was_live = std::mem::replace(&mut st.live, false);
        st.hb = None;
        st.hb_candidates.clear();
        st.settle_at = None;
        st.reader_paused = false;
        if st.close_requested {
            // the close is what the user asked for, whatever ended it
            return self.finish(py, st, fx, Terminal::closed());
        }
        if was_live {
            let (waiters, failures) = st.proto.lost(err.ending(), &err.text);
            fx.outcomes(waiters);
            let resend = st.proto.pending();
            let text = err.text.clone();
            fx.later(move |_, c| {
                let logger = c.cfg.reconnect.logger.as_deref();
                for f in failures {
                    tracing::warn!(target: LOG, logger, error = %text, seq = f.seq,
                        "message #{} was removed from the send queue: {}", f.seq, f.why.message());
                }
                tracing::debug!(target: LOG, logger, error = %text, pending = resend as u64,
                    "connection lost: {text}; {resend} accepted message(s) not yet confirmed will be (re-)sent after the reconnect");
            });
        }
        if err.final_close {
            let code = err.close_code.unwrap_or_default();
            let text = err.text.clone();
            fx.later(move |_, c| {
                tracing::info!(target: LOG, logger = c.cfg.reconnect.logger.as_deref(), error = %text,
                    "{text}: {code} is in final_close_codes, so the connection ends here (no reconnect)");
            });
            return self.finish(
                py,
                st,
                fx,
                Terminal::PeerClosed { code, text: err.text, undelivered: Default::default() },
            );
        }
        let decision = st.retry.failed(now, err.fatal);
        {
            let (decision, text) = (decision.clone(), err.text.clone());
            fx.later(move |_, c| report::failure(&c.cfg.reconnect, c.report(), &decision, &text));
        }
        match decision {
            Decision::Retry { delay, .. } => {
                st.phase = Phase::Backoff;
                st.retry_at = Some(now + delay);
            }
            Decision::GiveUp { reason, attempts, elapsed, .. } => {
                let g = GaveUp {
                    name: self.cfg.reconnect.name.clone(),
                    attempts,
                    elapsed,
                    reason,
                    last_error_text: err.text.clone(),
                    last_error: err,
                };
                let term = Terminal::GaveUp {
                    message: g.message(),
                    attempts,
                    elapsed,
                    reason,
                    last: g.last_error,
                    undelivered: Default::default(),
                };
                self.finish(py, st, fx, term);
            }
        }
    }

    /// Cancel what the attempt runs (a task) and end its on_connect handshake with `why`.
    fn stop_attempt(&self, st: &mut Inner, fx: &mut Fx, why: &str) {
        if let Some(task) = st.attempt.as_mut().and_then(|a| a.task.take()) {
            fx.later(move |py, _| {
                let _ = task.bind(py).call_method0("cancel");
            });
        }
        if let Some(mut hs) = st.hs.take() {
            for slot in hs.readable.drain(..) {
                fx.resolve.push((slot, Res::HsClosed(why.to_string())));
            }
        }
        st.attempt = None;
    }

    /// The connection ends for good: every waiter learns it, the socket is left (its deadline goes
    /// once no socket drains: `service`).
    pub(super) fn finish(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, term: Terminal) {
        if self.terminal.get().is_some() {
            return;
        }
        // under the lock under which `send` and `flush` check the terminal: nothing is accepted after
        // the list of what was never delivered was made
        let (pending, term) = self.set_terminal(st, term);
        let closed = matches!(term, Terminal::Closed { .. } | Terminal::PeerClosed { .. });
        self.set_state(if closed { State::Closed } else { State::Failed });
        st.phase = Phase::Done;
        self.drop_link(py, st, fx, Goodbye::Close);
        self.stop_attempt(st, fx, "the connection ended");
        st.live = false;
        st.hb = None;
        st.retry_at = None;
        st.settle_at = None;
        st.close_by = None;
        st.close_hard_by = None;
        for slot in pending {
            fx.resolve.push((slot, Res::Send(SendError::Ended(term.clone()))));
        }
        for slot in st.room.drain(..) {
            fx.resolve.push((slot, Res::Send(SendError::Ended(term.clone()))));
        }
        for slot in st.readable.drain(..).chain(st.closed.drain(..)) {
            fx.resolve.push((slot, Res::Ok));
        }
        let started_ok = matches!(term, Terminal::PeerClosed { .. }) && self.connects() > 0;
        for slot in st.started.drain(..) {
            fx.resolve.push((slot, if started_ok { Res::Ok } else { Res::Ended }));
        }
        if let Some(f) = st.watchdog_forward.take() {
            f.abort();
        }
        let (unconfirmed, failed) = (term.undelivered().unconfirmed.len(), term.undelivered().failures.len());
        fx.later(move |py, c| {
            if unconfirmed + failed > 0 {
                let mut what = vec![];
                if unconfirmed > 0 {
                    what.push(format!("{unconfirmed} sent message(s) were never confirmed by the peer"));
                }
                if failed > 0 {
                    what.push(format!("{failed} failed with no flush() reporting it"));
                }
                tracing::warn!(target: LOG, logger = c.cfg.reconnect.logger.as_deref(), unconfirmed = unconfirmed as u64,
                    failed = failed as u64,
                    "{} when the connection ended; the error it raises from now on names them (.messages, .failures)",
                    what.join(" and "));
            }
            c.emit(py, &Event::Closed);
        });
    }

    /// Close: flush what was accepted, a confirming ping, the close frame, the peer's close frame, all
    /// within close_timeout; without a live connection, at once.
    pub(super) fn request_close(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        if st.close_requested || self.terminal.get().is_some() {
            return;
        }
        st.close_requested = true;
        match st.phase {
            Phase::Live => {
                self.set_state(State::Closing);
                st.hb = None;
                st.proto.request_close();
                st.close_by = Some(now + self.cfg.close_timeout);
                st.close_hard_by = Some(now + self.cfg.close_timeout + CLOSE_SLACK);
                self.resume_reader(py, st, fx);
                self.pump(py, st, fx, now);
            }
            _ => {
                self.drop_link(py, st, fx, Goodbye::Abort);
                self.finish(py, st, fx, Terminal::closed());
            }
        }
    }

    /// `aclose()`: its first step asks for the close; it resolves at the end. Awaited on another loop
    /// (another thread's), the close is asked of the connection's own loop, and the end awaited here.
    pub(crate) fn aclose<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let loop_closed = self.loop_closed(py);
        let here = !loop_closed && (self.el.get().is_none() || self.on_loop_thread());
        let slot = self.with(py, |c, st, fx| {
            if here {
                c.request_close(py, st, fx, Instant::now());
            }
            if c.terminal.get().is_some() {
                return None;
            }
            let slot = Slot::new();
            st.closed.push(slot.clone());
            Some(slot)
        });
        if !here {
            self.close_from_afar(py, loop_closed);
        }
        match slot {
            Some(slot) => coroutine::on_slot(py, "Connection.aclose", false, slot, self.hint(py)),
            None => coroutine::resolved(py, "Connection.aclose", false, Ok(py.None())),
        }
    }

    /// `close()`: from any thread, also once the loop stopped, or closed (`asyncio.run` returned and a
    /// later one closes the connection on the same thread).
    pub(crate) fn close(self: &Arc<Self>, py: Python<'_>) {
        if self.terminal.get().is_some() {
            return;
        }
        let loop_closed = self.loop_closed(py);
        if !loop_closed && (self.el.get().is_none() || self.on_loop_thread()) {
            return self.with(py, |c, st, fx| c.request_close(py, st, fx, Instant::now()));
        }
        self.close_from_afar(py, loop_closed);
    }

    /// A close asked off the connection's loop: handed to that loop while it runs; with the loop
    /// gone or stopped nothing will run there, so the connection ends here and its socket is dropped.
    fn close_from_afar(self: &Arc<Self>, py: Python<'_>, loop_closed: bool) {
        if self.terminal.get().is_some() {
            return;
        }
        let running = !loop_closed
            && self
                .event_loop(py)
                .map(|el| el.call_method0("is_running").and_then(|r| r.is_truthy()).unwrap_or(false))
                .unwrap_or(false);
        if running {
            let cb = Py::new(py, super::CloseSoon { conn: Arc::downgrade(self) });
            let scheduled = cb.and_then(|cb| {
                self.event_loop(py).map_or(Ok(()), |el| el.call_method1("call_soon_threadsafe", (cb,)).map(drop))
            });
            if scheduled.is_ok() {
                return;
            }
        }
        self.with(py, |c, st, fx| {
            st.close_requested = true;
            c.drop_link(py, st, fx, Goodbye::Abort);
            c.finish(py, st, fx, Terminal::closed());
        });
    }

    /// Whether the loop the connection runs on is closed: nothing will run on it again.
    fn loop_closed(&self, py: Python<'_>) -> bool {
        self.event_loop(py).is_some_and(|el| el.call_method0("is_closed").and_then(|r| r.is_truthy()).unwrap_or(true))
    }

    pub(super) fn on_timer(self: &Arc<Self>, py: Python<'_>, id: u64) {
        self.with(py, |_, st, _| {
            st.timer.fired(id);
        });
    }

    /// Deadlines due at `now`, then the timer re-armed for the next one. Runs last in every entry point.
    pub(super) fn service(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) {
        st.draining.retain(|(_, t, at)| {
            let keep = now < *at;
            if !keep {
                fx.closes.push((t.clone_ref(py), true));
            }
            keep
        });
        if st.close_hard_by.is_some_and(|t| now >= t) && self.terminal.get().is_none() {
            let bound = self.cfg.close_timeout + CLOSE_SLACK;
            fx.later(move |_, c| {
                tracing::warn!(target: LOG, logger = c.cfg.reconnect.logger.as_deref(),
                    "close did not finish within {:.1}s; connection aborted", bound.as_secs_f64());
            });
            self.drop_link(py, st, fx, Goodbye::Abort);
            self.finish(py, st, fx, Terminal::closed());
        }
        let mut wake: Option<Instant> = None;
        // a decision may start the next phase at once: look again, a few times at most
        for _ in 0..4 {
            let phase = st.phase;
            wake = self.due(py, st, fx, now);
            if st.phase == phase {
                break;
            }
        }
        let drain = st.draining.iter().map(|d| d.2).min();
        let at = [wake, drain, st.close_hard_by].into_iter().flatten().min();
        match at {
            // ended, and nothing left to close: the loop's timers may close with it
            None if self.terminal.get().is_some() => st.timer.stop(fx),
            at => st.timer.want(at, now, fx),
        }
    }

    /// What is due in the current phase; when to look next.
    fn due(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) -> Option<Instant> {
        match st.phase {
            Phase::Idle | Phase::Done => None,
            Phase::Backoff => match st.retry_at {
                Some(t) if now >= t => {
                    self.start_attempt(py, st, fx, now);
                    None
                }
                t => t,
            },
            Phase::Target | Phase::Connecting | Phase::Upgrading | Phase::Hook | Phase::FirstMessage => {
                let a = st.attempt.as_ref()?;
                let bound = self.cfg.open_timeout.as_secs_f64();
                let phase_by = match st.phase {
                    Phase::Hook => a.hook_by,
                    Phase::FirstMessage => a.first_by,
                    _ => Some(a.open_by),
                };
                if let Some(stall) = a.stall_at.filter(|t| now >= *t) {
                    let limit = stall.saturating_duration_since(a.begun);
                    let e = WsError::retry(format!(
                        "attempt {} made no progress within {:.1}s",
                        a.number,
                        limit.as_secs_f64()
                    ));
                    self.end_attempt(py, st, fx, e, Goodbye::Abort);
                    return None;
                }
                if phase_by.is_some_and(|t| now >= t) {
                    let text = match st.phase {
                        Phase::Target => format!("url_for did not return within open_timeout ({bound}s)"),
                        Phase::Connecting => {
                            let ep = st.link.as_ref().map(|l| (l.ep.host.clone(), l.ep.port)).unwrap_or_default();
                            format!("TCP connect to {}:{} timed out (open_timeout {bound}s)", ep.0, ep.1)
                        }
                        Phase::Upgrading => {
                            format!("WebSocket handshake with {} timed out (open_timeout {bound}s)", redact_url(&a.url))
                        }
                        Phase::Hook => format!("on_connect did not finish within open_timeout ({bound}s)"),
                        _ => format!(
                            "no first message within first_message_timeout ({}s)",
                            self.cfg.first_message_timeout.unwrap_or_default().as_secs_f64()
                        ),
                    };
                    self.end_attempt(py, st, fx, WsError::retry(text), Goodbye::Abort);
                    return None;
                }
                [a.stall_at, phase_by].into_iter().flatten().min()
            }
            Phase::Live => self.live_due(py, st, fx, now),
        }
    }

    fn live_due(self: &Arc<Self>, py: Python<'_>, st: &mut Inner, fx: &mut Fx, now: Instant) -> Option<Instant> {
        if let Some(by) = st.close_by {
            if now >= by {
                fx.later(move |_, c| {
                    tracing::debug!(target: LOG, logger = c.cfg.reconnect.logger.as_deref(),
                        "the peer did not complete the close handshake within close_timeout ({:.3}s)",
                        c.cfg.close_timeout.as_secs_f64());
                });
                self.drop_link(py, st, fx, Goodbye::Abort);
                self.finish(py, st, fx, Terminal::closed());
                return None;
            }
        }
        let mut wake = match st.proto.poll(now) {
            Err(text) => {
                self.end_attempt(py, st, fx, WsError::retry(text), Goodbye::Abort);
                return None;
            }
            Ok(wake) => wake,
        };
        if st.proto.ping_due() {
            self.pump(py, st, fx, now);
            // the ping written changes the deadlines
            if let Ok(w) = st.proto.poll(now) {
                wake = w;
            }
        }
        if st.settle_at.is_some_and(|t| now >= t) {
            st.settle_at = None;
            if let Some(s) = st.retry.settle(now) {
                fx.later(move |_, c| report::settled(&c.cfg.reconnect, &s));
            }
        }
        if !st.close_requested {
            if let Some(hb) = st.hb.as_mut() {
                match hb.poll(now) {
                    crate::ws::heartbeat::Beat::Nothing => {}
                    crate::ws::heartbeat::Beat::Send => {
                        hb.sent(now);
                        self.send_heartbeat(py, st, fx);
                    }
                    crate::ws::heartbeat::Beat::Lost { text, silence } => {
                        if let Some(m) = &self.metrics {
                            m.detected(crate::metrics::LossKind::HeartbeatTimeout, silence);
                        }
                        self.end_attempt(py, st, fx, WsError::retry(text), Goodbye::Abort);
                        return None;
                    }
                }
            }
        }
        let hb = st.hb.as_ref().and_then(|h| h.deadline());
        [Some(wake), st.close_by, st.settle_at, hb].into_iter().flatten().min()
    }
}
