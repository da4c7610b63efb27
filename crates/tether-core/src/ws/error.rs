//! Why an attempt or a connection ended, as tether reports it: texts are redacted, and say what the
//! server did (its close code, a FIN or a reset, the protocol rule it broke).

use std::sync::Arc;
use std::time::Duration;

use super::frame::Violation;
use super::protocol::{Ending, Failed, PushError, Undelivered};
use super::WsConfig;
use crate::redact::redact_url;
use crate::retry_state::GiveUpReason;

/// A TCP FIN, or reset, where a close frame was due: the same words on every read path.
pub const CLOSED_WITHOUT_CLOSE_FRAME: &str = "server closed without a close frame (TCP FIN)";
pub const RESET_WITHOUT_CLOSE_FRAME: &str = "server reset the connection (TCP RST) without a close frame";

/// Why an attempt ended. `text` is redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct WsError {
    pub text: String,
    pub fatal: bool,
    /// The server closed with a code of `final_close_codes`: the connection ends as closed.
    pub final_close: bool,
    pub close_code: Option<u16>,
    /// The server sent a close frame (`close_code` is its code, if it had a valid one); false: the
    /// connection was cut, timed out or failed. The poison rule reads it (`protocol::Ending`).
    pub close_frame: bool,
    pub http_status: Option<u16>,
}

impl WsError {
    pub fn retry(text: impl AsRef<str>) -> Self {
        WsError {
            text: redact_url(text.as_ref()),
            fatal: false,
            final_close: false,
            close_code: None,
            close_frame: false,
            http_status: None,
        }
    }
    pub fn fatal(text: impl AsRef<str>) -> Self {
        WsError { fatal: true, ..WsError::retry(text) }
    }

    /// How the connection ended, as the poison rule reads it.
    pub fn ending(&self) -> Ending {
        if self.close_frame {
            Ending::Closed(self.close_code)
        } else {
            Ending::Cut
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// `send_buffer` messages are already waiting for delivery.
    Full(usize),
    /// Bigger than `max_message_size`: refused at once.
    TooBig {
        size: usize,
        max: usize,
    },
    /// Removed from the queue by the poison rule (see `protocol`); never re-sent.
    Rejected(Failed),
    /// A flush: these messages sent before it failed (each was removed from the queue), in send order.
    FlushFailed(Vec<Failed>),
    Ended(Terminal),
}

impl From<PushError> for SendError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Full(n) => SendError::Full(n),
            PushError::TooBig { size, max } => SendError::TooBig { size, max },
        }
    }
}

/// How a connection ended for good, with what it never delivered (`protocol::Undelivered`): every
/// error that reports the end carries the same lists, since no other waiter is left to name them.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    /// `close()` was called.
    Closed { undelivered: Arc<Undelivered> },
    /// The server closed with a code of `final_close_codes`; `text` says which (redacted).
    PeerClosed { code: u16, text: String, undelivered: Arc<Undelivered> },
    /// The application let go of the connection without `close()` (its object was collected): its
    /// socket was aborted, and those still waiting on it are told.
    LetGo { undelivered: Arc<Undelivered> },
    /// The reconnect loop gave up.
    GaveUp {
        message: String,
        attempts: u32,
        elapsed: Duration,
        reason: GiveUpReason,
        last: WsError,
        undelivered: Arc<Undelivered>,
    },
}

impl Terminal {
    /// Closed on request, with nothing undelivered (yet: see `finish`).
    pub fn closed() -> Terminal {
        Terminal::Closed { undelivered: Arc::default() }
    }

    pub fn undelivered(&self) -> &Undelivered {
        match self {
            Terminal::Closed { undelivered }
            | Terminal::LetGo { undelivered }
            | Terminal::PeerClosed { undelivered, .. }
            | Terminal::GaveUp { undelivered, .. } => undelivered,
        }
    }

    pub fn with_undelivered(mut self, u: Undelivered) -> Terminal {
        match &mut self {
            Terminal::Closed { undelivered }
            | Terminal::LetGo { undelivered }
            | Terminal::PeerClosed { undelivered, .. }
            | Terminal::GaveUp { undelivered, .. } => *undelivered = Arc::new(u),
        }
        self
    }
}

/// HTTP statuses worth retrying even before the first connection: the server is there but busy or
/// failing for now (a deploy's 502/503, a rate limit). Any other non-101 answer means the URL is not a
/// WebSocket endpoint (404, a 200 page) and retrying will not change it.
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// An answer that retrying will not change fails a first connect at once (the application is told the
/// URL is wrong instead of waiting on retries); once a connection has succeeded the URL is known to be
/// right, so the same answer is a passing fault and the policy retries it.
pub fn not_retried_first(mut e: WsError, first: bool) -> WsError {
    if first && !e.fatal {
        e.fatal = true;
        e.text.push_str(" (a first connect does not retry this answer)");
    }
    e
}

/// Why an answer other than 101 (or a redirect that is followed) ends the attempt; `first`: no
/// connection has succeeded yet.
pub fn refused_status(status: u16, cfg: &WsConfig, first: bool) -> WsError {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut err = WsError::retry(format!("handshake rejected with HTTP {status} {reason}"));
    err.http_status = Some(status);
    err.fatal = cfg.fatal_http_statuses.contains(&status);
    if retryable_status(status) {
        err
    } else {
        not_retried_first(err, first)
    }
}

/// An answer to the upgrade that is not one (not HTTP, a wrong accept value, an extension not offered).
pub fn not_an_upgrade(why: &str, first: bool) -> WsError {
    not_retried_first(WsError::retry(format!("handshake failed: the answer is not a WebSocket upgrade: {why}")), first)
}

/// A close frame from the server (None: one without a body), and what it means for the connection.
/// Its code is one allowed on the wire: the frame decoder reports any other as a violation.
pub fn peer_close(frame: Option<(u16, &str)>, cfg: &WsConfig) -> WsError {
    let mut e = match frame {
        Some((code, reason)) => {
            let mut e = WsError::retry(format!("server closed the connection: {code} {reason}").trim_end());
            e.close_code = Some(code);
            e.fatal = cfg.fatal_close_codes.contains(&code);
            e.final_close = cfg.final_close_codes.contains(&code);
            e
        }
        None => WsError::retry("server closed the connection without a status code"),
    };
    e.close_frame = true;
    e
}

/// The server broke the protocol (RFC 6455 §7.4.1): what to report; tether answers with `v.code()`.
/// A close frame with a code not allowed on the wire is still the server's close: no code, and not a cut.
pub fn violation(v: &Violation, cfg: &WsConfig) -> WsError {
    let mut e = WsError::retry(match v {
        Violation::TooBig { size, .. } => format!(
            "the server sent a message over max_message_size ({} bytes): {size} bytes; tether closed the connection with 1009",
            cfg.max_message_size
        ),
        Violation::InflatedTooBig { max } => format!(
            "the server sent a compressed message that inflates past max_message_size ({max} bytes); tether \
             stopped inflating there and closed the connection with 1009"
        ),
        Violation::InvalidUtf8 => {
            "the server sent text that is not valid UTF-8; tether closed the connection with 1007".to_string()
        }
        Violation::Protocol(p) => {
            format!("the server broke the WebSocket protocol ({p}); tether closed the connection with 1002")
        }
        // the code the server sent, not the 1002 sent back: a close code the application may act on
        Violation::InvalidCloseCode(code) => format!(
            "server closed the connection with an invalid close code {code} (RFC 6455 §7.4 does not allow it on \
             the wire); tether answered 1002 (protocol error)"
        ),
    });
    e.close_frame = matches!(v, Violation::InvalidCloseCode(_));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_frame_says_the_servers_code_and_whether_it_ends_the_connection() {
        let cfg = WsConfig { fatal_close_codes: vec![1008], final_close_codes: vec![1000], ..Default::default() };
        let own = peer_close(Some((4001, "go away")), &cfg);
        assert_eq!(
            (own.text.as_str(), own.close_code, own.fatal),
            ("server closed the connection: 4001 go away", Some(4001), false)
        );
        assert!(peer_close(Some((1008, "")), &cfg).fatal);
        assert!(peer_close(Some((1000, "bye")), &cfg).final_close);
        assert_eq!(peer_close(None, &cfg).close_code, None);
        assert_eq!(own.ending(), Ending::Closed(Some(4001)));
        assert_eq!(peer_close(None, &cfg).ending(), Ending::Closed(None));
        let big = violation(&Violation::TooBig { size: 2, max: 1 }, &cfg);
        assert_eq!(big.ending(), Ending::Cut, "tether failed it for what the server sent");
    }

    #[test]
    fn a_servers_own_1002_and_a_1014_are_reported_as_sent_and_fatal_codes_apply() {
        let cfg = WsConfig { fatal_close_codes: vec![1002, 1014], ..Default::default() };
        for (code, reason) in [(1002, "Protocol violation"), (1014, "bad gateway")] {
            let e = peer_close(Some((code, reason)), &cfg);
            assert_eq!(
                (e.text.as_str(), e.close_code, e.fatal),
                (format!("server closed the connection: {code} {reason}").as_str(), Some(code), true)
            );
        }
    }

    #[test]
    fn an_invalid_close_code_is_reported_by_its_number_not_as_the_1002_sent_back() {
        let cfg = WsConfig { fatal_close_codes: vec![1002], ..Default::default() };
        let e = violation(&Violation::InvalidCloseCode(999), &cfg);
        assert!(e.text.contains("invalid close code 999 ") && e.close_code.is_none() && !e.fatal, "{e:?}");
        assert_eq!(e.ending(), Ending::Closed(None), "a close the server sent, without a usable code");
        assert_eq!(Violation::InvalidCloseCode(999).code(), 1002);
    }

    #[test]
    fn an_answer_that_retrying_cannot_change_ends_a_first_connect_only() {
        let cfg = WsConfig::default();
        let first = refused_status(404, &cfg, true);
        assert!(first.fatal && first.text.contains("first connect") && first.http_status == Some(404), "{first:?}");
        assert!(!refused_status(404, &cfg, false).fatal);
        assert!(!refused_status(503, &cfg, true).fatal, "a busy server is retried");
        assert!(refused_status(401, &cfg, false).fatal, "fatal_http_statuses");
    }
}
