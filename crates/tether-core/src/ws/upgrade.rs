//! The WebSocket opening handshake of a client (RFC 6455 §4.1), without I/O: the HTTP/1.1 upgrade
//! request for a URL and its headers, and the reading of the server's answer (a 101 that proves it read
//! our key, a redirect, or a refusal). Bytes that follow the answer's headers are the first frames.
//!
//! The one extension offered is permessage-deflate (unless compression is off or the application sends
//! its own `Sec-WebSocket-Extensions`): [`Answer::check`] reads the server's choice into the agreed
//! parameters, and refuses an answer that picks an extension or parameter that was not offered. A
//! subprotocol is asked for by the application's own `Sec-WebSocket-Protocol` header; an answer that
//! picks one that was not asked for is refused as not being an answer to this request. Credentials in
//! the URL (`ws://user:password@host/`) are sent as HTTP Basic authorization, as websockets does, unless
//! the application sends its own `Authorization`.

use http::Uri;
use sha1::{Digest, Sha1};

use super::deflate::{self, Agreed, Offer};

/// RFC 6455 §1.3: appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// An answer whose headers exceed this is refused rather than buffered without end.
pub const MAX_ANSWER: usize = 64 << 10;
const MAX_HEADERS: usize = 64;

/// Where a ws:// or wss:// URL leads, as the handshake needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// The host to connect to and to name in TLS (brackets of an IPv6 literal removed).
    pub host: String,
    pub port: u16,
    /// `Host:` header: the authority as written, without userinfo.
    pub authority: String,
    /// The request target: path and query (`/` when the URL has none).
    pub target: String,
    /// `user:password` of the URL's userinfo (percent-decoded), for HTTP Basic authorization.
    pub credentials: Option<Credentials>,
}

/// The URL's `user:password`: never shown (its `Debug` says only that there is one).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(String);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(REDACTED)")
    }
}

/// `%XX` escapes decoded (malformed ones kept as written).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `uri` is a wss:// (true) or ws:// (false) URI; None for any other scheme. Schemes are
/// case-insensitive (RFC 3986 §3.1): `WSS://` is wss://, as websockets reads it.
pub fn is_tls(uri: &Uri) -> Option<bool> {
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("wss") => Some(true),
        Some(s) if s.eq_ignore_ascii_case("ws") => Some(false),
        _ => None,
    }
}

/// The port of a ws:// or wss:// URI: explicit (1..=65535) or the scheme's default.
pub fn port_of(uri: &Uri) -> Result<u16, String> {
    // read from the authority text: `Uri::port()` silently drops a port that does not fit in a u16
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    // userinfo (`user:password@`) may hold colons too
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host_end = authority.rfind(']').unwrap_or(0);
    match authority[host_end..].rfind(':').map(|i| &authority[host_end + i + 1..]) {
        None | Some("") => Ok(if is_tls(uri) == Some(true) { 443 } else { 80 }),
        Some(p) => match p.parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            // not repeated: a password with an unencoded `/` reads as the port (`user:pw/x@host`)
            _ => Err("the port is not a number in 1..65535".to_string()),
        },
    }
}

impl Endpoint {
    /// Parse a ws:// or wss:// URL. Errors do not repeat the URL (the caller shows it redacted).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let tls = is_tls(&uri)
            .ok_or_else(|| format!("URL scheme must be ws or wss, got {:?}", uri.scheme_str().unwrap_or("")))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host in the URL")?;
        let port = port_of(&uri)?;
        let written = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let credentials = written.rsplit_once('@').map(|(userinfo, _)| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            Credentials(format!("{}:{}", percent_decoded(user), percent_decoded(password)))
        });
        let authority = written.rsplit('@').next().unwrap_or(written).to_string();
        let target = uri.path_and_query().map(|p| p.as_str()).filter(|p| !p.is_empty()).unwrap_or("/");
        let target = if target.starts_with('/') { target.to_string() } else { format!("/{target}") };
        Ok(Endpoint {
            tls,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            authority,
            target,
            credentials,
        })
    }
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    data_encoding::BASE64.encode(&h.finalize())
}

/// The upgrade request, the accept value that proves an answer is to it, and the permessage-deflate
/// offer it carries.
#[derive(Debug, Clone)]
pub struct Request {
    pub bytes: Vec<u8>,
    pub accept: String,
    pub deflate: Option<Offer>,
    /// The subprotocols the application's `Sec-WebSocket-Protocol` header asks for.
    pub protocols: Vec<String>,
}

/// The request for `ep` with the application's `headers` (which replace the defaults of the same
/// name, as an application that sets its own `Host` expects), offering `deflate`; `nonce` makes the
/// key.
pub fn request(ep: &Endpoint, headers: &[(String, String)], nonce: [u8; 16], deflate: Option<&Offer>) -> Request {
    let key = data_encoding::BASE64.encode(&nonce);
    let extensions = deflate.map(Offer::header_value);
    let basic = ep.credentials.as_ref().map(|c| format!("Basic {}", data_encoding::BASE64.encode(c.0.as_bytes())));
    let defaults = [
        ("Host", Some(ep.authority.as_str())),
        ("Authorization", basic.as_deref()),
        ("Connection", Some("Upgrade")),
        ("Upgrade", Some("websocket")),
        ("Sec-WebSocket-Version", Some("13")),
        ("Sec-WebSocket-Key", Some(key.as_str())),
        ("Sec-WebSocket-Extensions", extensions.as_deref()),
    ];
    let mut out = format!("GET {} HTTP/1.1\r\n", ep.target);
    let mut sent_key = key.clone();
    let mut offered = deflate.cloned();
    for (name, value) in defaults {
        if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            // the application's own extensions header replaces the offer: nothing of ours was offered
            if name == "Sec-WebSocket-Extensions" {
                offered = None;
            }
        } else if let Some(value) = value {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("Sec-WebSocket-Key") {
            sent_key = value.clone();
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let protocols = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|(_, v)| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    Request { bytes: out.into_bytes(), accept: accept_for(&sent_key), deflate: offered, protocols }
}

/// The server's answer to the upgrade request (its headers; what follows is WebSocket data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    /// The minor version of its HTTP/1.x status line.
    http_minor: u8,
    headers: Vec<(String, String)>,
}

/// Why an answer does not open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another status than 101; `location` for a redirect.
    Status { status: u16, reason: String, location: Option<String> },
    /// A 101 that is not a valid WebSocket upgrade for this request.
    NotUpgrade(String),
}

impl Answer {
    /// A header's value (the first, if repeated), by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the answer opens the WebSocket of the request whose accept value is `accept`, that
    /// offered `deflate` and asked for `protocols`; the agreed permessage-deflate parameters if the
    /// server accepted the offer.
    pub fn check(
        &self,
        accept: &str,
        deflate: Option<&Offer>,
        protocols: &[String],
    ) -> Result<Option<Agreed>, Refusal> {
        if self.status != 101 {
            return Err(Refusal::Status {
                status: self.status,
                reason: self.reason.clone(),
                location: self.header("location").map(str::to_string),
            });
        }
        let has_token = |name: &str, token: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        let refuse = |why: &str| Err(Refusal::NotUpgrade(why.to_string()));
        // 101 and Upgrade are HTTP/1.1's (RFC 6455 §4.1), and websockets refuses an HTTP/1.0 answer; other
        // statuses are still read (an HTTP/1.0 503 of a proxy is a busy server, a 302 a redirect)
        if self.http_minor != 1 {
            return refuse(&format!("a 101 on HTTP/1.{} (a WebSocket upgrade needs HTTP/1.1)", self.http_minor));
        }
        if !has_token("upgrade", "websocket") {
            return refuse("no \"Upgrade: websocket\" header");
        }
        if !has_token("connection", "upgrade") {
            return refuse("no \"Connection: Upgrade\" header");
        }
        match self.header("sec-websocket-accept") {
            Some(a) if a.trim() == accept => {}
            Some(_) => return refuse("a wrong Sec-WebSocket-Accept (not the answer to this request's key)"),
            None => return refuse("no Sec-WebSocket-Accept header"),
        }
        // RFC 6455 §4.1: one of those asked for, or none
        if let Some(p) = self.header("sec-websocket-protocol") {
            if !protocols.iter().any(|asked| asked == p.trim()) {
                return refuse("a subprotocol (Sec-WebSocket-Protocol) that was not asked for");
            }
        }
        let extensions: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v.as_str())
            .collect();
        deflate::negotiate(deflate, &extensions).map_err(|why| {
            Refusal::NotUpgrade(format!(
                "its Sec-WebSocket-Extensions {:?} cannot be accepted: {why}",
                extensions.join(", ")
            ))
        })
    }
}

/// Read the answer at the start of `buf`: `Ok(None)` while its headers are incomplete, else the answer
/// and how many bytes its head took (the rest of `buf` is WebSocket data). `Err` for bytes that are not
/// an HTTP/1.1 answer, or headers over [`MAX_ANSWER`].
pub fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER => {
            Err(format!("an answer whose headers exceed {} KiB", MAX_ANSWER >> 10))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let answer = Answer {
                status: resp.code.unwrap_or(0),
                reason: resp.reason.unwrap_or("").to_string(),
                http_minor: resp.version.unwrap_or(1),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
            };
            Ok(Some((answer, n)))
        }
        Err(e) => Err(format!("an answer that is not HTTP/1.1 ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        s.into_bytes()
    }

    #[test]
    fn the_accept_value_is_rfc_6455s_example() {
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn endpoints_of_urls() {
        let ep = Endpoint::parse("wss://user:pw@example.com:8443/ws?room=1").unwrap();
        assert_eq!(
            ep,
            Endpoint {
                tls: true,
                host: "example.com".into(),
                port: 8443,
                authority: "example.com:8443".into(),
                target: "/ws?room=1".into(),
                credentials: Some(Credentials("user:pw".into())),
            }
        );
        assert_eq!(format!("{:?}", ep.credentials), "Some(Credentials(REDACTED))");
        let ep = Endpoint::parse("ws://[::1]/").unwrap();
        assert_eq!((ep.host.as_str(), ep.port, ep.authority.as_str()), ("::1", 80, "[::1]"));
        assert_eq!(Endpoint::parse("ws://h").unwrap().target, "/");
        assert_eq!(Endpoint::parse("wss://h").unwrap().port, 443);
        assert!(Endpoint::parse("http://h/").unwrap_err().contains("ws or wss"));
        let ep = Endpoint::parse("WSS://h/").unwrap();
        assert_eq!((ep.tls, ep.port), (true, 443), "schemes are case-insensitive");
        assert!(!Endpoint::parse("Ws://h/").unwrap().tls);
        assert!(Endpoint::parse("ws://h:70000/").unwrap_err().contains("not a number in 1..65535"));
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn the_request_carries_the_key_and_the_applications_headers() {
        let ep = Endpoint::parse("ws://h:1234/p?q=1").unwrap();
        let req = request(&ep, &[("X-Room".into(), "r1".into()), ("host".into(), "front".into())], [7; 16], None);
        let text = String::from_utf8(req.bytes).unwrap();
        assert!(text.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\nUpgrade: websocket\r\n") && text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nX-Room: r1\r\n") && text.contains("\r\nhost: front\r\n"), "{text}");
        assert!(!text.contains("Host: h:1234"), "the application's Host replaces the default: {text}");
        assert!(text.ends_with("\r\n\r\n"));
        let key = data_encoding::BASE64.encode(&[7; 16]);
        assert!(text.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));
        assert_eq!(req.accept, accept_for(&key));
    }

    #[test]
    fn credentials_in_the_url_are_sent_as_basic_authorization_unless_the_application_sends_its_own() {
        let basic = |url: &str, headers: &[(String, String)]| {
            let text =
                String::from_utf8(request(&Endpoint::parse(url).unwrap(), headers, [7; 16], None).bytes).unwrap();
            text.lines()
                .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // what websockets sends for the same URL: base64 of the decoded "user:password"
        let encoded = data_encoding::BASE64.encode(b"alice:s3cret pw");
        assert_eq!(basic("ws://alice:s3cret%20pw@h/", &[]), [format!("Authorization: Basic {encoded}")]);
        assert_eq!(basic("ws://h/", &[]), Vec::<String>::new());
        let own = [("authorization".to_string(), "Bearer t".to_string())];
        assert_eq!(basic("ws://alice:pw@h/", &own), ["authorization: Bearer t"]);
        assert!(!String::from_utf8(request(&Endpoint::parse("ws://a:b@h/").unwrap(), &[], [7; 16], None).bytes)
            .unwrap()
            .contains("Host: a:b@h"));
    }

    #[test]
    fn a_subprotocol_asked_for_may_be_picked() {
        let ep = Endpoint::parse("ws://h/").unwrap();
        let req = request(&ep, &[("Sec-WebSocket-Protocol".into(), "graphql-ws, chat".into())], [7; 16], None);
        assert_eq!(req.protocols, ["graphql-ws", "chat"]);
        let answer = |protocol: &str| {
            let lines = [
                "HTTP/1.1 101 Switching Protocols".to_string(),
                "Upgrade: websocket".into(),
                "Connection: Upgrade".into(),
                format!("Sec-WebSocket-Accept: {}", req.accept),
                protocol.into(),
            ];
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let (a, _) = parse_answer(&head(&lines)).unwrap().unwrap();
            a.check(&req.accept, None, &req.protocols)
        };
        assert_eq!(answer("Sec-WebSocket-Protocol: chat"), Ok(None));
        assert_eq!(answer("X-None: 1"), Ok(None), "the server may pick none");
        assert!(
            matches!(answer("Sec-WebSocket-Protocol: mqtt"), Err(Refusal::NotUpgrade(w)) if w.contains("subprotocol"))
        );
    }

    #[test]
    fn an_answer_is_read_once_its_head_is_complete_and_what_follows_is_data() {
        let accept = accept_for("k");
        let mut bytes = head(&[
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: WebSocket",
            "Connection: keep-alive, Upgrade",
            &format!("Sec-WebSocket-Accept: {accept}"),
        ]);
        let n = bytes.len();
        bytes.extend_from_slice(b"\x81\x02hi");
        assert_eq!(parse_answer(&bytes[..n - 1]).unwrap(), None);
        let (answer, used) = parse_answer(&bytes).unwrap().unwrap();
        assert_eq!(used, n);
        assert_eq!(answer.check(&accept, None, &[]), Ok(None));
        assert!(
            matches!(answer.check("other", None, &[]), Err(Refusal::NotUpgrade(w)) if w.contains("Sec-WebSocket-Accept"))
        );
    }

    #[test]
    fn the_deflate_offer_goes_out_unless_the_application_sends_its_own_extensions() {
        let ep = Endpoint::parse("ws://h/").unwrap();
        let offer = Offer::default();
        let req = request(&ep, &[], [7; 16], Some(&offer));
        let text = String::from_utf8(req.bytes).unwrap();
        assert!(
            text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
            "{text}"
        );
        assert_eq!(req.deflate, Some(offer.clone()));
        let own = [("sec-websocket-extensions".to_string(), "x-custom".to_string())];
        let req = request(&ep, &own, [7; 16], Some(&offer));
        let text = String::from_utf8(req.bytes).unwrap();
        assert!(!text.contains("permessage-deflate") && text.contains("x-custom"), "{text}");
        assert_eq!(req.deflate, None);
        let req = request(&ep, &[], [7; 16], None);
        assert!(!String::from_utf8(req.bytes).unwrap().contains("Extensions"));
    }

    #[test]
    fn the_servers_extension_choice_is_agreed_or_refused_with_its_header() {
        let accept = accept_for("k");
        let answer = |ext: &str| {
            let lines = [
                "HTTP/1.1 101 OK",
                "Upgrade: websocket",
                "Connection: upgrade",
                &format!("Sec-WebSocket-Accept: {accept}"),
                ext,
            ];
            parse_answer(&head(&lines)).unwrap().unwrap().0
        };
        let offer = Offer::default();
        let a = answer("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12");
        assert_eq!(a.check(&accept, Some(&offer), &[]).unwrap().map(|a| a.client_max_window_bits), Some(12));
        // the offer declined: no extension header
        assert_eq!(answer("X-Other: 1").check(&accept, Some(&offer), &[]), Ok(None));
        let bad = answer("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16");
        assert!(
            matches!(bad.check(&accept, Some(&offer), &[]), Err(Refusal::NotUpgrade(w))
                if w.contains("\"permessage-deflate; server_max_window_bits=16\"") && w.contains("is not 8..15")),
            "{:?}",
            bad.check(&accept, Some(&offer), &[])
        );
    }

    #[test]
    fn refusals_say_why() {
        let (a, _) = parse_answer(&head(&["HTTP/1.1 302 Found", "Location: /new"])).unwrap().unwrap();
        assert_eq!(
            a.check("x", None, &[]),
            Err(Refusal::Status { status: 302, reason: "Found".into(), location: Some("/new".into()) })
        );
        let accept = accept_for("k");
        let ok = ["HTTP/1.1 101 OK", "Upgrade: websocket", "Connection: upgrade"];
        let with = |extra: &str| {
            let mut lines = ok.to_vec();
            let a = format!("Sec-WebSocket-Accept: {accept}");
            lines.push(&a);
            lines.push(extra);
            let (a, _) = parse_answer(&head(&lines)).unwrap().unwrap();
            a.check(&accept, None, &[])
        };
        assert!(
            matches!(with("Sec-WebSocket-Extensions: permessage-deflate"), Err(Refusal::NotUpgrade(w)) if w.contains("not offered"))
        );
        assert!(
            matches!(with("Sec-WebSocket-Protocol: chat"), Err(Refusal::NotUpgrade(w)) if w.contains("subprotocol"))
        );
        let (a, _) = parse_answer(&head(&ok[..2])).unwrap().unwrap();
        assert!(matches!(a.check(&accept, None, &[]), Err(Refusal::NotUpgrade(w)) if w.contains("Connection")));
        let a = format!("Sec-WebSocket-Accept: {accept}");
        let (a, _) = parse_answer(&head(&["HTTP/1.0 101 Switching Protocols", ok[1], ok[2], &a])).unwrap().unwrap();
        assert_eq!(
            a.check(&accept, None, &[]),
            Err(Refusal::NotUpgrade("a 101 on HTTP/1.0 (a WebSocket upgrade needs HTTP/1.1)".into()))
        );
        let (a, _) = parse_answer(&head(&["HTTP/1.0 503 Service Unavailable"])).unwrap().unwrap();
        assert!(matches!(a.check(&accept, None, &[]), Err(Refusal::Status { status: 503, .. })), "still a busy server");
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_answer(&vec![b'a'; MAX_ANSWER + 1]).is_err());
    }
}
