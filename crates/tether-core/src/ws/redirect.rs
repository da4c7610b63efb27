//! HTTP redirects of the WebSocket handshake, followed the way websockets follows them: a 3xx answer
//! with a `Location` leads to a new ws:// or wss:// URL, at most `MAX_REDIRECTS` times per attempt, and
//! never from wss:// down to ws://. Credentials stay with the origin they were given for: once a
//! redirect leaves it, the secret headers (`Authorization`, `Cookie`, API keys, ... as
//! `redact::is_secret_header` knows them) are dropped, and userinfo is never copied into another
//! authority (a relative `Location` keeps the current authority, an absolute one brings its own).
//!
//! Pure functions over strings: the front end does the I/O.

use http::Uri;

use super::upgrade::{is_tls, port_of};
use crate::redact::{is_secret_header, redact_url};

/// Redirects followed within one attempt before it fails, as in websockets.
pub const MAX_REDIRECTS: usize = 10;

/// Statuses whose `Location` is followed (websockets' list: 300 with a `Location` names the server's
/// preferred choice).
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 300 | 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect leads: the resolved URL, and whether it leaves the origin of `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub url: String,
    pub cross_origin: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Origin {
    secure: bool,
    host: String,
    port: u16,
}

fn origin(url: &str) -> Result<Origin, String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL {}: {e}", redact_url(url)))?;
    let secure = is_tls(&uri).ok_or_else(|| {
        format!(
            "redirect to {} is not a WebSocket URL (scheme {:?}; only ws:// and wss:// are followed)",
            redact_url(url),
            uri.scheme_str().unwrap_or("")
        )
    })?;
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("no host in {}", redact_url(url)))?;
    let port = port_of(&uri).map_err(|e| format!("{e} in {}", redact_url(url)))?;
    Ok(Origin { secure, host: host.to_ascii_lowercase(), port })
}

/// The URL a `Location` answer to a request for `from` leads to, checked: a ws:// or wss:// URL, not
/// a downgrade from wss://. `Err` says why it is not followed (redacted).
pub fn follow(from: &str, location: &str) -> Result<Hop, String> {
    let to = resolve(from, location.trim())?;
    let (a, b) = (origin(from)?, origin(&to)?);
    if a.secure && !b.secure {
        return Err(format!("refused to follow a redirect from wss:// down to {}", redact_url(&to)));
    }
    Ok(Hop { cross_origin: a != b, url: to })
}

/// Headers to send to the next hop: all of them within the origin, none that carries a credential
/// across it.
pub fn headers_for(hop: &Hop, headers: &mut Vec<(String, String)>) {
    if hop.cross_origin {
        headers.retain(|(name, _)| !is_secret_header(name));
    }
}

/// RFC 3986 §5.2: `reference` resolved against the absolute URL `base`; the fragment is dropped (a
/// WebSocket request has none).
fn resolve(base: &str, reference: &str) -> Result<String, String> {
    let reference = reference.split('#').next().unwrap_or("");
    let base = base.split('#').next().unwrap_or("");
    let (scheme, rest) = split_scheme(base).ok_or_else(|| format!("invalid URL {}", redact_url(base)))?;
    let rest = rest.strip_prefix("//").ok_or_else(|| format!("invalid URL {}", redact_url(base)))?;
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(auth_end);
    let (base_path, base_query) = match path_query.find('?') {
        Some(i) => (&path_query[..i], Some(&path_query[i..])),
        None => (path_query, None),
    };

    if let Some((s, r)) = split_scheme(reference) {
        // without an authority it is no WebSocket URL: `follow` says so when it parses it
        return Ok(if r.starts_with("//") { join_authority(s, r) } else { reference.to_string() });
    }
    if reference.starts_with("//") {
        return Ok(join_authority(scheme, reference));
    }
    let (path, query) = split_query(reference);
    let target_path = if path.is_empty() {
        base_path.to_string()
    } else if path.starts_with('/') {
        remove_dot_segments(path)
    } else {
        // merge: the reference replaces the last segment of the base path
        let dir = match base_path.rfind('/') {
            Some(i) => &base_path[..=i],
            None => "/",
        };
        remove_dot_segments(&format!("{dir}{path}"))
    };
    let query = if path.is_empty() && query.is_empty() { base_query.unwrap_or("") } else { query };
    let target_path = if target_path.is_empty() { "/".to_string() } else { target_path };
    Ok(format!("{scheme}://{authority}{target_path}{query}"))
}

/// `scheme:` of an absolute reference (RFC 3986 §3.1), and what follows the colon.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .then(|| (scheme, &s[colon + 1..]))
}

fn split_query(s: &str) -> (&str, &str) {
    match s.find('?') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// `scheme` + `//authority/path?query`, with the path's dot segments removed.
fn join_authority(scheme: &str, net_path: &str) -> String {
    let rest = &net_path[2..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(auth_end);
    let (path, query) = split_query(path_query);
    let path = if path.is_empty() { "/".to_string() } else { remove_dot_segments(path) };
    format!("{}://{authority}{path}{query}", scheme.to_ascii_lowercase())
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                if out.len() > usize::from(absolute) {
                    out.pop();
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut joined = out.join("/");
    if absolute && !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    if trailing_slash && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(from: &str, location: &str) -> String {
        follow(from, location).unwrap().url
    }

    #[test]
    fn locations_resolve_as_rfc_3986_says() {
        let base = "ws://h:8000/a/b/c?q=1";
        assert_eq!(to(base, "ws://other/x"), "ws://other/x");
        assert_eq!(to(base, "wss://other:9/x?y=2#frag"), "wss://other:9/x?y=2");
        assert_eq!(to(base, "//other/x"), "ws://other/x");
        assert_eq!(to(base, "/x/./y/../z"), "ws://h:8000/x/z");
        assert_eq!(to(base, "d"), "ws://h:8000/a/b/d");
        assert_eq!(to(base, "../d?r=3"), "ws://h:8000/a/d?r=3");
        assert_eq!(to(base, "?r=3"), "ws://h:8000/a/b/c?r=3");
        assert_eq!(to(base, ""), "ws://h:8000/a/b/c?q=1");
        assert_eq!(to("ws://h", "x"), "ws://h/x");
        assert_eq!(to("ws://h/", "../../x"), "ws://h/x");
        assert_eq!(to("ws://h/a/", "."), "ws://h/a/");
    }

    #[test]
    fn the_origin_is_scheme_host_and_port() {
        let same = |from: &str, loc: &str| !follow(from, loc).unwrap().cross_origin;
        assert!(same("ws://h/a", "/b"));
        assert!(same("ws://h/a", "ws://H:80/b"), "default port and host case");
        assert!(!same("ws://h/a", "ws://h:81/b"));
        assert!(!same("ws://h/a", "ws://g/a"));
        assert!(!same("ws://h/a", "wss://h/a"), "an upgrade to TLS is another origin");
        assert!(same("ws://h/a", "WS://h/b"), "schemes are case-insensitive");
        assert!(follow("WSS://h/a", "ws://h/a").unwrap_err().contains("down to"), "WSS:// is wss://");
    }

    #[test]
    fn userinfo_stays_with_its_authority() {
        assert_eq!(to("ws://u:pw@h/a", "/b"), "ws://u:pw@h/b");
        let hop = follow("ws://u:pw@h/a", "ws://g/b").unwrap();
        assert_eq!(hop.url, "ws://g/b");
        assert!(hop.cross_origin);
    }

    #[test]
    fn refused_redirects_say_why_without_secrets() {
        let e = follow("wss://h/a", "ws://h/a?token=SECRET").unwrap_err();
        assert!(e.contains("wss:// down to ws://h/a"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = follow("ws://h/a", "https://h/a").unwrap_err();
        assert!(e.contains("not a WebSocket URL"), "{e}");
        assert!(follow("ws://h/a", "ws://h:99999/").unwrap_err().contains("not a number in 1..65535"));
    }

    #[test]
    fn credentials_are_dropped_across_origins_only() {
        let all = || {
            vec![
                ("Authorization".to_string(), "Bearer t".to_string()),
                ("Cookie".to_string(), "s=1".to_string()),
                ("X-Api-Key".to_string(), "k".to_string()),
                ("User-Agent".to_string(), "me".to_string()),
            ]
        };
        let mut h = all();
        headers_for(&follow("ws://h/a", "/b").unwrap(), &mut h);
        assert_eq!(h, all());
        headers_for(&follow("ws://h/a", "ws://g/b").unwrap(), &mut h);
        assert_eq!(h, vec![("User-Agent".to_string(), "me".to_string())]);
    }

    #[test]
    fn redirect_statuses_are_websockets_list() {
        let followed: Vec<u16> = (100..600).filter(|&s| is_redirect(s)).collect();
        assert_eq!(followed, [300, 301, 302, 303, 307, 308]);
    }
}
