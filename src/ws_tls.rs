//! Which certificate authorities a `wss://` connection trusts: the bundled Mozilla roots (default),
//! the operating system's trust store, a CA bundle file, or certificates handed over in DER form (from
//! a Python `ssl.SSLContext`). Private CAs and TLS-intercepting proxies need one of the latter.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// The Mozilla roots compiled into tether (webpki-roots).
    Bundled,
    /// The operating system's store (on Linux: the distribution's bundle, or SSL_CERT_FILE/SSL_CERT_DIR).
    System,
    /// Every certificate in a PEM file.
    PemFile(PathBuf),
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
            TrustSource::PemFile(path) => {
                let shown = path.display();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read CA bundle {shown}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("cannot parse CA bundle {shown}: {e}"))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("no usable CA certificate in {shown}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sources_are_named() {
        let e = client_config(&[TrustSource::PemFile("/nonexistent/ca.pem".into())]).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = client_config(&[TrustSource::Der(vec![b"not a certificate".to_vec()])]).unwrap_err();
        assert!(e.contains("could be parsed"), "{e}");
        assert!(client_config(&[]).is_err());
        assert!(client_config(&[TrustSource::Bundled]).is_ok());
    }
}
