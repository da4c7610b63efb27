//! The kernel's part in noticing a dead link: TCP keepalive and TCP_USER_TIMEOUT, derived from the
//! ping schedule, so the kernel ends a connection the pings would (also while the reader is paused).

use std::time::Duration;

use super::WsConfig;

const LOG: &str = "tether::ws";

/// The kernel backs up the ping deadline (keepalive, TCP_USER_TIMEOUT); an option the kernel refuses
/// (e.g. a keepalive idle time above its maximum) leaves only the ping deadline, which still works.
pub fn set_socket_options(sock: socket2::SockRef<'_>, cfg: &WsConfig) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(cfg.ping_interval.max(Duration::from_secs(1)))
        .with_interval((cfg.ping_timeout / 3).max(Duration::from_secs(1)));
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let ka = ka.with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), error = %e,
            "could not enable TCP keepalive (idle {:.0}s): {e}; relying on the ping deadline", cfg.ping_interval.as_secs_f64());
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(cfg.ping_interval + cfg.ping_timeout)) {
        tracing::debug!(target: LOG, logger = cfg.reconnect.logger.as_deref(), error = %e,
            "could not set TCP_USER_TIMEOUT ({:.0}s): {e}; relying on the ping deadline",
            (cfg.ping_interval + cfg.ping_timeout).as_secs_f64());
    }
}
