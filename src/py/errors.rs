//! Raising the Python exception hierarchy (defined in `tether/_errors.py`) from Rust.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Build `tether.<class_name>(message, **kwargs)` as a `PyErr`.
pub fn tether_error(py: Python<'_>, class_name: &str, message: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyErr {
    let made = (|| -> PyResult<Bound<'_, PyAny>> {
        let cls = py.import("tether._errors")?.getattr(class_name)?;
        cls.call((message,), kwargs)
    })();
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

pub fn value_error(msg: impl Into<String>) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(msg.into())
}
