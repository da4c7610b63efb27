//! `tether.connect`'s WebSocket as layers without I/O, each unit-tested without sockets: the
//! front end that drives them on the event loop is in the bindings (`py::ws`).
//!
//! * [`config`]: the options and their defaults; [`error`]: how an attempt or the connection ended.
//! * [`wire`]: one connection's bytes: [`tls`] (rustls driven by buffers, and the trusted roots), the
//!   opening handshake ([`upgrade`], its [`redirect`]s) and [`frame`]s, compressed by [`deflate`]
//!   (permessage-deflate) when the server agrees.
//! * [`protocol`]: delivery, liveness, the close handshake and the poison rule, above the frames.
//! * [`heartbeat`]: the in-band heartbeat's timing; [`socket`]: the kernel's liveness options.

pub mod config;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod heartbeat;
pub mod protocol;
pub mod redirect;
pub mod socket;
pub mod tls;
pub mod upgrade;
pub mod wire;

use std::time::Duration;

pub use config::{WsConfig, DEFAULT_CONNECT_TIMEOUT};
pub use error::{SendError, Terminal, WsError};
pub use upgrade::port_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Idle = 0,
    Connecting = 1,
    Connected = 2,
    Reconnecting = 3,
    Closing = 4,
    Closed = 5,
    Failed = 6,
}

impl State {
    pub fn from_u8(v: u8) -> State {
        match v {
            1 => State::Connecting,
            2 => State::Connected,
            3 => State::Reconnecting,
            4 => State::Closing,
            5 => State::Closed,
            6 => State::Failed,
            _ => State::Idle,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Reconnecting => "reconnecting",
            State::Closing => "closing",
            State::Closed => "closed",
            State::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub state: State,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub losses: u64,
    pub pings_sent: u64,
    pub last_rtt: Option<Duration>,
    pub send_queue: usize,
    pub recv_queue: usize,
    pub last_loss: Option<String>,
    pub connected_for: Option<Duration>,
}
