//! `__signature__` of the classes whose options take None for "the default" (or a Rust expression PyO3
//! shows as `...`). Without it `help()` and `inspect.signature()` show `initial=None`, which tells the
//! reader nothing; with it they show the values that take effect, read from the same `Default` the
//! constructor falls back to, so each default keeps one source. `tether.connect` and the stubs (checked
//! by stubtest against this signature) show these values too. The exception classes' keyword
//! constructors, which PyO3 does not describe, get theirs from `signature`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Set `cls.__signature__` to PyO3's signature of its constructor (names, kinds and order, from
/// `#[pyo3(signature = ...)]`) with `defaults` in place of the defaults PyO3 shows for those parameters.
/// Called once, when the module registers the class.
pub fn show_defaults(cls: &Bound<'_, PyAny>, defaults: Vec<(&str, Bound<'_, PyAny>)>) -> PyResult<()> {
    let py = cls.py();
    let inspect = py.import("inspect")?;
    let sig = inspect.call_method1("signature", (cls,))?;
    let params = PyList::empty(py);
    let mut left = defaults;
    for p in sig.getattr("parameters")?.call_method0("values")?.try_iter()? {
        let p = p?;
        let name: String = p.getattr("name")?.extract()?;
        let p = match left.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                let kw = PyDict::new(py);
                kw.set_item("default", left.swap_remove(i).1)?;
                p.call_method("replace", (), Some(&kw))?
            }
            // a Rust expression as default would show as `...`, which tells the reader nothing
            None if p.getattr("default")?.is(py.Ellipsis()) => {
                return Err(PyRuntimeError::new_err(format!("{cls}: no default shown for {name}")))
            }
            None => p,
        };
        params.append(p)?;
    }
    if let Some((name, _)) = left.first() {
        return Err(PyRuntimeError::new_err(format!("{cls} has no parameter {name}")));
    }
    let kw = PyDict::new(py);
    kw.set_item("parameters", params)?;
    cls.setattr("__signature__", sig.call_method("replace", (), Some(&kw))?)
}

/// The default of a parameter that has none (`inspect.Parameter.empty`).
pub fn no_default(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("inspect")?.getattr("Parameter")?.getattr("empty")
}

/// How a parameter is passed, as `inspect.Parameter`'s kinds name it.
#[derive(Clone, Copy)]
pub enum Kind {
    PositionalOrKeyword,
    KeywordOnly,
}

/// `inspect.Signature` of `(name=default, ...)`, for a callable PyO3 does not describe (the exceptions'
/// `__init__`): the parameters in order, each with its kind and default.
pub fn signature<'py>(py: Python<'py>, params: Vec<(&str, Kind, Bound<'py, PyAny>)>) -> PyResult<Py<PyAny>> {
    let inspect = py.import("inspect")?;
    let parameter = inspect.getattr("Parameter")?;
    let list = PyList::empty(py);
    for (name, kind, default) in params {
        let kind = parameter.getattr(match kind {
            Kind::PositionalOrKeyword => "POSITIONAL_OR_KEYWORD",
            Kind::KeywordOnly => "KEYWORD_ONLY",
        })?;
        let kw = PyDict::new(py);
        kw.set_item("default", default)?;
        list.append(parameter.call((name, kind), Some(&kw))?)?;
    }
    Ok(inspect.getattr("Signature")?.call1((list,))?.unbind())
}
