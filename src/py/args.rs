//! Optional constructor arguments. `Arg::new("name", value)` wraps what Python passed; each parser
//! validates it (naming the argument in its TypeError/ValueError) or, for None or absent, returns the
//! default it is given: the Rust configuration's `Default`, the one source of every default.

use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use crate::backoff::Backoff;
use crate::ws::frame::close_code_allowed;

use super::backoff::{count, non_negative_seconds, positive_seconds, PyBackoff};
use super::errors::value_error;

pub struct Arg<'a, 'py> {
    name: &'static str,
    value: Option<&'a Bound<'py, PyAny>>,
}

impl<'a, 'py> Arg<'a, 'py> {
    pub fn new(name: &'static str, value: Option<&'a Bound<'py, PyAny>>) -> Self {
        Arg { name, value: value.filter(|v| !v.is_none()) }
    }

    /// Positive, finite seconds.
    pub fn seconds(&self, default: Duration) -> PyResult<Duration> {
        Ok(self.opt_seconds()?.unwrap_or(default))
    }

    /// Positive, finite seconds, or None when not given.
    pub fn opt_seconds(&self) -> PyResult<Option<Duration>> {
        self.value.map(|v| positive_seconds(self.name, v).map(Duration::from_secs_f64)).transpose()
    }

    /// Finite seconds, zero allowed.
    pub fn seconds_or_zero(&self, default: Duration) -> PyResult<Duration> {
        match self.value {
            Some(v) => Ok(Duration::from_secs_f64(non_negative_seconds(self.name, v)?)),
            None => Ok(default),
        }
    }

    /// An int in [0, 1_000_000].
    pub fn count(&self, default: u32) -> PyResult<u32> {
        self.value.map_or(Ok(default), |v| count(self.name, v))
    }

    /// An int in [1, 1_000_000].
    pub fn at_least_one(&self, default: u32) -> PyResult<u32> {
        let n = self.count(default)?;
        if n == 0 {
            return Err(value_error(format!("{} must be at least 1", self.name)));
        }
        Ok(n)
    }

    /// A positive number of bytes.
    pub fn bytes(&self, default: usize) -> PyResult<usize> {
        let Some(v) = self.value else { return Ok(default) };
        match v.extract::<u64>() {
            Ok(n) if n > 0 && n <= usize::MAX as u64 => Ok(n as usize),
            _ => Err(value_error(format!("{} must be a positive number of bytes", self.name))),
        }
    }

    /// A `tether.Backoff`.
    pub fn policy(&self, default: &Backoff) -> PyResult<Backoff> {
        let Some(v) = self.value else { return Ok(default.clone()) };
        v.cast::<PyBackoff>().map(|b| b.get().inner.clone()).map_err(|_| {
            PyTypeError::new_err(format!(
                "{} must be a tether.Backoff, not {}",
                self.name,
                v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })
    }

    /// An iterable of close codes a server can send (`close_code_allowed`): a code that can never arrive
    /// would make the setting silently do nothing.
    pub fn close_codes(&self, default: &[u16]) -> PyResult<Vec<u16>> {
        let Some(v) = self.value else { return Ok(default.to_vec()) };
        let name = self.name;
        let it = v.try_iter().map_err(|_| {
            PyTypeError::new_err(format!("{name} must be an iterable of int close codes, not {}", type_name(v)))
        })?;
        let mut codes = vec![];
        for x in it {
            let x = x?;
            if x.is_instance_of::<PyBool>() || !x.is_instance_of::<PyInt>() {
                return Err(PyTypeError::new_err(format!("{name} must hold int close codes, not {}", type_name(&x))));
            }
            let code = match x.extract::<u16>() {
                Ok(c @ 1000..=4999) => c,
                _ => {
                    return Err(value_error(format!(
                        "{name}: close code {x} is outside 1000..4999, the codes a close frame may carry"
                    )))
                }
            };
            if !close_code_allowed(code) {
                return Err(value_error(format!(
                    "{name}: close code {code} never arrives from a server (RFC 6455 §7.4: 1004 and 1016-2999 are \
                     reserved, 1005 and 1006 only report a close without a code or without a close frame, 1015 a \
                     TLS failure)"
                )));
            }
            codes.push(code);
        }
        Ok(codes)
    }

    /// An iterable of ints in [0, 65535] (HTTP statuses).
    pub fn codes(&self, default: &[u16]) -> PyResult<Vec<u16>> {
        let Some(v) = self.value else { return Ok(default.to_vec()) };
        v.try_iter()
            .and_then(|it| it.map(|x| x?.extract::<u16>()).collect::<PyResult<Vec<u16>>>())
            .map_err(|_| PyTypeError::new_err(format!("{} must be an iterable of ints", self.name)))
    }
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
}

/// A bound whose None means "no bound" (so its default, when not given, comes from the signature):
/// positive, finite seconds or None.
pub fn bound_or_none(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Option<Duration>> {
    if v.is_none() {
        return Ok(None);
    }
    positive_seconds(name, v).map(|s| Some(Duration::from_secs_f64(s)))
}
