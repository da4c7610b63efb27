//! `tether.testing.SignalServer` bindings: the embedded WebSocket server with scripted misbehaviour.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use crate::testing::signal_server::SignalServer;

use super::options::{param, sendable_close_code, Seconds, SecondsOrZero};
use tokio_tungstenite::tungstenite::Message as WireMessage;

use crate::ws::frame::MAX_CONTROL_PAYLOAD;
use crate::ws::protocol::Message;

use super::convert::{message_from_py, message_to_py};

/// What the Python side sends, as the server's WebSocket library takes it.
fn to_wire(m: Message) -> WireMessage {
    match m {
        Message::Text(t) => WireMessage::text(String::from_utf8_lossy(&t).into_owned()),
        Message::Binary(b) => WireMessage::Binary(b),
        Message::Ping(p) => WireMessage::Ping(p),
    }
}

/// What the server received, as Python sees it.
fn from_wire(py: Python<'_>, m: &WireMessage) -> Py<PyAny> {
    match m {
        WireMessage::Text(t) => message_to_py(py, &Message::text(t.as_str())),
        other => message_to_py(py, &Message::binary(other.clone().into_data())),
    }
}
use super::errors::value_error;
use super::served::{Served, Server};

#[pyclass(name = "SignalServer", module = "tether._native", frozen)]
pub struct PySignalServer {
    host: String,
    port: u16,
    served: Served<SignalServer>,
}

impl Server for SignalServer {
    const NAME: &'static str = "SignalServer";
    const HOW_TO_START: &'static str = "`async with SignalServer()` or `await server.start()`";

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        SignalServer::shutdown(self)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("tcp_accepts", s.tcp_accepts),
            ("handshakes", s.handshakes),
            ("refused", s.refused),
            ("active", s.active),
            ("messages_in", s.messages_in),
            ("messages_out", s.messages_out),
            ("pings", s.pings),
        ]
    }
}

impl PySignalServer {
    fn get(&self) -> PyResult<Arc<SignalServer>> {
        self.served.get()
    }
}

#[pymethods]
impl PySignalServer {
    #[new]
    #[pyo3(signature = (host="127.0.0.1", port=0))]
    fn new(host: &str, port: u16) -> Self {
        PySignalServer { host: host.to_string(), port, served: Served::new() }
    }

    /// Bind and start serving (idempotent).
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (host, port) = (self.host.clone(), self.port);
        self.served.start(py, "SignalServer.start", move || async move {
            SignalServer::start(&host, port)
                .await
                .map_err(|e| PyRuntimeError::new_err(format!("SignalServer could not bind {host}:{port}: {e}")))
        })
    }

    /// Stop accepting and drop every connection; returns once the port is free.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.served.aclose(py, "SignalServer.aclose")
    }

    #[getter]
    fn url(&self) -> PyResult<String> {
        Ok(self.get()?.url())
    }
    #[getter]
    fn port(&self) -> PyResult<u16> {
        Ok(self.get()?.addr().port())
    }
    #[getter]
    fn host(&self) -> PyResult<String> {
        Ok(self.get()?.addr().ip().to_string())
    }

    /// Drop every connection without a close frame. Returns how many.
    fn drop(&self) -> PyResult<usize> {
        Ok(self.get()?.drop_all())
    }
    /// Close every connection with a close frame. Returns how many. What no close frame may carry (a
    /// reserved code, a reason over 123 bytes) is a ValueError: sent anyway, the client would answer it
    /// as a protocol violation (1002) instead of seeing the close the test asked for.
    #[pyo3(signature = (code, reason=""))]
    fn close(&self, code: &Bound<'_, PyInt>, reason: &str) -> PyResult<usize> {
        let code = sendable_close_code(code.as_any()).map_err(value_error)?;
        let most = MAX_CONTROL_PAYLOAD - 2;
        if reason.len() > most {
            return Err(value_error(format!(
                "close reason is {} bytes in UTF-8, over the {most} a close frame holds",
                reason.len()
            )));
        }
        Ok(self.get()?.close_all(code, reason))
    }
    /// Stop reading on every connection (no pongs, no echoes); sockets stay open.
    fn freeze(&self) -> PyResult<()> {
        self.get()?.freeze();
        Ok(())
    }
    fn unfreeze(&self) -> PyResult<()> {
        self.get()?.unfreeze();
        Ok(())
    }
    #[pyo3(signature = (status=503, times=None))]
    fn refuse(&self, status: u16, times: Option<u64>) -> PyResult<()> {
        if !(400..=599).contains(&status) {
            return Err(value_error(format!("refuse status must be an HTTP error status (400..=599), got {status}")));
        }
        self.get()?.refuse(status, times);
        Ok(())
    }
    /// Undo refuse / slow_handshake / accept_then_drop / freeze.
    fn behave(&self) -> PyResult<()> {
        self.get()?.behave();
        Ok(())
    }
    fn slow_handshake(&self, seconds: SecondsOrZero<param::Seconds>) -> PyResult<()> {
        self.get()?.slow_handshake(seconds.0);
        Ok(())
    }
    #[pyo3(signature = (enabled=true))]
    fn accept_then_drop(&self, enabled: bool) -> PyResult<()> {
        self.get()?.accept_then_drop(enabled);
        Ok(())
    }
    /// Forward each client's messages to every other client (a room).
    #[pyo3(signature = (enabled=true))]
    fn relay(&self, enabled: bool) -> PyResult<()> {
        self.get()?.set_relay(enabled);
        Ok(())
    }
    /// Send `data` to every new client right after its handshake; None stops greeting.
    #[pyo3(signature = (data=None))]
    fn greet(&self, data: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let m = match data {
            Some(d) if !d.is_none() => Some(to_wire(message_from_py(d)?)),
            _ => None,
        };
        self.get()?.greet(m);
        Ok(())
    }
    #[pyo3(signature = (enabled=true))]
    fn echo(&self, enabled: bool) -> PyResult<()> {
        self.get()?.set_echo(enabled);
        Ok(())
    }
    /// False: incoming TCP connections are reset at once (a dead server). True: accept again.
    fn listening(&self, on: bool) -> PyResult<()> {
        self.get()?.set_listening(on);
        Ok(())
    }
    fn push(&self, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        let m = to_wire(message_from_py(data)?);
        Ok(self.get()?.push(m))
    }
    fn flood(&self, count: u64, size: usize) -> PyResult<usize> {
        Ok(self.get()?.flood(count, size))
    }
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.served.stats(py)
    }
    /// Request targets (path + query) of every handshake, in order (not redacted: a test server).
    fn requests(&self) -> PyResult<Vec<String>> {
        Ok(self.get()?.requests())
    }
    fn received(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self.get()?.received().iter().map(|m| from_wire(py, m)).collect())
    }
    /// Wait until `active` connections == n (or `handshakes` >= n with key="handshakes"); bool.
    #[pyo3(signature = (n=1, timeout=None, key="active"))]
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        n: u64,
        timeout: Option<Seconds<param::Timeout>>,
        key: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let srv = self.get()?;
        let t = timeout.map_or(Duration::from_secs(10), |t| t.0);
        let key = key.to_string();
        if !["active", "handshakes", "tcp_accepts", "refused", "messages_in", "pings"].contains(&key.as_str()) {
            return Err(value_error(format!("unknown key {key:?}")));
        }
        super::bridge::coroutine::coroutine(py, "SignalServer.wait_for", async move {
            Ok::<_, PyErr>(
                srv.wait_until(t, move |s| match key.as_str() {
                    "active" => s.active == n,
                    "handshakes" => s.handshakes >= n,
                    "tcp_accepts" => s.tcp_accepts >= n,
                    "refused" => s.refused >= n,
                    "messages_in" => s.messages_in >= n,
                    _ => s.pings >= n,
                })
                .await,
            )
        })
    }

    fn __repr__(&self) -> String {
        match self.served.current() {
            Some(s) => format!("SignalServer(url={:?})", s.url()),
            None => format!("SignalServer(host={:?}, port={}, not running)", self.host, self.port),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySignalServer>()
}
