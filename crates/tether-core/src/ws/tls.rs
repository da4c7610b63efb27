//! TLS for `wss://`, without I/O: which certificate authorities a connection trusts (the bundled
//! Mozilla roots by default, the operating system's store, a CA bundle file, or certificates handed over
//! in DER form from a Python `ssl.SSLContext`: private CAs and TLS-intercepting proxies need one of the
//! latter), and a rustls client connection driven by buffers ([`TlsSession`]): ciphertext read from the
//! socket goes in through `receive`, which returns the plaintext; plaintext to send goes through `send`,
//! and whatever TLS itself must write (handshake, alerts) is taken with `take_outgoing`. The caller
//! owns the socket.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// The Mozilla roots compiled into tether (webpki-roots).
    Bundled,
    /// The operating system's store (on Linux: the distribution's bundle, or SSL_CERT_FILE/SSL_CERT_DIR).
    System,
    /// Every certificate in a PEM file, or in the PEM files of a directory (OpenSSL's `capath`).
    Pem(PathBuf),
    /// DER certificates.
    Der(Vec<Vec<u8>>),
}

/// A client configuration trusting exactly the union of `sources`. Errors name the source that failed.
pub fn client_config(sources: &[TrustSource]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for source in sources {
        match source {
            TrustSource::Bundled => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TrustSource::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                    return Err(format!("no usable certificate in the system trust store{why}"));
                }
            }
            TrustSource::Pem(path) => {
                let (added, _) = roots.add_parsable_certificates(pem_certificates(path)?);
                if added == 0 {
                    return Err(format!("no usable CA certificate in {}", path.display()));
                }
            }
            TrustSource::Der(certs) => {
                let (added, _) = roots.add_parsable_certificates(certs.iter().map(|c| CertificateDer::from(c.clone())));
                if added == 0 && !certs.is_empty() {
                    return Err("none of the given CA certificates could be parsed".to_string());
                }
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted certificate authority".to_string());
    }
    build(roots)
}

/// The certificates of a PEM file; of a directory, those of every file in it that parses as PEM (a
/// `c_rehash` directory also holds other files, and links to the same certificates).
fn pem_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let read = |file: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("cannot read CA bundle {}: {e}", file.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot parse CA bundle {}: {e}", file.display()))
    };
    if !path.is_dir() {
        return read(path);
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot read CA directory {shown}: {e}"))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files.iter().filter_map(|f| read(f).ok()).flatten().collect())
}

/// The default: the bundled roots, built once per process.
pub fn default_config() -> Arc<rustls::ClientConfig> {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        build(roots).expect("ring provider supports the default protocol versions")
    })
    .clone()
}

fn build(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

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
    pub fn send(&mut self, mut plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        // rustls takes plaintext only while its records not yet written stay under its buffer limit
        // (64 KiB): a larger frame goes in as many pieces, each one's records taken before the next
        while !plain.is_empty() {
            let n =
                self.conn.writer().write(plain).map_err(|e| TlsError { text: e.to_string(), certificate: false })?;
            self.take_outgoing(out);
            if n == 0 {
                return Err(TlsError { text: "TLS took none of the data to send".into(), certificate: false });
            }
            plain = &plain[n..];
        }
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
    fn bad_sources_are_named() {
        let e = client_config(&[TrustSource::Pem("/nonexistent/ca.pem".into())]).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = client_config(&[TrustSource::Der(vec![b"not a certificate".to_vec()])]).unwrap_err();
        assert!(e.contains("could be parsed"), "{e}");
        assert!(client_config(&[]).is_err());
        assert!(client_config(&[TrustSource::Bundled]).is_ok());
    }

    #[test]
    fn a_session_starts_with_a_client_hello_and_fails_on_a_plain_http_answer() {
        let mut s = TlsSession::new(default_config(), "example.com").unwrap();
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
        assert!(TlsSession::new(default_config(), "127.0.0.1").is_ok());
        assert!(TlsSession::new(default_config(), "not a name!").is_err());
    }
}
