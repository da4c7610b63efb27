//! tether: bounded connection resilience for real-time agent frameworks.
//!
//! The rules without I/O (state machines, codecs) are the `tether-core` crate, re-exported here under
//! the same names; this crate drives them (tokio tasks, the Python event loop in `py`).
//!
//! * from `tether-core`: [`backoff`], [`retry_state`], [`pool_state`], [`watchdog_rules`], [`ws`]
//!   (the WebSocket's layers), [`redact`], [`wording`].
//! * [`reconnect`]: what every reconnect loop reports (events, log records).
//! * [`watchdog`]: dwell, progress and liveness deadlines on tokio time; bounded awaits.
//! * [`procpool`]: prewarmed process pool whose acquire never hangs.
//! * [`readiness`]: staged dispatch readiness with per-stage deadlines.
//! * [`metrics`]: what the objects above count for `tether.metrics` (OpenTelemetry), read at collection.
//! * [`testing`]: embedded signal server and chaos proxy.
//! * `py` (with the `python` feature): the bindings, among them `tether.connect`'s front end on the
//!   event loop (`py::ws`).

pub use tether_core::{backoff, pool_state, redact, retry_state, watchdog_rules, wording, ws};

pub mod metrics;
pub mod procpool;
pub mod readiness;
pub mod reconnect;
pub mod testing;
pub mod watchdog;

#[cfg(feature = "python")]
mod py;

#[cfg(test)]
mod layers;
