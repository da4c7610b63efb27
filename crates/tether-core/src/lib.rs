//! tether's rules without I/O: every module here is a state machine, a codec or a pure function, fed
//! what happened and the current `Instant` by a driver that owns the sockets, timers and tasks. Nothing
//! here depends on tokio or Python (this crate has neither as a dependency).
//!
//! * [`backoff`]: retry delay policies (jitter, budgets).
//! * [`retry_state`]: a reconnect loop's retry policy (stability, quiet retries, ladder, budgets).
//! * [`pool_state`]: a process pool's allocation rules.
//! * [`watchdog_rules`]: dwell and liveness deadlines and how their alarms read.
//! * [`ws`]: the WebSocket of `tether.connect` as layers (frames, opening handshake, TLS, delivery and
//!   liveness, heartbeat timing).
//! * [`redact`]: secrets never reach logs; [`wording`]: counts in messages.

pub mod backoff;
pub mod pool_state;
pub mod redact;
pub mod retry_state;
pub mod watchdog_rules;
pub mod wording;
pub mod ws;
