//! The Python exceptions of a connection: its end (`ConnectionClosed`, `GaveUp` with `ConnectFailed` or
//! `ConnectionClosed` as the last error), a send or flush that failed (`SendFailed`, `SendBufferFull`,
//! `ValueError`). Every terminal error names what the connection never delivered.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::redact::redact_url;
use crate::ws::protocol::{Failed, Failure, Undelivered, MESSAGE_TOO_BIG};
use crate::ws::{SendError, Terminal, WsConfig};

use super::super::convert::message_to_py;
use super::super::errors::{failed_message, value_error, Class};

/// The error of a connection that ended for good. Every one of them (whichever call raises it) carries
/// what the connection never delivered: `.messages` (never confirmed, in send order, to re-send on
/// another connection) and `.failures` (`FailedMessage`s no flush reported), and says how many in its
/// text. `opened`: it was established at least once; a give-up of one that never was names its last
/// failure `ConnectFailed` (a refused connect is no "closed").
pub fn terminal_error(py: Python<'_>, t: &Terminal, name: &str, opened: bool) -> PyErr {
    match EndLists::of(py, t.undelivered()) {
        Ok(lists) => terminal_error_with(py, t, name, opened, &lists),
        Err(e) => e,
    }
}

/// `.messages` and `.failures` of a connection's end, made once: every exception of that end carries
/// the same two lists, so an end with N waiters and M undelivered messages costs M objects, not N x M
/// (the loop thread, holding the GIL, made them all at once).
pub struct EndLists {
    messages: Py<PyAny>,
    failures: Py<PyAny>,
}

impl EndLists {
    pub fn of(py: Python<'_>, u: &Undelivered) -> PyResult<EndLists> {
        let messages: Vec<Py<PyAny>> = u.unconfirmed.iter().map(|(_, m)| message_to_py(py, m)).collect();
        Ok(EndLists {
            messages: PyList::new(py, messages)?.into_any().unbind(),
            failures: PyList::new(py, failed_messages(py, &u.failures)?)?.into_any().unbind(),
        })
    }
}

/// [`terminal_error`] with its lists made already.
pub fn terminal_error_with(py: Python<'_>, t: &Terminal, name: &str, opened: bool, lists: &EndLists) -> PyErr {
    let e = end_error(py, t, name, opened);
    // set on the made exception: its constructor would copy each list (N x M again)
    let v = e.value(py);
    match v.setattr("messages", lists.messages.bind(py)).and_then(|()| v.setattr("failures", lists.failures.bind(py))) {
        Ok(()) => e,
        Err(x) => x,
    }
}

fn end_error(py: Python<'_>, t: &Terminal, name: &str, opened: bool) -> PyErr {
    let kw = PyDict::new(py);
    let left = undelivered_text(t.undelivered());
    match t {
        Terminal::Closed { .. } => {
            let _ = kw.set_item("code", 1000);
            Class::ConnectionClosed.err(py, &format!("connection to {name} is closed{left}"), Some(&kw))
        }
        Terminal::LetGo { .. } => {
            // no close frame was sent: websockets' code for a connection that ended without one
            let _ = kw.set_item("code", 1006);
            Class::ConnectionClosed.err(
                py,
                &format!("connection to {name} was let go without close() and its socket aborted{left}"),
                Some(&kw),
            )
        }
        Terminal::PeerClosed { code, text, .. } => {
            let _ = kw.set_item("code", *code);
            let _ = kw.set_item("reason", text.as_str());
            Class::ConnectionClosed.err(
                py,
                &format!("connection to {name} ended: {text} (final_close_codes){left}"),
                Some(&kw),
            )
        }
        Terminal::GaveUp { message, attempts, elapsed, reason, last, .. } => {
            // the last attempt's failure: what the server did, not what the connection left undelivered
            let last_kw = PyDict::new(py);
            let _ = last_kw.set_item("code", last.close_code);
            let _ = last_kw.set_item("reason", last.text.as_str());
            let _ = last_kw.set_item("http_status", last.http_status);
            let class = if opened { Class::ConnectionClosed } else { Class::ConnectFailed };
            let last_err = class.err(py, &last.text, Some(&last_kw));
            let _ = kw.set_item("attempts", *attempts);
            let _ = kw.set_item("last_error", last_err.value(py));
            let _ = kw.set_item("elapsed", elapsed.as_secs_f64());
            let _ = kw.set_item("reason", reason.as_str());
            let _ = kw.set_item("name", name);
            let e = Class::GaveUp.err(py, &format!("{message}{left}"), Some(&kw));
            e.set_cause(py, Some(last_err));
            e
        }
    }
}

/// What a terminal error's text says about `.messages` and `.failures` (counts and numbers, never payloads).
fn undelivered_text(u: &Undelivered) -> String {
    let (n, f) = (u.unconfirmed.len(), u.failures.len());
    let mut parts = vec![];
    if n > 0 {
        let (first, last) = (u.unconfirmed[0].0, u.unconfirmed[n - 1].0);
        let which = if n == 1 { format!("#{first}") } else { format!("#{first}..#{last}") };
        parts.push(format!("{n} sent message(s) never confirmed by the server ({which}; .messages)"));
    }
    if f > 0 {
        let shown: Vec<String> = u.failures.iter().take(LISTED).map(|f| format!("#{}", f.seq)).collect();
        parts.push(format!(
            "{f} failed and not reported by a flush ({}{}; .failures)",
            shown.join(", "),
            if f > LISTED { ", ..." } else { "" }
        ));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("; not delivered: {}", parts.join(", "))
    }
}

pub(crate) fn send_error(py: Python<'_>, e: &SendError, name: &str, cfg: &WsConfig, opened: bool) -> PyErr {
    match e {
        SendError::Ended(t) => terminal_error(py, t, name, opened),
        SendError::Full(n) => Class::SendBufferFull.err(py, &format!(
            "send buffer of {} is full: {n} messages are waiting for delivery to {name} (await send() before sending more, or raise send_buffer)",
            cfg.send_buffer), None),
        SendError::TooBig { size, max } => value_error(format!(
            "message of {size} bytes is larger than max_message_size ({max} bytes) of the connection to {name}"
        )),
        SendError::Rejected(f) => send_failed(py, std::slice::from_ref(f), name),
        SendError::FlushFailed(fs) => send_failed(py, fs, name),
    }
}

/// Failures listed in a `SendFailed`'s text; `.failures` and `.messages` carry every one.
const LISTED: usize = 3;

/// `tether.SendFailed` naming every failed message: `.failures` (seq, payload, reason, code, losses) and
/// `.messages` (the payloads), in send order. The text shows reasons, never payloads.
fn send_failed(py: Python<'_>, fs: &[Failed], name: &str) -> PyErr {
    let Some(first) = fs.first() else {
        return Class::SendFailed.err(py, &format!("send to {name} failed"), None);
    };
    let failures = match failed_messages(py, fs) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let shown: Vec<String> = fs.iter().take(LISTED).map(|f| format!("#{}: {}", f.seq, f.why.message())).collect();
    let text = if fs.len() == 1 {
        format!(
            "send to {name} failed: message {}; it was removed from the send queue and will not be re-sent",
            shown[0]
        )
    } else {
        let more = fs.len().saturating_sub(LISTED);
        format!(
            "{} messages sent to {name} before flush() were removed from the send queue and will not be re-sent \
             (.messages has them in send order): {}{}",
            fs.len(),
            shown.join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() }
        )
    };
    let kw = PyDict::new(py);
    let (code, losses) = code_and_losses(&first.why);
    let size = match &first.why {
        Failure::TooBig { size, .. } | Failure::Poisoned { size, .. } => *size,
    };
    let _ = kw.set_item("size", size);
    let _ = kw.set_item("code", code);
    let _ = kw.set_item("losses", losses);
    let _ = kw.set_item("failures", failures);
    Class::SendFailed.err(py, &redact_url(&text), Some(&kw))
}

/// One `tether.FailedMessage` per failure, in the given order.
fn failed_messages<'py>(py: Python<'py>, fs: &[Failed]) -> PyResult<Vec<Bound<'py, PyAny>>> {
    fs.iter()
        .map(|f| {
            let (code, losses) = code_and_losses(&f.why);
            failed_message(py, f.seq, message_to_py(py, &f.msg), &f.why.message(), code, losses)
        })
        .collect()
}

fn code_and_losses(why: &Failure) -> (Option<u16>, Option<u32>) {
    match why {
        Failure::TooBig { .. } => (Some(MESSAGE_TOO_BIG), None),
        Failure::Poisoned { losses, .. } => (None, Some(*losses)),
    }
}
