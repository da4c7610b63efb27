//! What a `tether.connect` connection is configured with, and the one source of every default.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::deflate::Offer;
use crate::redact::redact_url;
use crate::retry_state::Config;

#[derive(Clone)]
pub struct WsConfig {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub open_timeout: Duration,
    pub close_timeout: Duration,
    pub first_message_timeout: Option<Duration>,
    pub send_buffer: usize,
    /// Largest message, in bytes of payload, sent or received (a frame may carry a whole message).
    pub max_message_size: usize,
    /// A frame split across reads, or a fragmented message, is kept in a buffer allocated then and
    /// released once done if it grew past this: an idle connection holds no read buffer.
    pub read_buffer_size: usize,
    /// Sends queued within one loop iteration are written together when the iteration ends, or at once
    /// when this many bytes wait.
    pub write_buffer_size: usize,
    /// Payload bytes queued and not yet written above which `send` waits until its message is written.
    pub write_high_water: usize,
    /// A message in flight at this many consecutive connection losses is failed, not re-sent.
    pub poison_after: u32,
    /// Inbound messages, and bytes, buffered before the reader pauses (pong deadlines are suspended
    /// meanwhile; pings keep going out, so the kernel's TCP_USER_TIMEOUT still catches a black hole).
    pub recv_buffer: usize,
    pub recv_buffer_bytes: usize,
    pub fatal_close_codes: Vec<u16>,
    /// A close frame from the server with one of these codes ends the connection as closed (`recv`
    /// and `async for` end, state "closed"): not retried, and not a give-up.
    pub final_close_codes: Vec<u16>,
    pub fatal_http_statuses: Vec<u16>,
    pub reconnect: Config,
    /// Trusted CAs for wss:// (`tls::client_config`); None = the bundled Mozilla roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The permessage-deflate offer of every upgrade request; None: compression off.
    pub compression: Option<Offer>,
}

/// The URL and header values may carry credentials: redacted, like everything tether shows.
fn redacted_headers(headers: &[(String, String)]) -> Vec<(&str, String)> {
    headers.iter().map(|(k, v)| (k.as_str(), crate::redact::redact_header(k, v))).collect()
}

impl fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConfig")
            .field("url", &redact_url(&self.url))
            .field("headers", &redacted_headers(&self.headers))
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("open_timeout", &self.open_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("first_message_timeout", &self.first_message_timeout)
            .field("send_buffer", &self.send_buffer)
            .field("max_message_size", &self.max_message_size)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("write_buffer_size", &self.write_buffer_size)
            .field("poison_after", &self.poison_after)
            .field("recv_buffer", &self.recv_buffer)
            .field("recv_buffer_bytes", &self.recv_buffer_bytes)
            .field("fatal_close_codes", &self.fatal_close_codes)
            .field("final_close_codes", &self.final_close_codes)
            .field("fatal_http_statuses", &self.fatal_http_statuses)
            .field("reconnect", &self.reconnect)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

/// Default bound of the first connect (`reconnect::Config::connect_timeout`): long enough for a server
/// that is restarting or a slow network (three `open_timeout`s), short enough that a client pointed at
/// a server that is down, or a URL that is wrong, is told so.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            url: String::new(),
            headers: vec![],
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            open_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            first_message_timeout: None,
            send_buffer: 1024,
            max_message_size: 16 << 20,
            read_buffer_size: 4 << 10,
            write_buffer_size: 16 << 10,
            write_high_water: 64 << 10,
            poison_after: 3,
            recv_buffer: 65_536,
            recv_buffer_bytes: 64 << 20,
            fatal_close_codes: vec![1008],
            // A signaling client is meant to stay connected: load balancers, proxies and servers being
            // redeployed close with 1000 or 1001 to recycle a connection, so no code ends it by default.
            final_close_codes: vec![],
            fatal_http_statuses: vec![401, 403],
            reconnect: Config {
                ladder: vec![(Arc::from("resume"), 1), (Arc::from("restart"), 1)],
                connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
                ..Default::default()
            },
            tls: None,
            // on, as in websockets and aiohttp: JSON signaling shrinks several times, and a server
            // that does not want it declines the offer
            compression: Some(Offer::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_the_url_and_secret_headers() {
        let headers = vec![("Authorization".to_string(), "Bearer SECRET1".to_string())];
        let cfg = WsConfig { url: "wss://h/ws?access_token=SECRET2".into(), headers, ..Default::default() };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("SECRET") && shown.contains("wss://h/ws"), "{shown}");
    }
}
