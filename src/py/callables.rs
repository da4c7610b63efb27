//! Checks on callables handed to tether, made when they are given rather than on first use, and on
//! what they return.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// TypeError unless `f` is an async callable: a coroutine function, a `functools.partial` of one, or
/// an object whose `__call__` is one. A plain function (which would return a non-awaitable, or a
/// coroutine only by accident) is refused at once instead of failing every later attempt.
pub fn require_async(py: Python<'_>, what: &str, f: &Bound<'_, PyAny>) -> PyResult<()> {
    let refuse = || PyTypeError::new_err(format!("{what} must be an async callable (an `async def`)"));
    if !f.is_callable() {
        return Err(refuse());
    }
    let inspect = py.import("inspect")?;
    let is_coro_fn =
        |o: &Bound<'_, PyAny>| -> PyResult<bool> { inspect.call_method1("iscoroutinefunction", (o,))?.is_truthy() };
    if is_coro_fn(f)? {
        return Ok(());
    }
    // objects with an async __call__ (plain functions have a sync __call__ slot wrapper)
    let plain = inspect.call_method1("isroutine", (f,))?.is_truthy()?
        || py.import("functools")?.getattr("partial").and_then(|p| f.is_instance(&p))?;
    if !plain {
        if let Ok(call) = f.getattr("__call__") {
            if is_coro_fn(&call)? {
                return Ok(());
            }
        }
    }
    Err(refuse())
}

/// Whether `o` can be awaited (`inspect.isawaitable`).
pub fn is_awaitable(o: &Bound<'_, PyAny>) -> PyResult<bool> {
    static ISAWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    ISAWAITABLE.import(o.py(), "inspect", "isawaitable")?.call1((o,))?.is_truthy()
}

/// `result` of a callable that must answer synchronously (`what` names it), or TypeError if it
/// returned an awaitable: an awaitable is truthy and is no message, so taken as an answer it would
/// silently turn the check it stands for off. A coroutine refused is closed, so that it does not
/// warn as never awaited on top of the error.
pub fn sync_result<'py>(result: Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyAny>> {
    if !is_awaitable(&result)? {
        return Ok(result);
    }
    static ISCOROUTINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    if ISCOROUTINE.import(result.py(), "asyncio", "iscoroutine")?.call1((&result,))?.is_truthy()? {
        result.call_method0("close")?;
    }
    let returned = super::convert::type_name(&result);
    Err(PyTypeError::new_err(format!("{what} must return its result, not an awaitable ({returned})")))
}
