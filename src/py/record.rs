//! Immutable value classes made in Rust (events, alarms) that behave as the frozen dataclasses users
//! know: built by position or keyword in field order, read-only attributes, `==` and hash over the
//! fields, the dataclass repr (`Connected(attempt=1)`), `__match_args__` for `match` statements, and
//! pickling by field values.

use std::fmt::Write;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `Name(field=repr, ...)`, as a dataclass shows itself.
pub fn repr(name: &str, names: &[&str], values: &Bound<'_, PyTuple>) -> PyResult<String> {
    let mut out = format!("{name}(");
    for (i, (field, value)) in names.iter().zip(values.iter()).enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{field}={}", value.repr()?);
    }
    out.push(')');
    Ok(out)
}

/// Defines a frozen value class: `record! { /// doc  RustName as "Name" in "python.module" { /// doc
/// field: Type, ... } }`. The module is where users import it from, so pickle finds it there.
macro_rules! record {
    (
        $(#[$doc:meta])*
        $rust:ident as $name:literal in $module:literal {
            $( $(#[$field_doc:meta])* $field:ident: $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$doc])*
        #[pyo3::pyclass(name = $name, module = $module, frozen, eq, get_all)]
        #[derive(Clone, PartialEq)]
        pub struct $rust {
            $( $(#[$field_doc])* pub $field: $ty, )*
        }

        #[pyo3::pymethods]
        impl $rust {
            #[new]
            #[pyo3(signature = ($($field),*))]
            fn new($($field: $ty),*) -> Self {
                $rust { $($field),* }
            }

            #[classattr]
            fn __match_args__(py: pyo3::Python<'_>) -> pyo3::PyResult<pyo3::Bound<'_, pyo3::types::PyTuple>> {
                pyo3::types::PyTuple::new(py, Self::FIELDS.iter().copied())
            }

            fn __repr__(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<String> {
                $crate::py::record::repr($name, Self::FIELDS, &self.values(py)?)
            }

            /// The hash of the field values, as for a frozen dataclass (unhashable if a field is).
            fn __hash__(&self, py: pyo3::Python<'_>) -> pyo3::PyResult<isize> {
                self.values(py)?.hash()
            }

            fn __reduce__<'py>(
                slf: &pyo3::Bound<'py, Self>,
            ) -> pyo3::PyResult<(pyo3::Bound<'py, pyo3::types::PyType>, pyo3::Bound<'py, pyo3::types::PyTuple>)> {
                Ok((slf.get_type(), slf.get().values(slf.py())?))
            }
        }

        impl $rust {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The field values in order: what repr, hash and pickling are made of.
            fn values<'py>(&self, py: pyo3::Python<'py>) -> pyo3::PyResult<pyo3::Bound<'py, pyo3::types::PyTuple>> {
                let values: Vec<pyo3::Bound<'py, pyo3::PyAny>> = vec![
                    $( pyo3::IntoPyObjectExt::into_bound_py_any(self.$field.clone(), py)? ),*
                ];
                pyo3::types::PyTuple::new(py, values)
            }
        }
    };
}
pub(crate) use record;
