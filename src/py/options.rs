//! The constructors' option types: each checks what Python passed as PyO3 extracts the argument, so a
//! constructor takes `ping_interval: Option<Seconds<PingInterval>>` and its body only assembles the
//! configuration. A bad value is a TypeError (wrong type) or ValueError (out of range) whose message
//! names the argument: extraction sees only the value, so each type carries the parameter it fills as a
//! marker (`Param`). None, where a constructor accepts it, is "the default": the Rust configuration's
//! `Default`, which `signature::show_defaults` also puts in the Python signature.

use std::marker::PhantomData;
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use crate::backoff::{Jitter, MAX_SECONDS};
use crate::ws::frame::close_code_allowed;

use super::convert::type_name;
use super::errors::value_error;

/// The name of the parameter an option type fills, as its errors say it.
pub trait Param {
    const NAME: &'static str;
}

macro_rules! params {
    ($($ty:ident = $name:literal),+ $(,)?) => {
        $(
            pub enum $ty {}
            impl super::Param for $ty {
                const NAME: &'static str = $name;
            }
        )+
    };
}

/// The parameters, by the names their constructors give them.
pub mod param {
    params! {
        AcquireAttempts = "acquire_attempts",
        AttemptTimeout = "attempt_timeout",
        CloseTimeout = "close_timeout",
        ConnectTimeout = "connect_timeout",
        Deadline = "deadline",
        Factor = "factor",
        FatalCloseCodes = "fatal_close_codes",
        FatalHttpStatuses = "fatal_http_statuses",
        FinalCloseCodes = "final_close_codes",
        FirstMessageTimeout = "first_message_timeout",
        InitializeTimeout = "initialize_timeout",
        Initial = "initial",
        Interval = "interval",
        MaxAttempts = "max_attempts",
        MaxConcurrentSpawns = "max_concurrent_spawns",
        MaxDelay = "max_delay",
        MaxMessageSize = "max_message_size",
        N = "n",
        NumIdle = "num_idle",
        OpenTimeout = "open_timeout",
        PingInterval = "ping_interval",
        PingTimeout = "ping_timeout",
        Policy = "policy",
        QuietAttempts = "quiet_attempts",
        QuietJitter = "quiet_jitter",
        ReadBufferSize = "read_buffer_size",
        Seconds = "seconds",
        Respawn = "respawn",
        SendBuffer = "send_buffer",
        StableAfter = "stable_after",
        Timeout = "timeout",
        WriteBufferSize = "write_buffer_size",
    }
}

/// Any int or float (not a bool); TypeError otherwise.
pub fn seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{name} must be a number of seconds, not bool")));
    }
    match v.extract::<f64>() {
        Ok(s) => Ok(s),
        // an int beyond a float's range (10**400) is still a number: as the infinity it rounds to, the
        // caller's range check refuses it with a ValueError, as it does 10**20
        Err(e) if e.is_instance_of::<PyOverflowError>(v.py()) => {
            Ok(if v.gt(0)? { f64::INFINITY } else { f64::NEG_INFINITY })
        }
        Err(_) => Err(PyTypeError::new_err(format!("{name} must be a number of seconds, not {}", type_name(v)))),
    }
}

/// Positive, finite seconds for timeouts and intervals; `ValueError` otherwise.
pub fn positive_seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let s = seconds(name, v)?;
    if !s.is_finite() || s <= 0.0 || s > MAX_SECONDS {
        return Err(value_error(format!("{name} must be a finite number of seconds in (0, 86400], got {s}")));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Finite seconds, zero allowed.
fn non_negative_seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let s = seconds(name, v)?;
    if !s.is_finite() || !(0.0..=MAX_SECONDS).contains(&s) {
        return Err(value_error(format!("{name} must be a finite number of seconds in [0, 86400], got {s}")));
    }
    Ok(Duration::from_secs_f64(s))
}

/// An int (not a bool) in [0, 1_000_000].
pub fn count(name: &str, v: &Bound<'_, PyAny>) -> PyResult<u32> {
    if v.is_instance_of::<PyBool>() || !v.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!("{name} must be an int")));
    }
    let n: i64 = v.extract().map_err(|_| value_error(format!("{name} is out of range")))?;
    if !(0..=1_000_000).contains(&n) {
        return Err(value_error(format!("{name} must be between 0 and 1000000, got {n}")));
    }
    Ok(n as u32)
}

/// An option type that holds a `T` checked by `check` as the argument named `P::NAME`.
macro_rules! option_type {
    ($(#[$doc:meta])* $ty:ident($inner:ty) = $check:expr) => {
        $(#[$doc])*
        pub struct $ty<P>(pub $inner, PhantomData<P>);

        impl<P> $ty<P> {
            pub fn new(v: $inner) -> Self {
                $ty(v, PhantomData)
            }
        }

        impl<'a, 'py, P: Param> FromPyObject<'a, 'py> for $ty<P> {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                let check: fn(&str, &Bound<'py, PyAny>) -> PyResult<$inner> = $check;
                check(P::NAME, &obj).map(Self::new)
            }
        }
    };
}

option_type!(
    /// Positive, finite seconds, at most a day (a larger value is a unit mistake).
    Seconds(Duration) = positive_seconds
);
option_type!(
    /// Finite seconds in [0, a day]: zero turns the wait off.
    SecondsOrZero(Duration) = non_negative_seconds
);
option_type!(
    /// Any number of seconds; the object it configures checks the range (`Backoff::validate`).
    Number(f64) = seconds
);
option_type!(
    /// An int in [0, 1_000_000].
    Count(u32) = count
);
option_type!(
    /// An int in [1, 1_000_000]: zero would make the object it configures do nothing, for ever.
    AtLeastOne(u32) = |name, v| match count(name, v)? {
        0 => Err(value_error(format!("{name} must be at least 1"))),
        n => Ok(n),
    }
);
option_type!(
    /// A positive number of bytes.
    Bytes(usize) = |name, v| match v.extract::<u64>() {
        Ok(n) if n > 0 && n <= usize::MAX as u64 => Ok(n as usize),
        _ => Err(value_error(format!("{name} must be a positive number of bytes"))),
    }
);
option_type!(
    /// An iterable of close codes a server can send (`close_code_allowed`): a code that can never
    /// arrive would make the setting silently do nothing.
    CloseCodes(Vec<u16>) = close_codes
);
option_type!(
    /// An iterable of ints in [0, 65535] (HTTP statuses).
    HttpStatuses(Vec<u16>) = |name, v| {
        v.try_iter()
            .and_then(|it| it.map(|x| x?.extract::<u16>()).collect::<PyResult<Vec<u16>>>())
            .map_err(|_| PyTypeError::new_err(format!("{name} must be an iterable of ints")))
    }
);

fn close_codes(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<u16>> {
    let it = v.try_iter().map_err(|_| {
        PyTypeError::new_err(format!("{name} must be an iterable of int close codes, not {}", type_name(v)))
    })?;
    let mut codes = vec![];
    for x in it {
        let x = x?;
        if x.is_instance_of::<PyBool>() || !x.is_instance_of::<PyInt>() {
            return Err(PyTypeError::new_err(format!("{name} must hold int close codes, not {}", type_name(&x))));
        }
        codes.push(sendable_close_code(&x).map_err(|e| value_error(format!("{name}: {e}")))?);
    }
    Ok(codes)
}

/// `x` (an int) as a close code a close frame may carry (`close_code_allowed`), or why not: the one rule
/// for the codes a server may send (`fatal_close_codes`, ...) and the test server's `close()`.
pub fn sendable_close_code(x: &Bound<'_, PyAny>) -> Result<u16, String> {
    match x.extract::<u16>() {
        Ok(code) if close_code_allowed(code) => Ok(code),
        Ok(code @ 1000..=4999) => Err(format!(
            "close code {code} is reserved: no close frame carries it, so it never arrives from a server and \
             cannot be sent (RFC 6455 §7.4: 1004 and 1016-2999 are reserved, 1005 and 1006 only report a close \
             without a code or without a close frame, 1015 a TLS failure)"
        )),
        _ => Err(format!("close code {x} is outside 1000..4999, the codes a close frame may carry")),
    }
}

/// `jitter=`: "full", "equal", "decorrelated" or "none".
pub struct JitterMode(pub Jitter);

impl<'a, 'py> FromPyObject<'a, 'py> for JitterMode {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let s: String = obj
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("jitter must be a str, not {}", type_name(&obj))))?;
        Jitter::parse(&s).map(JitterMode).map_err(|e| value_error(e.0))
    }
}
