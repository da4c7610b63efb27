//! `tether.testing.ChaosProxy` bindings.

use std::future::Future;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::testing::chaos::{ChaosProxy, Which};

use super::errors::value_error;
use super::served::{Served, Server};

#[pyclass(name = "ChaosProxy", module = "tether._native", frozen)]
pub struct PyChaosProxy {
    upstream: String,
    listen: String,
    served: Served<ChaosProxy>,
}

impl Server for ChaosProxy {
    const NAME: &'static str = "ChaosProxy";
    const HOW_TO_START: &'static str = "`async with ChaosProxy(...)` or `await proxy.start()`";

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        ChaosProxy::shutdown(self)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("accepted", s.accepted),
            ("active", s.active),
            ("bytes_up", s.bytes_up),
            ("bytes_down", s.bytes_down),
            ("resets", s.resets),
            ("closes", s.closes),
            ("upstream_failures", s.upstream_failures),
        ]
    }
}

/// "host:port" or (host, port) -> "host:port"; ValueError/TypeError otherwise.
fn address(what: &str, v: &Bound<'_, PyAny>) -> PyResult<String> {
    let (host, port): (String, i64) = if let Ok(s) = v.cast::<PyString>() {
        let s = s.to_str()?;
        let (h, p) =
            s.rsplit_once(':').ok_or_else(|| value_error(format!("{what} must be \"host:port\", got {s:?}")))?;
        let p: i64 = p.parse().map_err(|_| value_error(format!("{what} has a bad port: {s:?}")))?;
        (h.trim_start_matches('[').trim_end_matches(']').to_string(), p)
    } else if let Ok(t) = v.cast::<PyTuple>() {
        t.extract().map_err(|_| PyTypeError::new_err(format!("{what} tuple must be (host: str, port: int)")))?
    } else {
        return Err(PyTypeError::new_err(format!("{what} must be \"host:port\" or (host, port)")));
    };
    if host.is_empty() {
        return Err(value_error(format!("{what} needs a host")));
    }
    if !(0..=65535).contains(&port) {
        return Err(value_error(format!("{what} port must be 0..65535, got {port}")));
    }
    Ok(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

fn which(direction: &str) -> PyResult<Which> {
    Which::parse(direction)
        .ok_or_else(|| value_error(format!("direction must be \"up\", \"down\" or \"both\", got {direction:?}")))
}

impl PyChaosProxy {
    fn get(&self) -> PyResult<std::sync::Arc<ChaosProxy>> {
        self.served.get()
    }
}

#[pymethods]
impl PyChaosProxy {
    #[new]
    #[pyo3(signature = (upstream, *, listen=None))]
    fn new(upstream: &Bound<'_, PyAny>, listen: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let listen = match listen {
            Some(l) if !l.is_none() => address("listen", l)?,
            _ => "127.0.0.1:0".to_string(),
        };
        Ok(PyChaosProxy { upstream: address("upstream", upstream)?, listen, served: Served::new() })
    }

    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (listen, upstream) = (self.listen.clone(), self.upstream.clone());
        self.served.start(py, "ChaosProxy.start", || async move {
            ChaosProxy::start(&listen, &upstream)
                .await
                .map_err(|e| PyRuntimeError::new_err(format!("ChaosProxy could not listen on {listen}: {e}")))
        })
    }

    /// Stop accepting and reset every connection; returns once the port is free.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.served.aclose(py, "ChaosProxy.aclose")
    }

    #[getter]
    fn host(&self) -> PyResult<String> {
        Ok(self.get()?.addr().ip().to_string())
    }
    #[getter]
    fn port(&self) -> PyResult<u16> {
        Ok(self.get()?.addr().port())
    }
    #[getter]
    fn address(&self) -> PyResult<String> {
        Ok(self.get()?.addr().to_string())
    }
    #[getter]
    fn upstream(&self) -> &str {
        &self.upstream
    }

    #[pyo3(signature = (direction="both"))]
    fn blackhole(&self, direction: &str) -> PyResult<()> {
        self.get()?.blackhole(which(direction)?);
        Ok(())
    }
    #[pyo3(signature = (ms, direction="both"))]
    fn latency(&self, ms: &Bound<'_, PyAny>, direction: &str) -> PyResult<()> {
        if ms.is_instance_of::<pyo3::types::PyBool>() {
            return Err(PyTypeError::new_err("ms must be a number of milliseconds, not bool"));
        }
        let ms: f64 = ms.extract().map_err(|_| PyTypeError::new_err("ms must be a number of milliseconds"))?;
        if !ms.is_finite() || !(0.0..=86_400_000.0).contains(&ms) {
            return Err(value_error(format!("latency must be between 0 and 86400000 ms, got {ms}")));
        }
        self.get()?.latency(which(direction)?, Duration::from_secs_f64(ms / 1000.0));
        Ok(())
    }
    /// Cap throughput to `bytes_per_sec` (None: no cap).
    #[pyo3(signature = (bytes_per_sec, direction="both"))]
    fn bandwidth(&self, bytes_per_sec: Option<i64>, direction: &str) -> PyResult<()> {
        let bps = match bytes_per_sec {
            Some(b) if b <= 0 => return Err(value_error(format!("bytes_per_sec must be > 0 (or None), got {b}"))),
            Some(b) => Some(b as u64),
            None => None,
        };
        self.get()?.bandwidth(which(direction)?, bps);
        Ok(())
    }
    fn heal(&self) -> PyResult<()> {
        self.get()?.heal();
        Ok(())
    }
    fn reset(&self) -> PyResult<usize> {
        Ok(self.get()?.reset())
    }
    fn close(&self) -> PyResult<usize> {
        Ok(self.get()?.close())
    }
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.served.stats(py)
    }
    fn __repr__(&self) -> String {
        match self.served.current() {
            Some(p) => format!("ChaosProxy({} -> {})", p.addr(), self.upstream),
            None => format!("ChaosProxy(-> {}, not running)", self.upstream),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChaosProxy>()
}
