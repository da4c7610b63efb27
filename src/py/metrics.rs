//! What `tether.metrics` reads from the Rust registry (`crate::metrics`) when an OpenTelemetry reader
//! collects: the instrument table, current totals and gauges, and the histogram values recorded since
//! the last collection. Called from the collecting thread; nothing here waits.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::metrics::{self, Attributes, Instrument};

use super::errors::value_error;

/// Attach (True) or detach (False) the exporter: objects created while attached are measured.
#[pyfunction]
fn _metrics_attach(on: bool) {
    metrics::set_enabled(on);
}

/// Every instrument: (name, kind, unit, description, attributes, bucket boundaries).
#[pyfunction]
fn _metrics_instruments(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let rows = Instrument::ALL
        .iter()
        .map(|i| {
            let s = i.spec();
            (s.name, s.kind.as_str(), s.unit, s.description, s.attributes.to_vec(), s.boundaries.to_vec())
                .into_pyobject(py)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, rows)
}

fn attributes<'py>(py: Python<'py>, a: &Attributes) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in a {
        d.set_item(*k, v)?;
    }
    Ok(d)
}

/// The current value of every series of a counter or up-down counter: [(attributes, value)].
#[pyfunction]
fn _metrics_read<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyList>> {
    let instrument = Instrument::ALL
        .into_iter()
        .find(|i| i.spec().name == name)
        .ok_or_else(|| value_error(format!("no tether instrument is named {name:?}")))?;
    let rows = metrics::read(instrument)
        .iter()
        .map(|(a, v)| PyTuple::new(py, [attributes(py, a)?.into_any(), v.into_pyobject(py)?.into_any()]))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, rows)
}

/// The histogram values recorded since the last call: [(instrument name, attributes, value)].
#[pyfunction]
fn _metrics_drain(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let rows = metrics::drain()
        .iter()
        .map(|(i, a, v)| {
            PyTuple::new(
                py,
                [
                    i.spec().name.into_pyobject(py)?.into_any(),
                    attributes(py, a)?.into_any(),
                    v.into_pyobject(py)?.into_any(),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, rows)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_metrics_attach, m)?)?;
    m.add_function(wrap_pyfunction!(_metrics_instruments, m)?)?;
    m.add_function(wrap_pyfunction!(_metrics_read, m)?)?;
    m.add_function(wrap_pyfunction!(_metrics_drain, m)?)
}
