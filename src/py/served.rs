//! The lifecycle the testing servers (`SignalServer`, `ChaosProxy`) share: not running until
//! `await start()` (idempotent), running until `aclose()`; every other call needs it running.

use std::future::Future;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A testing server the bindings run.
pub trait Server: Send + Sync + 'static {
    /// Its Python class name, and how to get one running, for the "not running" error.
    const NAME: &'static str;
    const HOW_TO_START: &'static str;
    /// Stop it; resolves once its port is free.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
    /// Its counters, as `stats()` returns them.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

pub struct Served<T> {
    slot: Arc<Mutex<Option<Arc<T>>>>,
}

impl<T: Server> Served<T> {
    pub fn new() -> Self {
        Served { slot: Arc::new(Mutex::new(None)) }
    }

    /// The running server, if any.
    pub fn current(&self) -> Option<Arc<T>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The running server; RuntimeError saying how to start it otherwise.
    pub fn get(&self) -> PyResult<Arc<T>> {
        self.current()
            .ok_or_else(|| PyRuntimeError::new_err(format!("{} is not running; use {}", T::NAME, T::HOW_TO_START)))
    }

    /// Start with `start()` unless running already; `name` is the coroutine's (`Class.start`).
    pub fn start<'py, F, Fut>(&self, py: Python<'py>, name: &'static str, start: F) -> PyResult<Bound<'py, PyAny>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = PyResult<T>> + Send + 'static,
    {
        let slot = self.slot.clone();
        super::bridge::coroutine::coroutine(py, name, async move {
            if slot.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                return Ok(());
            }
            let server = Arc::new(start().await?);
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
            Ok::<_, PyErr>(())
        })
    }

    /// Shut the server down (if running); it is not running afterwards.
    pub fn aclose<'py>(&self, py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
        let server = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        super::bridge::coroutine::coroutine(py, name, async move {
            if let Some(s) = server {
                s.shutdown().await;
            }
            Ok::<_, PyErr>(())
        })
    }

    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.get()?.counters() {
            d.set_item(name, value)?;
        }
        Ok(d)
    }
}
