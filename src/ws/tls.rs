//! TLS for `wss://` without I/O: a rustls client connection driven by buffers. Ciphertext read from
//! the socket goes in through [`TlsSession::receive`], which returns the plaintext; plaintext to send
//! goes through [`TlsSession::send`], and whatever TLS itself must write (handshake, alerts) is taken
//! with [`TlsSession::take_outgoing`]. The caller owns the socket.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

/// A TLS failure; `certificate`: a problem retrying cannot cure (an untrusted or mismatched
/// certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub text: String,
    pub certificate: bool,
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        let certificate = matches!(e, rustls::Error::InvalidCertificate(_));
        let text = if certificate {
            format!("{e} (to trust a private CA or the system store, pass ssl=)")
        } else {
            e.to_string()
        };
        TlsError { text, certificate }
    }
}

pub struct TlsSession {
    conn: rustls::ClientConnection,
}

impl TlsSession {
    /// A session to `host` (a DNS name or an IP literal); its ClientHello is ready to take.
    pub fn new(config: Arc<rustls::ClientConfig>, host: &str) -> Result<TlsSession, TlsError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| TlsError { text: format!("invalid server name {host:?}: {e}"), certificate: true })?;
        let conn = rustls::ClientConnection::new(config, name)?;
        Ok(TlsSession { conn })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Feed ciphertext from the server; the plaintext it carried is appended to `plain`. After an error,
    /// `take_outgoing` holds the alert to send before closing.
    pub fn receive(&mut self, mut data: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        while !data.is_empty() {
            let n = self.conn.read_tls(&mut data).map_err(|e| TlsError { text: e.to_string(), certificate: false })?;
            self.conn.process_new_packets()?;
            self.drain_plaintext(plain)?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn drain_plaintext(&mut self, plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(()), // close_notify: the socket's EOF follows
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                // the peer closed without close_notify: the socket's EOF says the same
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(TlsError { text: e.to_string(), certificate: false }),
            }
        }
    }

    /// Encrypt `plain` for the server; the ciphertext is appended to `out`.
    pub fn send(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.conn.writer().write_all(plain).map_err(|e| TlsError { text: e.to_string(), certificate: false })?;
        self.take_outgoing(out);
        Ok(())
    }

    /// What TLS has to write (handshake messages, alerts, records of `send`), appended to `out`.
    pub fn take_outgoing(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Say goodbye (close_notify); take it with `take_outgoing`.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_starts_with_a_client_hello_and_fails_on_a_plain_http_answer() {
        let mut s = TlsSession::new(crate::ws_tls::default_config(), "example.com").unwrap();
        assert!(s.is_handshaking());
        let mut hello = vec![];
        s.take_outgoing(&mut hello);
        assert_eq!(hello.first(), Some(&0x16), "a handshake record");
        let mut plain = vec![];
        let e = s.receive(b"HTTP/1.1 400 Bad Request\r\n\r\n", &mut plain).unwrap_err();
        assert!(!e.certificate && !e.text.is_empty(), "{e:?}");
        assert!(plain.is_empty());
    }

    #[test]
    fn an_ip_literal_is_a_valid_server_name() {
        assert!(TlsSession::new(crate::ws_tls::default_config(), "127.0.0.1").is_ok());
        assert!(TlsSession::new(crate::ws_tls::default_config(), "not a name!").is_err());
    }
}
