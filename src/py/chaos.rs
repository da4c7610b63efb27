//! `tether.testing.ChaosProxy` bindings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::testing::chaos::{ChaosProxy, Which};

use super::errors::value_error;

#[pyclass(name = "ChaosProxy", module = "tether._native", frozen)]
pub struct PyChaosProxy {
    upstream: String,
    listen: String,
    inner: Arc<Mutex<Option<Arc<ChaosProxy>>>>,
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
    fn get(&self) -> PyResult<Arc<ChaosProxy>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            PyRuntimeError::new_err(
                "ChaosProxy is not running; use `async with ChaosProxy(...)` or `await proxy.start()`",
            )
        })
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
        Ok(PyChaosProxy { upstream: address("upstream", upstream)?, listen, inner: Arc::new(Mutex::new(None)) })
    }

    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (inner, listen, upstream) = (self.inner.clone(), self.listen.clone(), self.upstream.clone());
        super::runtime::future_into_py(py, async move {
            if inner.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                return Ok(());
            }
            let p = ChaosProxy::start(&listen, &upstream)
                .await
                .map_err(|e| PyRuntimeError::new_err(format!("ChaosProxy could not listen on {listen}: {e}")))?;
            *inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(p));
            Ok(())
        })
    }

    /// Stop accepting and reset every connection.
    fn aclose<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let p = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        super::runtime::future_into_py(py, async move {
            if let Some(p) = p {
                p.shutdown();
            }
            Ok(())
        })
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
        let s = self.get()?.stats();
        let d = PyDict::new(py);
        d.set_item("accepted", s.accepted)?;
        d.set_item("active", s.active)?;
        d.set_item("bytes_up", s.bytes_up)?;
        d.set_item("bytes_down", s.bytes_down)?;
        d.set_item("resets", s.resets)?;
        d.set_item("closes", s.closes)?;
        d.set_item("upstream_failures", s.upstream_failures)?;
        Ok(d)
    }
    fn __repr__(&self) -> String {
        match self.inner.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(p) => format!("ChaosProxy({} -> {})", p.addr(), self.upstream),
            None => format!("ChaosProxy(-> {}, not running)", self.upstream),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChaosProxy>()
}
