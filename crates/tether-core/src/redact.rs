//! Secrets never reach logs, events or reprs: tokens in URL queries and credentials in headers.

use std::sync::RwLock;

/// Query parameters whose values are replaced by `REDACTED` (matched case-insensitively, after
/// percent-decoding the name, so `access%5Ftoken` is caught too).
const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "auth",
    "authorization",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "signature",
    "sig",
    "jwt",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "cookie",
];

/// Header names whose values are replaced, also where they appear as `Name: value` inside a message.
const SECRET_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token"];

/// Names added by the application (`tether.add_redacted_names`), lowercased; applied to query
/// parameters and headers alike, process-wide.
static EXTRA_NAMES: RwLock<Vec<String>> = RwLock::new(Vec::new());

pub const REDACTED: &str = "REDACTED";

/// Also redact query parameters and headers called `name` (case-insensitive), from now on.
pub fn add_secret_name(name: &str) -> Result<(), String> {
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b'=' || b == b':' || b == b'&') {
        return Err(format!("{name:?} is not a usable parameter or header name"));
    }
    let mut extra = EXTRA_NAMES.write().unwrap_or_else(|p| p.into_inner());
    if !extra.contains(&name) {
        extra.push(name);
    }
    Ok(())
}

fn is_extra(name: &str) -> bool {
    EXTRA_NAMES.read().unwrap_or_else(|p| p.into_inner()).iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// `access%5Ftoken` -> `access_token`; malformed escapes are kept as they are.
fn percent_decode(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains('%') {
        return name.into();
    }
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// A secret parameter name, or a credential header's name used as one (`?api-key=`, as Azure's realtime
/// WebSocket takes it from browsers).
/// Endings that make a parameter secret whatever comes before them: services name their own tokens
/// (livekit's hosted agents authenticate with `worker_token`, others with `session_token`,
/// `sessionToken`, `stream_api_key`), and a list of full names cannot know them all.
const SECRET_SUFFIXES: &[&str] = &["token", "_key", "-key", "secret", "password", "signature", "credential"];

fn is_secret_param(name: &str) -> bool {
    let name = percent_decode(name);
    let lower = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().chain(SECRET_HEADERS).any(|p| *p == lower)
        || SECRET_SUFFIXES.iter().any(|s| lower.ends_with(s))
        || is_extra(&lower)
}

pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|p| p.eq_ignore_ascii_case(name)) || is_extra(name)
}

/// Redact secret query parameters and `user:password@` userinfo anywhere in `text` (a URL, or a message
/// that contains URLs). Works on arbitrary text: every `name=value` pair whose name is secret and which
/// follows `?`, `&`, `;`, `#` (a token in a fragment, as OAuth's implicit flow hands it out) or
/// whitespace has its value (up to `&`, `#`, whitespace, quote) replaced.
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
                    || c == b'#'
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
    redact_header_lines(&redact_userinfo(&out))
}

/// `Cookie: a=b; c=d` or `authorization: Bearer x` inside a message: the value is replaced up to the
/// end of the line or a quote (a scheme word such as "Bearer" is kept).
fn redact_header_lines(text: &str) -> String {
    let is_name = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b':' || bytes.get(i + 1) == Some(&b'/') {
            i += 1;
            continue;
        }
        // a quoted name, as in a dict repr: 'authorization': 'Bearer x'
        let name_end = if i > 0 && matches!(bytes[i - 1], b'"' | b'\'') { i - 1 } else { i };
        let mut j = name_end;
        while j > 0 && is_name(bytes[j - 1]) {
            j -= 1;
        }
        if j == name_end || !is_secret_header(&text[j..name_end]) {
            i += 1;
            continue;
        }
        let mut start = i + 1;
        while start < bytes.len() && bytes[start] == b' ' {
            start += 1;
        }
        if start < bytes.len() && matches!(bytes[start], b'"' | b'\'') {
            start += 1;
        }
        let mut end = start;
        while end < bytes.len() && !matches!(bytes[end], b'\n' | b'\r' | b'"' | b'\'' | b'}') {
            end += 1;
        }
        if end > start {
            out.push_str(&text[copied..start]);
            out.push_str(&redact_header(&text[j..name_end], text[start..end].trim_end()));
            copied = end;
        }
        i = end.max(i + 1);
    }
    out.push_str(&text[copied..]);
    out
}

/// `scheme://user:pass@host` -> `scheme://user:REDACTED@host`. A password with an unencoded `/`, `?` or
/// `#` (`user:pa/ss@host`) ends the authority early as a URL parser reads it; what follows the colon is
/// then no port (not digits), and the `@` further on in the same word ends the userinfo.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let word = tail.find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '<' || c == '>');
        let word = &tail[..word.unwrap_or(tail.len())];
        let mut end = word.find(['/', '?', '#']).unwrap_or(word.len());
        if !word[..end].contains('@') {
            let no_port = word[..end].split_once(':').is_some_and(|(_, p)| !p.bytes().all(|b| b.is_ascii_digit()));
            if let Some(at) = word.rfind('@').filter(|_| no_port) {
                end = word[at..].find(['/', '?', '#']).map_or(word.len(), |i| at + i);
            }
        }
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

/// `redact_url` for a URL that did not parse, shown in the error that says so: its parts may not be
/// where a parser puts them (a password with a space in it), so everything before an `@` after the
/// scheme is redacted.
pub fn redact_unparsed_url(text: &str) -> String {
    let text = redact_url(text);
    match (text.find("://"), text.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => format!("{}{REDACTED}{}", &text[..s + 3], &text[at..]),
        _ => text,
    }
}

/// A header value as it may appear in logs.
pub fn redact_header(name: &str, value: &str) -> String {
    if is_secret_header(name) {
        // keep the scheme ("Bearer") so logs still say what kind of credential it was
        match value.split_once(' ') {
            Some((scheme, _))
                if !scheme.is_empty() && scheme.len() < 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic()) =>
            {
                format!("{scheme} {REDACTED}")
            }
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
        assert_eq!(redact_url("ws://h/x?mytoken=abc"), "ws://h/x?mytoken=REDACTED");
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
    fn names_ending_like_a_secret() {
        let url = "wss://h/agent?worker_token=wt1&sessionToken=st2&stream_api_key=k3&monkey=m&tokens=t";
        assert_eq!(
            redact_url(url),
            "wss://h/agent?worker_token=REDACTED&sessionToken=REDACTED&stream_api_key=REDACTED&monkey=m&tokens=t"
        );
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(redact_url("wss://bob:hunter2@host/p?x=1"), "wss://bob:REDACTED@host/p?x=1");
        assert_eq!(redact_url("wss://tok@host/p"), "wss://REDACTED@host/p");
        assert_eq!(redact_url("plain text, no url"), "plain text, no url");
    }

    #[test]
    fn tokens_in_fragments_and_credential_headers_as_parameters() {
        assert_eq!(redact_url("ws://h/cb#access_token=S3CRET"), "ws://h/cb#access_token=REDACTED");
        assert_eq!(redact_url("ws://h/cb?x=1#access_token=S3CRET&s=2"), "ws://h/cb?x=1#access_token=REDACTED&s=2");
        assert_eq!(redact_url("ws://h/?token=a#key=S3CRET"), "ws://h/?token=REDACTED#key=REDACTED");
        for name in ["api-key", "X-Api-Key", "x-auth-token"] {
            assert_eq!(redact_url(&format!("wss://h/rt?v=1&{name}=S3CRET")), format!("wss://h/rt?v=1&{name}=REDACTED"));
        }
    }

    #[test]
    fn a_password_with_an_unencoded_delimiter() {
        for sep in ["/", "?", "#"] {
            let r = redact_url(&format!("ws://bob:S3CRET{sep}x@127.0.0.1:9/p?a=1"));
            assert_eq!(r, "ws://bob:REDACTED@127.0.0.1:9/p?a=1");
        }
        // a port, then a path with an @ in it: no userinfo
        assert_eq!(redact_url("ws://h:8080/users/@me"), "ws://h:8080/users/@me");
        assert_eq!(redact_url("ws://h/users/@me"), "ws://h/users/@me");
        // a URL that did not parse (a space in the password) shows nothing before its @
        assert_eq!(redact_unparsed_url("ws://bob:S3CRET x@127.0.0.1:9/p"), "ws://REDACTED@127.0.0.1:9/p");
        assert_eq!(redact_unparsed_url("ws://h:99999/"), "ws://h:99999/");
    }

    #[test]
    fn headers() {
        assert_eq!(redact_header("Authorization", "Bearer abc.def"), "Bearer REDACTED");
        assert_eq!(redact_header("x-api-key", "k"), "REDACTED");
        assert_eq!(redact_header("User-Agent", "tether"), "tether");
    }

    #[test]
    fn more_secret_names_and_encodings() {
        for name in [
            "access%5Ftoken",
            "access%5ftoken",
            "refresh_token",
            "id_token",
            "client_secret",
            "api_key",
            "password",
            "pwd",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "sig",
            "signature",
        ] {
            let r = redact_url(&format!("wss://h/p?a=1&{name}=S3CRET&b=2"));
            assert_eq!(r, format!("wss://h/p?a=1&{name}=REDACTED&b=2"));
        }
        assert_eq!(redact_url("ws://h/?x%5=1"), "ws://h/?x%5=1");
    }

    #[test]
    fn header_lines_inside_messages() {
        let r = redact_url("rejected: Set-Cookie: sid=abc; Path=/\nCookie: a=b; c=d\nServer: x");
        assert_eq!(r, "rejected: Set-Cookie: REDACTED\nCookie: REDACTED\nServer: x");
        assert_eq!(redact_url("{'authorization': 'Bearer abc'}"), "{'authorization': 'Bearer REDACTED'}");
        assert_eq!(redact_url("see https://h:1/x and ratio 1:2"), "see https://h:1/x and ratio 1:2");
    }

    #[test]
    fn names_added_by_the_application() {
        assert_eq!(redact_url("ws://h/?my_custom_pin=v"), "ws://h/?my_custom_pin=v");
        add_secret_name("My_Custom_Pin").unwrap();
        assert_eq!(redact_url("ws://h/?my_custom_pin=v"), "ws://h/?my_custom_pin=REDACTED");
        assert_eq!(redact_header("my_custom_pin", "v"), "REDACTED");
        assert!(add_secret_name("a b").is_err());
    }

    #[test]
    fn non_ascii_is_safe() {
        let s = "ws://h/é?token=ü&x=ß";
        assert_eq!(redact_url(s), "ws://h/é?token=REDACTED&x=ß");
    }
}
