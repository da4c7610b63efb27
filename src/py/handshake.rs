//! `tether.connect(on_connect=...)` bindings: the user's coroutine runs on the connection's event loop
//! (awaited from the session; dropping the session's future cancels the Python task, and cancelling the
//! task fails the attempt), with a `HandshakeChannel` onto the socket, wrapped by `tether.Handshake`.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3_async_runtimes::TaskLocals;

use crate::ws::WsError;
use crate::ws_handshake::{BoxFuture, Handshake, OnConnect, OnConnectHook};

use super::bridge::await_py;
use super::convert::describe;
use super::convert::{message_from_py, message_to_py};
use super::errors::CONNECTION_CLOSED;
use super::reconnect::fatal_tuple;

/// The event loop of the task that started the connection; hooks run there.
pub type LoopSlot = Arc<OnceLock<TaskLocals>>;

fn interpreter_gone() -> WsError {
    WsError::fatal(super::SHUTTING_DOWN)
}

/// Schedule `tether._hooks.<helper>(*args)` on the connection's event loop; the returned future awaits
/// it (dropping the future cancels the task). Takes the GIL once, to build the call.
pub fn on_loop(
    locals: &LoopSlot,
    what: &str,
    helper: &str,
    args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
) -> Result<impl Future<Output = PyResult<Py<PyAny>>> + Send + 'static, WsError> {
    let Some(locals) = locals.get() else {
        return Err(WsError::fatal(format!("{what} called before the connection was started")));
    };
    super::with_python(|py| {
        let call = py.import("tether._hooks")?.getattr(helper)?.call1(args(py)?)?;
        await_py(py, locals, call)
    })
    .ok_or_else(interpreter_gone)?
    .map_err(|e| WsError::fatal(format!("could not schedule {what} on the event loop: {e}")))
}

/// The native side of `tether.Handshake`: the hook's handle on the socket during `on_connect`.
#[pyclass(name = "HandshakeChannel", module = "tether._native", frozen)]
pub struct PyHandshakeChannel {
    hs: Handshake,
}

fn closed(py: Python<'_>, text: &str) -> PyErr {
    CONNECTION_CLOSED.err(py, text, None)
}

/// How a handshake `send()` ended, turned into None or `ConnectionClosed` on the event loop thread.
struct Written(Result<(), String>);

impl<'py> IntoPyObject<'py> for Written {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.0 {
            Ok(()) => Ok(py.None().into_bound(py)),
            Err(e) => Err(closed(py, &e)),
        }
    }
}

#[pymethods]
impl PyHandshakeChannel {
    #[getter]
    fn attempt(&self) -> u32 {
        self.hs.info.attempt
    }

    #[getter]
    fn strategy(&self) -> &str {
        &self.hs.info.strategy
    }

    #[getter]
    fn reconnect(&self) -> bool {
        self.hs.info.reconnect
    }

    /// Write `data` (str -> text, bytes-like -> binary) now; resolves once the socket accepted it.
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let rx = self.hs.start_send(message_from_py(data)?).map_err(|e| closed(py, &e))?;
        super::coroutine::done_at_call(py, "HandshakeChannel.send", async move {
            Ok(Written(rx.await.unwrap_or_else(|_| Err("the on_connect handshake is over".into()))))
        })
    }

    /// A message read for the hook, or None; raises ConnectionClosed once the handshake is over.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.hs.try_recv() {
            Ok(m) => Ok(m.map(|m| message_to_py(py, &m))),
            Err(e) => Err(closed(py, &e)),
        }
    }

    /// Resolves once `try_recv` has something to return; the socket is read only meanwhile.
    fn wait_readable<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let hs = self.hs.clone();
        super::coroutine::coroutine(py, "HandshakeChannel.wait_readable", async move {
            hs.readable().await;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        let i = &self.hs.info;
        format!("Handshake(attempt={}, strategy={:?}, reconnect={})", i.attempt, &*i.strategy, i.reconnect)
    }
}

struct Hook {
    hook: Py<PyAny>,
    /// `fatal=` plus tether's own misuse error: instances give up at once.
    fatal: Py<PyTuple>,
    locals: LoopSlot,
}

struct PyOnConnect(Arc<Hook>);

impl OnConnect for PyOnConnect {
    fn run(&self, hs: Handshake) -> BoxFuture<Result<(), WsError>> {
        let hook = self.0.clone();
        let started = on_loop(&hook.locals, "on_connect", "_run_on_connect", |py| {
            let channel = Py::new(py, PyHandshakeChannel { hs })?;
            PyTuple::new(py, [hook.hook.clone_ref(py).into_any(), channel.into_any()])
        });
        Box::pin(async move {
            let Err(e) = started?.await else { return Ok(()) };
            let err = super::with_python(|py| {
                let text = format!("on_connect raised {}", describe(py, &e));
                // CancelledError, KeyboardInterrupt & co. (not Exceptions) mean the loop is going away
                let control_flow = !e.is_instance_of::<pyo3::exceptions::PyException>(py);
                if control_flow || e.value(py).is_instance(hook.fatal.bind(py)).unwrap_or(false) {
                    WsError::fatal(text)
                } else {
                    WsError::retry(text)
                }
            });
            Err(err.unwrap_or_else(interpreter_gone))
        })
    }
}

/// Build the hook from `on_connect=` and `fatal=`.
pub fn on_connect_hook(
    py: Python<'_>,
    on_connect: Option<&Bound<'_, PyAny>>,
    fatal: Option<&Bound<'_, PyAny>>,
    locals: &LoopSlot,
) -> PyResult<Option<OnConnectHook>> {
    let Some(spec) = on_connect_spec(py, on_connect, fatal)? else { return Ok(None) };
    Ok(Some(OnConnectHook(Arc::new(PyOnConnect(Arc::new(Hook {
        hook: spec.hook,
        fatal: spec.fatal,
        locals: locals.clone(),
    }))))))
}

/// `on_connect=` and `fatal=`, checked: the hook and the exception types that give up at once (plus
/// tether's own misuse error).
pub fn on_connect_spec(
    py: Python<'_>,
    on_connect: Option<&Bound<'_, PyAny>>,
    fatal: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<super::ws::OnConnectSpec>> {
    let fatal = fatal_tuple(py, fatal)?;
    let Some(f) = on_connect.filter(|f| !f.is_none()) else { return Ok(None) };
    if !f.is_callable() {
        return Err(PyTypeError::new_err("on_connect must be an async function taking a tether.Handshake"));
    }
    let misuse = py.import("tether._hooks")?.getattr("OnConnectMisuse")?;
    let fatal = PyTuple::new(py, fatal.iter().chain([misuse]).collect::<Vec<_>>())?;
    Ok(Some(super::ws::OnConnectSpec { hook: f.clone().unbind(), fatal: fatal.unbind() }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHandshakeChannel>()
}
