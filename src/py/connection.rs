//! `tether.connect` bindings: the supervised WebSocket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::reconnect::Config;
use crate::redact::redact_url;
use crate::ws::{
    port_of, SendError, Target, TargetFuture, TargetProvider, Terminal, WsClient, WsConfig, WsError,
    DEFAULT_CONNECT_TIMEOUT,
};
use crate::ws_protocol::{Failed, Failure, Undelivered, MESSAGE_TOO_BIG};
use crate::ws_tls::TrustSource;

use super::args::{bound_or_none, Arg};
use super::backoff::count;
use super::convert::describe;
use super::convert::{message_from_py, message_to_py};
use super::errors::{
    failed_message, value_error, CONNECTION_CLOSED, CONNECT_FAILED, GAVE_UP, SEND_BUFFER_FULL, SEND_FAILED,
};
use super::events::EventStream;
use super::handshake::{on_connect_hook, on_loop, LoopSlot};
use super::heartbeat::heartbeat_config;

/// The connection's metrics when an exporter is attached (`tether.metrics`): its `name=` (bounded,
/// unlike the URL it defaults to in logs) and the host it connects to.
fn metrics_of(name: Option<&str>, url: &str) -> Option<Arc<crate::metrics::Loop>> {
    let name = name.map(redact_url).unwrap_or_else(|| Config::default().name);
    crate::metrics::labels(&[("name", &name), ("server.address", &crate::metrics::server_address(url))])
        .map(crate::metrics::Loop::new)
}

/// Calls the user's `url_for(strategy, attempt)` (sync or async) for every attempt.
struct PyTarget {
    base: Target,
    url_for: Option<Py<PyAny>>,
    /// The loop `url_for`, `on_connect` and the heartbeat's callables run on (that of `start()`).
    locals: LoopSlot,
}

fn parse_headers(h: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    if h.is_none() {
        return Ok(vec![]);
    }
    let items: Vec<(String, String)> = if let Ok(d) = h.cast::<PyDict>() {
        d.iter().map(|(k, v)| Ok((k.extract::<String>()?, v.extract::<String>()?))).collect::<PyResult<_>>()
    } else {
        h.try_iter()?.map(|it| it?.extract::<(String, String)>()).collect::<PyResult<_>>()
    }
    .map_err(|_| PyTypeError::new_err("headers must be a dict of str to str or a list of (str, str) pairs"))?;
    for (k, v) in &items {
        tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| value_error(format!("invalid header name {k:?}")))?;
        tokio_tungstenite::tungstenite::http::HeaderValue::from_str(v)
            .map_err(|_| value_error(format!("invalid value for header {k:?} (control characters?)")))?;
    }
    Ok(items)
}

fn check_url(url: &str) -> PyResult<()> {
    let req = url
        .into_client_request()
        .map_err(|e| value_error(format!("invalid WebSocket URL {}: {e}", redact_url(url))))?;
    match req.uri().scheme_str() {
        Some("ws") | Some("wss") => {}
        other => {
            let got = other.map_or_else(|| "no scheme".to_string(), |s| format!("{s:?}"));
            return Err(value_error(format!("URL scheme must be ws or wss, got {got} in {}", redact_url(url))));
        }
    }
    port_of(req.uri()).map(|_| ()).map_err(|e| value_error(format!("invalid WebSocket URL {}: {e}", redact_url(url))))
}

/// What url_for returned: "url" or ("url", headers).
fn parse_target(obj: &Bound<'_, PyAny>) -> Result<Target, WsError> {
    let bad = || {
        WsError::fatal(format!(
            "url_for must return a URL str or (url, headers), got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    };
    let (url, headers) = if let Ok(s) = obj.cast::<PyString>() {
        (s.to_string(), vec![])
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() != 2 {
            return Err(bad());
        }
        let url: String = t.get_item(0).and_then(|u| u.extract()).map_err(|_| bad())?;
        let headers = t
            .get_item(1)
            .and_then(|h| parse_headers(&h))
            .map_err(|e| WsError::fatal(format!("url_for returned bad headers: {e}")))?;
        (url, headers)
    } else {
        return Err(bad());
    };
    check_url(&url).map_err(|e| WsError::fatal(format!("url_for returned an unusable URL: {e}")))?;
    Ok(Target { url, headers })
}

impl TargetProvider for PyTarget {
    fn target(&self, strategy: &str, attempt: u32) -> TargetFuture {
        let Some(f) = &self.url_for else {
            let t = self.base.clone();
            return Box::pin(async move { Ok(t) });
        };
        // called on the event loop, like the other hooks: a sync url_for must not hold a tokio worker
        let started = on_loop(&self.locals, "url_for", "_url_for", |py| {
            PyTuple::new(
                py,
                [
                    f.clone_ref(py),
                    strategy.into_pyobject(py)?.into_any().unbind(),
                    attempt.into_pyobject(py)?.into_any().unbind(),
                ],
            )
        });
        Box::pin(async move {
            let obj = match started?.await {
                Ok(o) => o,
                Err(e) => {
                    let text = super::with_python(|py| describe(py, &e)).unwrap_or_default();
                    return Err(WsError::retry(format!("url_for raised {text}")));
                }
            };
            super::try_with_python(WsError::fatal, |py| parse_target(obj.bind(py)))
        })
    }
}

#[pyclass(name = "Connection", module = "tether._native", frozen)]
pub struct PyConnection {
    client: Arc<WsClient>,
    target: Arc<PyTarget>,
    name: String,
    /// One close shared by `close()` and `aclose()`, however often and concurrently they are called.
    closing: Arc<tokio::sync::OnceCell<()>>,
    /// Set synchronously by `start()`: the supervisor itself starts on a tokio thread a moment later.
    started: AtomicBool,
}

/// The error of a connection that ended for good. Every one of them (whichever call raises it) carries
/// what the connection never delivered: `.messages` (never confirmed, in send order, to re-send on
/// another connection) and `.failures` (`FailedMessage`s no flush reported), and says how many in its
/// text. `opened`: it was established at least once; a give-up of one that never was names its last
/// failure `ConnectFailed` (a refused connect is no "closed").
pub fn terminal_error(py: Python<'_>, t: &Terminal, name: &str, opened: bool) -> PyErr {
    let kw = match undelivered_kwargs(py, t.undelivered()) {
        Ok(kw) => kw,
        Err(e) => return e,
    };
    let left = undelivered_text(t.undelivered());
    match t {
        Terminal::Closed { .. } => {
            let _ = kw.set_item("code", 1000);
            CONNECTION_CLOSED.err(py, &format!("connection to {name} is closed{left}"), Some(&kw))
        }
        Terminal::PeerClosed { code, text, .. } => {
            let _ = kw.set_item("code", *code);
            let _ = kw.set_item("reason", text.as_str());
            CONNECTION_CLOSED.err(
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
            let class = if opened { &CONNECTION_CLOSED } else { &CONNECT_FAILED };
            let last_err = class.err(py, &last.text, Some(&last_kw));
            let _ = kw.set_item("attempts", *attempts);
            let _ = kw.set_item("last_error", last_err.value(py));
            let _ = kw.set_item("elapsed", elapsed.as_secs_f64());
            let _ = kw.set_item("reason", reason.as_str());
            let _ = kw.set_item("name", name);
            let e = GAVE_UP.err(py, &format!("{message}{left}"), Some(&kw));
            e.set_cause(py, Some(last_err));
            e
        }
    }
}

/// `messages=` and `failures=` of a terminal error.
fn undelivered_kwargs<'py>(py: Python<'py>, u: &Undelivered) -> PyResult<Bound<'py, PyDict>> {
    let kw = PyDict::new(py);
    let messages: Vec<Py<PyAny>> = u.unconfirmed.iter().map(|(_, m)| message_to_py(py, m)).collect();
    kw.set_item("messages", messages)?;
    kw.set_item("failures", failed_messages(py, &u.failures)?)?;
    Ok(kw)
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

/// How `start()` ended, turned into None or the terminal error on the event loop thread.
struct Started {
    outcome: Result<(), Terminal>,
    name: String,
    opened: bool,
}

/// Whether the connection was ever established (its give-up then reports a `ConnectionClosed`).
fn opened(client: &WsClient) -> bool {
    client.stats().connects > 0
}

impl<'py> IntoPyObject<'py> for Started {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.outcome {
            Ok(()) => Ok(py.None().into_bound(py)),
            Err(t) => Err(terminal_error(py, &t, &self.name, self.opened)),
        }
    }
}

/// How a `send()` or `flush()` ended, turned into None or the exception on the event loop thread.
/// Dropped unconverted (its task was cancelled after the outcome arrived), a failure it carries is given
/// back to the connection, so the next flush or the end reports it.
struct Delivered {
    outcome: Result<(), SendError>,
    name: String,
    client: Arc<WsClient>,
}

impl<'py> IntoPyObject<'py> for Delivered {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match std::mem::replace(&mut self.outcome, Ok(())) {
            Ok(()) => Ok(py.None().into_bound(py)),
            Err(e) => Err(send_error(py, &e, &self.name, &self.client)),
        }
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        if let Err(e) = std::mem::replace(&mut self.outcome, Ok(())) {
            self.client.give_back(e);
        }
    }
}

fn send_error(py: Python<'_>, e: &SendError, name: &str, client: &WsClient) -> PyErr {
    let cfg = client.config();
    match e {
        SendError::Ended(t) => terminal_error(py, t, name, opened(client)),
        SendError::Full(n) => SEND_BUFFER_FULL.err(py, &format!(
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
        return SEND_FAILED.err(py, &format!("send to {name} failed"), None);
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
    SEND_FAILED.err(py, &redact_url(&text), Some(&kw))
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

/// `ssl=`: "system", "bundled", a CA bundle path, an `ssl.SSLContext` (its CA certificates), or a
/// list of these (trusted together).
fn trust_sources(v: &Bound<'_, PyAny>) -> PyResult<Vec<TrustSource>> {
    use crate::ws_tls::TrustSource as T;
    if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
        return if b.is_true() {
            Ok(vec![T::Bundled])
        } else {
            Err(value_error("ssl=False cannot turn TLS off: use a ws:// URL for a plain connection"))
        };
    }
    if v.hasattr("get_ca_certs")? {
        if v.getattr("verify_mode")?.extract::<i64>().unwrap_or(2) == 0 {
            return Err(value_error(
                "ssl: an SSLContext with verify_mode CERT_NONE is refused; tether always verifies",
            ));
        }
        let ders: Vec<Vec<u8>> = v.call_method1("get_ca_certs", (true,))?.extract()?;
        // create_default_context() loads the system store lazily, so it lists no certificate
        return Ok(vec![if ders.is_empty() { T::System } else { T::Der(ders) }]);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(vec![match s.to_str()? {
            "system" => T::System,
            "bundled" => T::Bundled,
            path => T::PemFile(path.into()),
        }]);
    }
    if v.hasattr("__fspath__")? {
        let path: std::path::PathBuf = v.extract()?;
        return Ok(vec![T::PemFile(path)]);
    }
    if v.is_instance_of::<PyTuple>() || v.is_instance_of::<pyo3::types::PyList>() {
        let mut out = vec![];
        for item in v.try_iter()? {
            out.extend(trust_sources(&item?)?);
        }
        return Ok(out);
    }
    Err(PyTypeError::new_err(
        "ssl must be \"system\", \"bundled\", a CA bundle path, an ssl.SSLContext, or a list of these",
    ))
}

fn parse_ladder(v: Option<&Bound<'_, PyAny>>, default: &[(Arc<str>, u32)]) -> PyResult<Vec<(Arc<str>, u32)>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(default.to_vec());
    };
    if v.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "ladder must be a sequence of strategy names, e.g. (\"resume\", \"restart\")",
        ));
    }
    let mut out: Vec<(Arc<str>, u32)> = vec![];
    for item in v.try_iter().map_err(|_| PyTypeError::new_err("ladder must be a sequence"))? {
        let item = item?;
        if let Ok(s) = item.cast::<PyString>() {
            out.push((Arc::from(s.to_str()?), 1));
        } else if let Ok((s, n)) = item.extract::<(String, Bound<'_, PyAny>)>() {
            let n = count("ladder attempts", &n)?;
            if n == 0 {
                return Err(value_error(format!("ladder rung {s:?} must allow at least one attempt")));
            }
            out.push((Arc::from(s.as_str()), n));
        } else {
            return Err(PyTypeError::new_err("ladder entries must be names or (name, attempts) pairs"));
        }
    }
    if out.is_empty() {
        return Err(value_error("ladder must name at least one strategy"));
    }
    if out.iter().any(|(s, _)| s.is_empty()) {
        return Err(value_error("ladder strategy names must not be empty"));
    }
    Ok(out)
}

/// `connect_timeout=`: None (not the default, which the signature supplies) lifts the bound.
fn connect_timeout_arg(v: &Bound<'_, PyAny>) -> PyResult<Option<std::time::Duration>> {
    bound_or_none("connect_timeout", v)
}

impl PyConnection {
    /// Before the connection was awaited or entered nothing would ever deliver a message or confirm a
    /// send: fail at once instead of waiting forever. A closed connection raises its terminal error.
    fn check_started(&self, what: &str) -> PyResult<()> {
        if self.started.load(Ordering::SeqCst) || self.client.terminal().is_some() {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(format!(
            "{what}() on a connection to {} that was never started: use `async with tether.connect(...) as conn` \
             or `conn = await tether.connect(...)` first",
            self.name
        )))
    }

    /// The outcome of a send or flush, None or the exception once converted on the loop: returned at
    /// the first step when there is nothing to wait for (no tokio round trip).
    fn delivered(
        &self,
        outcome: impl std::future::Future<Output = Result<(), SendError>> + Send + 'static,
    ) -> impl std::future::Future<Output = PyResult<Delivered>> + Send + 'static {
        let client = self.client.clone();
        let name = self.name.clone();
        async move {
            let outcome = outcome.await;
            Ok(Delivered { outcome, name, client })
        }
    }
}

#[pymethods]
impl PyConnection {
    #[new]
    #[pyo3(signature = (url, *, policy=None, ping_interval=None, ping_timeout=None, open_timeout=None, close_timeout=None,
        ladder=None, url_for=None, headers=None, stable_after=None, send_buffer=None, first_message_timeout=None,
        quiet_attempts=None, fatal_close_codes=None, fatal_http_statuses=None, name=None, watchdog=None,
        max_message_size=None, ssl=None, read_buffer_size=None, write_buffer_size=None,
        on_connect=None, heartbeat=None, fatal=None, quiet_jitter=None, logger=None, final_close_codes=None,
        connect_timeout=Some(DEFAULT_CONNECT_TIMEOUT)))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &Bound<'_, PyAny>,
        policy: Option<&Bound<'_, PyAny>>,
        ping_interval: Option<&Bound<'_, PyAny>>,
        ping_timeout: Option<&Bound<'_, PyAny>>,
        open_timeout: Option<&Bound<'_, PyAny>>,
        close_timeout: Option<&Bound<'_, PyAny>>,
        ladder: Option<&Bound<'_, PyAny>>,
        url_for: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        stable_after: Option<&Bound<'_, PyAny>>,
        send_buffer: Option<&Bound<'_, PyAny>>,
        first_message_timeout: Option<&Bound<'_, PyAny>>,
        quiet_attempts: Option<&Bound<'_, PyAny>>,
        fatal_close_codes: Option<&Bound<'_, PyAny>>,
        fatal_http_statuses: Option<&Bound<'_, PyAny>>,
        name: Option<&str>,
        watchdog: Option<&Bound<'_, PyAny>>,
        max_message_size: Option<&Bound<'_, PyAny>>,
        ssl: Option<&Bound<'_, PyAny>>,
        read_buffer_size: Option<&Bound<'_, PyAny>>,
        write_buffer_size: Option<&Bound<'_, PyAny>>,
        on_connect: Option<&Bound<'_, PyAny>>,
        heartbeat: Option<&Bound<'_, PyAny>>,
        fatal: Option<&Bound<'_, PyAny>>,
        quiet_jitter: Option<&Bound<'_, PyAny>>,
        logger: Option<&Bound<'_, PyAny>>,
        final_close_codes: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = connect_timeout_arg)] connect_timeout: Option<std::time::Duration>,
    ) -> PyResult<Self> {
        let logger = super::logging::logger_key(py, logger)?;
        super::logging::sync(py);
        let watchdog = match watchdog {
            Some(w) if !w.is_none() => Some(
                w.cast::<super::watchdog::PyWatchdog>()
                    .map_err(|_| PyTypeError::new_err("watchdog must be a tether.Watchdog"))?
                    .get()
                    .core(),
            ),
            _ => None,
        };
        let url: String = url.extract().map_err(|_| PyTypeError::new_err("url must be a str"))?;
        check_url(&url)?;
        let d = WsConfig::default();
        let policy = Arg::new("policy", policy).policy(&d.reconnect.policy)?;
        let url_for = match url_for {
            Some(f) if !f.is_none() => {
                if !f.is_callable() {
                    return Err(PyTypeError::new_err("url_for must be a callable (strategy, attempt) -> url"));
                }
                Some(f.clone().unbind())
            }
            _ => None,
        };
        let send_buffer = Arg::new("send_buffer", send_buffer).at_least_one(d.send_buffer as u32)? as usize;
        let max_message_size = Arg::new("max_message_size", max_message_size).bytes(d.max_message_size)?;
        let read_buffer_size = Arg::new("read_buffer_size", read_buffer_size).bytes(d.read_buffer_size)?;
        let write_buffer_size = Arg::new("write_buffer_size", write_buffer_size).bytes(d.write_buffer_size)?;
        let shown = name.map(redact_url).unwrap_or_else(|| redact_url(&url));
        let fatal_close_codes = Arg::new("fatal_close_codes", fatal_close_codes).close_codes(&d.fatal_close_codes)?;
        let final_close_codes = Arg::new("final_close_codes", final_close_codes).close_codes(&d.final_close_codes)?;
        if let Some(both) = final_close_codes.iter().find(|c| fatal_close_codes.contains(c)) {
            return Err(value_error(format!(
                "close code {both} is in both fatal_close_codes (give up: GaveUp) and final_close_codes (end cleanly)"
            )));
        }
        let loop_slot = LoopSlot::default();
        let cfg = WsConfig {
            url: url.clone(),
            headers: match headers {
                Some(h) => parse_headers(h)?,
                None => vec![],
            },
            ping_interval: Arg::new("ping_interval", ping_interval).seconds(d.ping_interval)?,
            ping_timeout: Arg::new("ping_timeout", ping_timeout).seconds(d.ping_timeout)?,
            open_timeout: Arg::new("open_timeout", open_timeout).seconds(d.open_timeout)?,
            close_timeout: Arg::new("close_timeout", close_timeout).seconds(d.close_timeout)?,
            first_message_timeout: Arg::new("first_message_timeout", first_message_timeout).opt_seconds()?,
            send_buffer,
            max_message_size,
            read_buffer_size,
            write_buffer_size,
            write_high_water: d.write_high_water,
            poison_after: d.poison_after,
            recv_buffer: d.recv_buffer,
            recv_buffer_bytes: d.recv_buffer_bytes.max(max_message_size),
            fatal_close_codes,
            final_close_codes,
            fatal_http_statuses: Arg::new("fatal_http_statuses", fatal_http_statuses).codes(&d.fatal_http_statuses)?,
            reconnect: Config {
                name: shown.clone(),
                policy,
                stable_after: Arg::new("stable_after", stable_after).seconds_or_zero(d.reconnect.stable_after)?,
                quiet_attempts: Arg::new("quiet_attempts", quiet_attempts).count(d.reconnect.quiet_attempts)?,
                quiet_jitter: Arg::new("quiet_jitter", quiet_jitter).seconds_or_zero(d.reconnect.quiet_jitter)?,
                ladder: parse_ladder(ladder, &d.reconnect.ladder)?,
                attempt_timeout: None,
                connect_timeout,
                logger,
                metrics: metrics_of(name, &url),
            },
            watchdog,
            tls: match ssl {
                Some(v) if !v.is_none() => Some(
                    crate::ws_tls::client_config(&trust_sources(v)?).map_err(|e| value_error(format!("ssl: {e}")))?,
                ),
                _ => None,
            },
            on_connect: on_connect_hook(py, on_connect, fatal, &loop_slot)?,
            heartbeat: heartbeat_config(py, heartbeat, &loop_slot)?,
        };
        let target = Arc::new(PyTarget { base: Target { url, headers: vec![] }, url_for, locals: loop_slot });
        let client = WsClient::new(cfg, target.clone());
        Ok(PyConnection { client, target, name: shown, started: AtomicBool::new(false), closing: Default::default() })
    }

    /// The defaults of `tether.connect`'s options, from the Rust configuration (their one source).
    #[staticmethod]
    fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let d = WsConfig::default();
        // a rung of one attempt is written as its bare name, as in `ladder=("resume", "restart")`
        let ladder = d
            .reconnect
            .ladder
            .iter()
            .map(|(name, n)| match n {
                1 => Ok(PyString::new(py, name).into_any()),
                n => Ok((&**name, *n).into_pyobject(py)?.into_any()),
            })
            .collect::<PyResult<Vec<_>>>()?;
        let out = PyDict::new(py);
        out.set_item("ping_interval", d.ping_interval.as_secs_f64())?;
        out.set_item("ping_timeout", d.ping_timeout.as_secs_f64())?;
        out.set_item("open_timeout", d.open_timeout.as_secs_f64())?;
        out.set_item("close_timeout", d.close_timeout.as_secs_f64())?;
        out.set_item("ladder", PyTuple::new(py, ladder)?)?;
        out.set_item("stable_after", d.reconnect.stable_after.as_secs_f64())?;
        out.set_item("send_buffer", d.send_buffer)?;
        out.set_item("quiet_attempts", d.reconnect.quiet_attempts)?;
        out.set_item("quiet_jitter", d.reconnect.quiet_jitter.as_secs_f64())?;
        out.set_item("fatal_close_codes", PyTuple::new(py, &d.fatal_close_codes)?)?;
        out.set_item("final_close_codes", PyTuple::new(py, &d.final_close_codes)?)?;
        out.set_item("connect_timeout", d.reconnect.connect_timeout.map(|t| t.as_secs_f64()))?;
        out.set_item("fatal_http_statuses", PyTuple::new(py, &d.fatal_http_statuses)?)?;
        out.set_item("max_message_size", d.max_message_size)?;
        out.set_item("read_buffer_size", d.read_buffer_size)?;
        out.set_item("write_buffer_size", d.write_buffer_size)?;
        Ok(out)
    }

    /// Start (idempotent) and wait for the first connection; raises GaveUp / ConnectionClosed.
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        super::logging::sync(py);
        self.started.store(true, Ordering::SeqCst);
        let (client, name, locals) = (self.client.clone(), self.name.clone(), self.target.locals.clone());
        // the hooks' loop is the one that drives this, known at its first step (not at the call, which
        // may come from another thread)
        super::coroutine::deferred(py, "Connection.start", move |py| {
            if locals.get().is_none() {
                let _ = locals.set(super::runtime::get_current_locals(py)?);
            }
            Ok(async move {
                client.start();
                let outcome = client.wait_connected().await;
                Ok(Started { outcome, name, opened: opened(&client) })
            })
        })
    }

    /// A buffered message (str or bytes) or None; raises once the connection ended and is drained.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.check_started("recv")?;
        match self.client.try_recv() {
            Ok(Some(m)) => Ok(Some(message_to_py(py, &m))),
            Ok(None) => Ok(None),
            Err(t) => Err(terminal_error(py, &t, &self.name, opened(&self.client))),
        }
    }

    /// Resolves (to None) once `try_recv` has something to return: a message or the terminal error.
    /// It consumes nothing, so cancelling it never loses a message.
    fn wait_readable<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_started("recv")?;
        let client = self.client.clone();
        super::coroutine::coroutine(py, "Connection.wait_readable", async move {
            client.readable().await;
            Ok(())
        })
    }

    /// Queue `data` (str -> text, bytes-like -> binary); resolves at once while the bytes not yet
    /// written stay under the write high-water mark, else once it was written to the socket.
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let msg = message_from_py(data)?;
        self.check_started("send")?;
        // enqueued here, synchronously, so messages go out in call order
        let queued = self.client.enqueue(msg).map_err(|e| send_error(py, &e, &self.name, &self.client))?;
        let client = self.client.clone();
        super::coroutine::done_at_call(py, "Connection.send", self.delivered(async move { client.sent(queued).await }))
    }

    /// Resolves once everything sent before the call was confirmed by the peer.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_started("flush")?;
        let waiter = self.client.flush().map_err(|e| send_error(py, &e, &self.name, &self.client))?;
        let outcome = self.delivered(waiter);
        super::coroutine::coroutine(py, "Connection.flush", outcome)
    }

    /// Close within close_timeout (flush, close frame, peer's close), then stop reconnecting.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (client, closing) = (self.client.clone(), self.closing.clone());
        super::coroutine::coroutine(py, "Connection.aclose", async move {
            closing.get_or_init(|| client.close()).await;
            Ok(())
        })
    }

    /// Schedule the bounded close and return at once: usable from sync code, twice, or after the event
    /// loop stopped (the close runs on tether's runtime, not on the loop).
    fn close(&self) {
        let (client, closing) = (self.client.clone(), self.closing.clone());
        super::runtime::get().spawn(async move {
            closing.get_or_init(|| client.close()).await;
        });
    }

    fn events(&self) -> EventStream {
        if self.client.terminal().is_some() {
            return EventStream::ended();
        }
        EventStream::new(self.client.subscribe(), self.client.config().reconnect.logger.clone())
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.client.state().as_str()
    }

    #[getter]
    fn url(&self) -> String {
        redact_url(&self.client.config().url)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.client.stats();
        let d = PyDict::new(py);
        d.set_item("state", s.state.as_str())?;
        d.set_item("messages_in", s.messages_in)?;
        d.set_item("messages_out", s.messages_out)?;
        d.set_item("bytes_in", s.bytes_in)?;
        d.set_item("bytes_out", s.bytes_out)?;
        d.set_item("connects", s.connects)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("losses", s.losses)?;
        d.set_item("pings_sent", s.pings_sent)?;
        d.set_item("last_rtt", s.last_rtt.map(|r| r.as_secs_f64()))?;
        d.set_item("send_queue", s.send_queue)?;
        d.set_item("recv_queue", s.recv_queue)?;
        d.set_item("last_loss", s.last_loss)?;
        d.set_item("connected_for", s.connected_for.map(|r| r.as_secs_f64()))?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("Connection(url={:?}, state={:?})", self.url(), self.client.state().as_str())
    }
}

/// Redact query parameters and headers with these names too (case-insensitive), in every log, event,
/// exception and repr tether produces from now on, process-wide.
#[pyfunction]
#[pyo3(signature = (*names))]
fn add_redacted_names(names: &Bound<'_, PyTuple>) -> PyResult<()> {
    let names: Vec<String> = names
        .iter()
        .map(|n| n.extract::<String>())
        .collect::<PyResult<_>>()
        .map_err(|_| PyTypeError::new_err("add_redacted_names takes parameter or header names as str"))?;
    for n in &names {
        crate::redact::add_secret_name(n).map_err(value_error)?;
    }
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyConnection>()?;
    m.add_function(wrap_pyfunction!(add_redacted_names, m)?)
}
