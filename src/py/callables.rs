//! Checks on callables handed to tether, made when they are given rather than on first use.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

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
