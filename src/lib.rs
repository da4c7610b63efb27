//! tether: bounded connection resilience for real-time agent frameworks.
//!
//! The pure-Rust core lives in one module per concern; the PyO3 bindings live in `py` and stay thin.

pub mod backoff;
pub mod reconnect;
pub mod redact;

#[cfg(feature = "python")]
mod py;
