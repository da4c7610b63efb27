//! Secrets never reach logs, events or reprs: tokens in URL queries and credentials in headers.

/// Query parameters whose values are replaced by `REDACTED` (matched case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "token",
    "auth",
    "authorization",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    "signature",
    "sig",
    "jwt",
];

/// Header names whose values are replaced.
const SECRET_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token"];

pub const REDACTED: &str = "REDACTED";

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Redact secret query parameters and `user:password@` userinfo anywhere in `text` (a URL, or a message
/// that contains URLs). Works on arbitrary text: every `name=value` pair whose name is secret and which
/// follows `?`, `&`, `;` or whitespace has its value (up to `&`, `#`, whitespace, quote) replaced.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut seg_start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'=' {
            // find the parameter name: back to a delimiter
            let mut j = i;
            while j > seg_start {
                let c = bytes[j - 1];
                if c == b'?'
                    || c == b'&'
                    || c == b';'
                    || c.is_ascii_whitespace()
                    || c == b'"'
                    || c == b'\''
                    || c == b','
                    || c == b'('
                {
                    break;
                }
                j -= 1;
            }
            let name = &text[j..i];
            if is_secret_param(name) {
                out.push_str(&text[seg_start..=i]);
                let mut k = i + 1;
                while k < bytes.len() {
                    let c = bytes[k];
                    if c == b'&'
                        || c == b'#'
                        || c.is_ascii_whitespace()
                        || c == b'"'
                        || c == b'\''
                        || c == b','
                        || c == b')'
                    {
                        break;
                    }
                    k += 1;
                }
                if k > i + 1 {
                    out.push_str(REDACTED);
                }
                seg_start = k;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[seg_start..]);
    redact_userinfo(&out)
}

/// `scheme://user:pass@host` -> `scheme://user:REDACTED@host`
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(REDACTED),
            }
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A header value as it may appear in logs.
pub fn redact_header(name: &str, value: &str) -> String {
    if is_secret_header(name) {
        // keep the scheme ("Bearer") so logs still say what kind of credential it was
        match value.split_once(' ') {
            Some((scheme, _)) if !scheme.is_empty() && scheme.len() < 16 => format!("{scheme} {REDACTED}"),
            _ => REDACTED.to_string(),
        }
    } else {
        redact_url(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_queries_are_redacted() {
        assert_eq!(
            redact_url("wss://lk.example/rtc?access_token=eyJhbGci.abc.def&auto_subscribe=1"),
            "wss://lk.example/rtc?access_token=REDACTED&auto_subscribe=1"
        );
        assert_eq!(redact_url("ws://h/x?a=1&token=s3cret#frag"), "ws://h/x?a=1&token=REDACTED#frag");
        assert_eq!(redact_url("ws://h/x?TOKEN=abc"), "ws://h/x?TOKEN=REDACTED");
        assert_eq!(redact_url("ws://h/x?mytoken=abc"), "ws://h/x?mytoken=abc");
        assert_eq!(redact_url("ws://h/x?token="), "ws://h/x?token=");
    }

    #[test]
    fn tokens_inside_messages_are_redacted() {
        let msg = "failed to connect to ws://h:1/rtc?access_token=abc.def (HTTP 401) token=zzz";
        let r = redact_url(msg);
        assert!(!r.contains("abc.def") && !r.contains("zzz"), "{r}");
        assert!(r.contains("(HTTP 401)"), "{r}");
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(redact_url("wss://bob:hunter2@host/p?x=1"), "wss://bob:REDACTED@host/p?x=1");
        assert_eq!(redact_url("wss://tok@host/p"), "wss://REDACTED@host/p");
        assert_eq!(redact_url("plain text, no url"), "plain text, no url");
    }

    #[test]
    fn headers() {
        assert_eq!(redact_header("Authorization", "Bearer abc.def"), "Bearer REDACTED");
        assert_eq!(redact_header("x-api-key", "k"), "REDACTED");
        assert_eq!(redact_header("User-Agent", "tether"), "tether");
    }

    #[test]
    fn non_ascii_is_safe() {
        let s = "ws://h/é?token=ü&x=ß";
        assert_eq!(redact_url(s), "ws://h/é?token=REDACTED&x=ß");
    }
}
