//! `tether.connect`: the `Connection` class and the checking of its options. The connection itself runs
//! on the event loop (`py::ws`).

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::redact::{redact_unparsed_url, redact_url};
use crate::ws::deflate::Offer;
use crate::ws::tls::TrustSource;
use crate::ws::upgrade::{is_tls, Endpoint};
use crate::ws::{WsConfig, WsError};

use super::backoff::{Policy, PyBackoff};
use super::convert::type_name;
use super::errors::value_error;
use super::events::EventStream;
use super::logging::LoggerRoute;
use super::options::{count, param, AtLeastOne, Bytes, CloseCodes, Count, HttpStatuses, Seconds, SecondsOrZero};
use super::ws::{on_connect_spec, Conn, Hooks};

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
        http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| value_error(format!("invalid header name {k:?}")))?;
        http::HeaderValue::from_str(v)
            .map_err(|_| value_error(format!("invalid value for header {k:?} (control characters?)")))?;
    }
    Ok(items)
}

/// The `name` of the metrics of a `tether.connect` without `name=` (never the URL: unbounded).
const UNNAMED: &str = "connection";

/// The connection's metrics when an exporter is attached (`tether.metrics`): its `name=` (bounded,
/// unlike the URL it defaults to in logs) and the host it connects to.
fn metrics_of(name: Option<&str>, url: &str) -> Option<Arc<crate::metrics::Loop>> {
    let name = name.map_or_else(|| UNNAMED.to_string(), redact_url);
    crate::metrics::labels(&[("name", &name), ("server.address", &crate::metrics::server_address(url))])
        .map(crate::metrics::Loop::new)
}

fn check_url(url: &str) -> PyResult<()> {
    let invalid = |e: String| value_error(format!("invalid WebSocket URL {}: {e}", redact_unparsed_url(url)));
    let uri: http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    if is_tls(&uri).is_none() {
        let got = uri.scheme_str().map_or_else(|| "no scheme".to_string(), |s| format!("{s:?}"));
        return Err(value_error(format!("URL scheme must be ws or wss, got {got} in {}", redact_url(url))));
    }
    Endpoint::parse(url).map(drop).map_err(invalid)
}

/// What url_for returned: "url" or ("url", headers).
pub(crate) fn parse_target(obj: &Bound<'_, PyAny>) -> Result<(String, Vec<(String, String)>), WsError> {
    let bad = || WsError::fatal(format!("url_for must return a URL str or (url, headers), got {}", type_name(obj)));
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
    Ok((url, headers))
}

/// `ssl=`: "system", "bundled", a CA bundle path, an `ssl.SSLContext` (its CA certificates), or a
/// list of these (trusted together).
fn trust_sources(v: &Bound<'_, PyAny>) -> PyResult<Vec<TrustSource>> {
    use crate::ws::tls::TrustSource as T;
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
        // create_default_context() loads the system store lazily, so it lists no certificate; nor does a
        // context given a capath directory (OpenSSL reads it per handshake), which cannot be told apart
        // here: such a directory is passed as the path itself
        return Ok(vec![if ders.is_empty() { T::System } else { T::Der(ders) }]);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(vec![match s.to_str()? {
            "system" => T::System,
            "bundled" => T::Bundled,
            path => T::Pem(path.into()),
        }]);
    }
    if v.hasattr("__fspath__")? {
        let path: std::path::PathBuf = v.extract()?;
        return Ok(vec![T::Pem(path)]);
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

/// `ladder=`: strategy names, or `(name, attempts)` pairs, in the order they are tried.
struct Ladder(Vec<(Arc<str>, u32)>);

impl<'a, 'py> FromPyObject<'a, 'py> for Ladder {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
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
        Ok(Ladder(out))
    }
}

/// `headers=`: a dict of str to str or a list of (str, str) pairs.
struct Headers(Vec<(String, String)>);

impl<'a, 'py> FromPyObject<'a, 'py> for Headers {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        parse_headers(&v).map(Headers)
    }
}

/// `ssl=`: the certificate authorities to trust (`trust_sources`).
struct Trust(Vec<TrustSource>);

impl<'a, 'py> FromPyObject<'a, 'py> for Trust {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        trust_sources(&v).map(Trust)
    }
}

/// `compression=`: "deflate" offers permessage-deflate, None turns it off (websockets' values).
struct Compression(Option<Offer>);

impl<'a, 'py> FromPyObject<'a, 'py> for Compression {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if v.is_none() {
            return Ok(Compression(None));
        }
        match v.cast::<PyString>().map(|s| s.to_string()) {
            Ok(s) if s == "deflate" => Ok(Compression(Some(Offer::default()))),
            Ok(s) => Err(value_error(format!("unsupported compression {s:?}: use \"deflate\" or None"))),
            Err(_) => Err(PyTypeError::new_err("compression must be \"deflate\" or None")),
        }
    }
}

#[pyclass(name = "Connection", module = "tether._native", frozen)]
pub struct PyConnection {
    conn: Arc<Conn>,
    name: String,
    /// Its `logger=`, kept while it lives.
    _logger: Option<LoggerRoute>,
}

impl PyConnection {
    /// Before the connection was awaited or entered nothing would ever deliver a message or confirm a
    /// send: fail at once instead of waiting forever. A closed connection raises its terminal error.
    fn check_started(&self, what: &str) -> PyResult<()> {
        if self.conn.was_started() || self.conn.terminal().is_some() {
            return Ok(());
        }
        Err(PyRuntimeError::new_err(format!(
            "{what}() on a connection to {} that was never started: use `async with tether.connect(...) as conn` \
             or `conn = await tether.connect(...)` first",
            self.name
        )))
    }
}

#[pymethods]
impl PyConnection {
    // None means the option's default (`WsConfig::default()`, which `show_defaults` puts in the
    // signature), except for connect_timeout (None lifts the bound) and compression (None turns it off),
    // whose defaults are therefore Rust expressions here
    #[new]
    #[pyo3(signature = (url, *, policy=None, ping_interval=None, ping_timeout=None, open_timeout=None,
        close_timeout=None, ladder=None, url_for=None, headers=None, stable_after=None, send_buffer=None,
        first_message_timeout=None, quiet_attempts=None, fatal_close_codes=None, fatal_http_statuses=None, name=None,
        watchdog=None, max_message_size=None, ssl=None, read_buffer_size=None, write_buffer_size=None,
        on_connect=None, heartbeat=None, fatal=None, quiet_jitter=None, logger=None, final_close_codes=None,
        connect_timeout=WsConfig::default().reconnect.connect_timeout.map(Seconds::new),
        compression=Compression(WsConfig::default().compression)))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: &Bound<'_, PyAny>,
        policy: Option<Policy<param::Policy>>,
        ping_interval: Option<Seconds<param::PingInterval>>,
        ping_timeout: Option<Seconds<param::PingTimeout>>,
        open_timeout: Option<Seconds<param::OpenTimeout>>,
        close_timeout: Option<Seconds<param::CloseTimeout>>,
        ladder: Option<Ladder>,
        url_for: Option<&Bound<'_, PyAny>>,
        headers: Option<Headers>,
        stable_after: Option<SecondsOrZero<param::StableAfter>>,
        send_buffer: Option<AtLeastOne<param::SendBuffer>>,
        first_message_timeout: Option<Seconds<param::FirstMessageTimeout>>,
        quiet_attempts: Option<Count<param::QuietAttempts>>,
        fatal_close_codes: Option<CloseCodes<param::FatalCloseCodes>>,
        fatal_http_statuses: Option<HttpStatuses<param::FatalHttpStatuses>>,
        name: Option<&str>,
        watchdog: Option<&Bound<'_, PyAny>>,
        max_message_size: Option<Bytes<param::MaxMessageSize>>,
        ssl: Option<Trust>,
        read_buffer_size: Option<Bytes<param::ReadBufferSize>>,
        write_buffer_size: Option<Bytes<param::WriteBufferSize>>,
        on_connect: Option<&Bound<'_, PyAny>>,
        heartbeat: Option<&Bound<'_, PyAny>>,
        fatal: Option<&Bound<'_, PyAny>>,
        quiet_jitter: Option<SecondsOrZero<param::QuietJitter>>,
        logger: Option<&Bound<'_, PyAny>>,
        final_close_codes: Option<CloseCodes<param::FinalCloseCodes>>,
        connect_timeout: Option<Seconds<param::ConnectTimeout>>,
        compression: Compression,
    ) -> PyResult<Self> {
        let logger = LoggerRoute::of(py, logger)?;
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
        if name == Some("") {
            // as Reconnector(name=""): an empty name would be an empty metrics label, which Prometheus drops
            return Err(value_error(
                "name must not be empty (None names it by its URL in logs, `connection` in metrics)",
            ));
        }
        let url_for = match url_for {
            Some(f) if !f.is_none() => {
                if !f.is_callable() {
                    return Err(PyTypeError::new_err("url_for must be a callable (strategy, attempt) -> url"));
                }
                Some(f.clone().unbind())
            }
            _ => None,
        };
        let d = WsConfig::default();
        let fatal_close_codes = fatal_close_codes.map_or(d.fatal_close_codes, |c| c.0);
        let final_close_codes = final_close_codes.map_or(d.final_close_codes, |c| c.0);
        if let Some(both) = final_close_codes.iter().find(|c| fatal_close_codes.contains(c)) {
            return Err(value_error(format!(
                "close code {both} is in both fatal_close_codes (give up: GaveUp) and final_close_codes (end cleanly)"
            )));
        }
        let tls = match ssl {
            Some(t) => Some(crate::ws::tls::client_config(&t.0).map_err(|e| value_error(format!("ssl: {e}")))?),
            None => d.tls,
        };
        let max_message_size = max_message_size.map_or(d.max_message_size, |b| b.0);
        let shown = name.map(redact_url).unwrap_or_else(|| redact_url(&url));
        let cfg = WsConfig {
            url: url.clone(),
            headers: headers.map_or(d.headers, |h| h.0),
            ping_interval: ping_interval.map_or(d.ping_interval, |s| s.0),
            ping_timeout: ping_timeout.map_or(d.ping_timeout, |s| s.0),
            open_timeout: open_timeout.map_or(d.open_timeout, |s| s.0),
            close_timeout: close_timeout.map_or(d.close_timeout, |s| s.0),
            first_message_timeout: first_message_timeout.map(|s| s.0).or(d.first_message_timeout),
            send_buffer: send_buffer.map_or(d.send_buffer, |n| n.0 as usize),
            max_message_size,
            read_buffer_size: read_buffer_size.map_or(d.read_buffer_size, |b| b.0),
            write_buffer_size: write_buffer_size.map_or(d.write_buffer_size, |b| b.0),
            recv_buffer_bytes: d.recv_buffer_bytes.max(max_message_size),
            fatal_close_codes,
            final_close_codes,
            fatal_http_statuses: fatal_http_statuses.map_or(d.fatal_http_statuses, |c| c.0),
            reconnect: crate::retry_state::Config {
                name: shown.clone(),
                policy: policy.map_or(d.reconnect.policy, |p| p.0),
                stable_after: stable_after.map_or(d.reconnect.stable_after, |s| s.0),
                quiet_attempts: quiet_attempts.map_or(d.reconnect.quiet_attempts, |n| n.0),
                quiet_jitter: quiet_jitter.map_or(d.reconnect.quiet_jitter, |s| s.0),
                ladder: ladder.map_or(d.reconnect.ladder, |l| l.0),
                connect_timeout: connect_timeout.map(|s| s.0),
                logger: logger.as_ref().map(LoggerRoute::key),
                ..d.reconnect
            },
            tls,
            compression: compression.0,
            ..d
        };
        let hooks = Hooks {
            url_for,
            on_connect: on_connect_spec(py, on_connect, fatal)?,
            heartbeat: super::heartbeat::beat_spec(py, heartbeat)?,
            watchdog,
        };
        let conn = Conn::new(cfg, shown.clone(), hooks, metrics_of(name, &url));
        Ok(PyConnection { conn, name: shown, _logger: logger })
    }

    /// Start (idempotent) and wait for the first connection; raises GaveUp / ConnectionClosed. The
    /// connection runs on the loop that takes this coroutine's first step.
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        super::logging::sync(py);
        let c = self.conn.clone();
        super::bridge::coroutine::deferred_coroutine(py, "Connection.start", move |py| c.begin(py))
    }

    /// A buffered message (str or bytes) or None; raises once the connection ended and is drained.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.check_started("recv")?;
        self.conn.try_recv(py).map_err(|t| self.conn.end_error(py, &t))
    }

    /// Resolves (to None) once `try_recv` has something to return: a message or the terminal error.
    /// It consumes nothing, so cancelling it never loses a message.
    fn wait_readable<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_started("recv")?;
        self.conn.wait_readable(py)
    }

    /// Queue `data` (str -> text, bytes-like -> binary) now, in call order, from any thread; resolves at
    /// once while the bytes not yet written stay under the write high-water mark and half of
    /// send_buffer is confirmed, else once written or confirmed.
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let msg = super::convert::message_from_py(data)?;
        self.check_started("send")?;
        self.conn.send(py, msg)
    }

    /// Resolves once everything sent before the call was confirmed by the peer.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_started("flush")?;
        self.conn.flush(py)
    }

    /// Close within close_timeout (flush, close frame, peer's close), then stop reconnecting.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.conn.clone();
        super::bridge::coroutine::deferred_coroutine(py, "Connection.aclose", move |py| c.aclose(py))
    }

    /// Schedule the bounded close and return at once: usable from sync code, from another thread,
    /// twice, or after the event loop stopped (then the socket is shut down at once).
    fn close(&self, py: Python<'_>) {
        self.conn.close(py)
    }

    fn events(&self, py: Python<'_>) -> EventStream {
        EventStream::on_loop(self.conn.subscribe(py))
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.conn.state().as_str()
    }

    #[getter]
    fn url(&self) -> String {
        redact_url(&self.conn.cfg.url)
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.conn.stats(py);
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
        format!("Connection(url={:?}, state={:?})", self.url(), self.state())
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

/// The defaults `help(tether.connect)` shows, from the Rust configuration (their one source).
fn show_defaults(cls: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = cls.py();
    let d = WsConfig::default();
    let secs = |t: std::time::Duration| t.as_secs_f64().into_pyobject(py).map(|v| v.into_any());
    let opt_secs = |t: Option<std::time::Duration>| t.map(|t| t.as_secs_f64()).into_pyobject(py);
    let int = |n: usize| n.into_pyobject(py).map(|v| v.into_any());
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
    super::signature::show_defaults(
        cls,
        vec![
            ("policy", PyBackoff { inner: d.reconnect.policy.clone() }.into_pyobject(py)?.into_any()),
            ("ping_interval", secs(d.ping_interval)?),
            ("ping_timeout", secs(d.ping_timeout)?),
            ("open_timeout", secs(d.open_timeout)?),
            ("close_timeout", secs(d.close_timeout)?),
            ("ladder", PyTuple::new(py, ladder)?.into_any()),
            ("stable_after", secs(d.reconnect.stable_after)?),
            ("send_buffer", int(d.send_buffer)?),
            ("first_message_timeout", opt_secs(d.first_message_timeout)?),
            ("quiet_attempts", d.reconnect.quiet_attempts.into_pyobject(py)?.into_any()),
            ("fatal_close_codes", PyTuple::new(py, &d.fatal_close_codes)?.into_any()),
            ("fatal_http_statuses", PyTuple::new(py, &d.fatal_http_statuses)?.into_any()),
            ("max_message_size", int(d.max_message_size)?),
            ("read_buffer_size", int(d.read_buffer_size)?),
            ("write_buffer_size", int(d.write_buffer_size)?),
            ("fatal", PyTuple::empty(py).into_any()),
            ("quiet_jitter", secs(d.reconnect.quiet_jitter)?),
            ("final_close_codes", PyTuple::new(py, &d.final_close_codes)?.into_any()),
            ("connect_timeout", opt_secs(d.reconnect.connect_timeout)?),
            ("compression", d.compression.map(|_| "deflate").into_pyobject(py)?),
        ],
    )
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyConnection>()?;
    show_defaults(&m.getattr("Connection")?)?;
    m.add_function(wrap_pyfunction!(add_redacted_names, m)?)
}
