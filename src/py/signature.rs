//! `__signature__` of the classes whose options are None in the binding's own signature (so that an
//! explicit None also means "the default"). Without it `help()` and `inspect.signature()` show
//! `initial=None`, which tells the reader nothing; with it they show the values that take effect, read
//! from the same `Default` the constructor falls back to, so each default keeps one source.

use pyo3::prelude::*;
use pyo3::types::PyList;

/// How a parameter is passed, as `inspect.Parameter`'s kinds name it.
#[derive(Clone, Copy)]
pub enum Kind {
    PositionalOrKeyword,
    KeywordOnly,
}

/// `inspect.Signature` of `(name=default, ...)`: the parameters in order, each with its kind and the
/// default that takes effect when it is left out.
pub fn signature<'py>(py: Python<'py>, params: Vec<(&str, Kind, Bound<'py, PyAny>)>) -> PyResult<Py<PyAny>> {
    let inspect = py.import("inspect")?;
    let parameter = inspect.getattr("Parameter")?;
    let list = PyList::empty(py);
    for (name, kind, default) in params {
        let kind = parameter.getattr(match kind {
            Kind::PositionalOrKeyword => "POSITIONAL_OR_KEYWORD",
            Kind::KeywordOnly => "KEYWORD_ONLY",
        })?;
        let kw = pyo3::types::PyDict::new(py);
        kw.set_item("default", default)?;
        list.append(parameter.call((name, kind), Some(&kw))?)?;
    }
    Ok(inspect.getattr("Signature")?.call1((list,))?.unbind())
}

/// The default of a parameter that has none (`inspect.Parameter.empty`).
pub fn no_default(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("inspect")?.getattr("Parameter")?.getattr("empty")
}
