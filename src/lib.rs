//! tether: bounded connection resilience for real-time agent frameworks.
//!
//! The pure-Rust core lives in one module per concern; the PyO3 bindings live in `py` and stay thin.
//!
//! * [`backoff`]: retry delay policies (jitter, budgets).
//! * [`reconnect`]: the generic reconnect loop (strategy ladder, stability-gated counter, log escalation).
//! * [`retry_state`]: that loop's retry policy as a pure state machine (no I/O, no clock).
//! * [`ws`]: the supervised signaling WebSocket built on the reconnect loop.
//! * [`ws_protocol`]: its delivery, liveness, close and poison rules, without I/O.
//! * [`ws_tls`]: which certificate authorities a `wss://` connection trusts.
//! * [`ws_handshake`], [`ws_heartbeat`]: the WebSocket's application-level handshake hook and heartbeat.
//! * [`watchdog`]: dwell, progress and liveness deadlines; bounded awaits.
//! * [`procpool`]: prewarmed process pool whose acquire never hangs.
//! * [`pool_state`]: that pool's allocation rules as a pure state machine (no I/O, no clock).
//! * [`readiness`]: staged dispatch readiness with per-stage deadlines.
//! * [`redact`]: secrets never reach logs.
//! * [`wording`]: counts in messages ("1 attempt", "2 attempts").
//! * [`metrics`]: what the objects above count for `tether.metrics` (OpenTelemetry), read at collection.
//! * [`testing`]: embedded signal server and chaos proxy.

pub mod backoff;
pub mod metrics;
pub mod pool_state;
pub mod procpool;
pub mod readiness;
pub mod reconnect;
pub mod redact;
pub mod retry_state;
pub mod testing;
pub mod watchdog;
pub mod wording;
pub mod ws;
pub mod ws_close_tap;
pub mod ws_handshake;
pub mod ws_heartbeat;
pub mod ws_protocol;
pub mod ws_redirect;
pub mod ws_tls;
mod ws_wait;

#[cfg(feature = "python")]
mod py;
