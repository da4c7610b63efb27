//! The peer's close frame as it came off the wire. tungstenite replaces a close code it does not allow
//! with its own 1002 "Protocol violation" before handing the frame over (and does so for 1014, bad
//! gateway, which it does not know), so a server's real 1002 "Protocol violation" looked the same as an
//! invalid code, and the invalid code itself was lost. `Tap` sits between the (TLS-decrypted) socket and
//! tungstenite, follows the frame boundaries of what tungstenite reads (`Scanner`, without I/O), and keeps
//! the payload of the first close frame (`CloseSeen`), which the session reads when tungstenite reports
//! the close.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The payload of the first close frame the peer sent (code and reason as sent), once read.
#[derive(Clone, Default)]
pub struct CloseSeen(Arc<OnceLock<Vec<u8>>>);

impl CloseSeen {
    /// The code and reason as the peer sent them; None if no close frame with a code was read.
    pub fn code_and_reason(&self) -> Option<(u16, String)> {
        let p = self.0.get().filter(|p| p.len() >= 2)?;
        Some((u16::from_be_bytes([p[0], p[1]]), String::from_utf8_lossy(&p[2..]).into_owned()))
    }
}

/// Control frames carry at most this much payload (RFC 6455 §5.5); tungstenite refuses longer ones.
const MAX_CONTROL_PAYLOAD: usize = 125;
const END_OF_HEADERS: &[u8; 4] = b"\r\n\r\n";

enum Stage {
    /// The HTTP answer to the upgrade request: `matched` bytes of its blank line seen.
    Http { matched: usize },
    /// A frame header, `have` bytes of it so far.
    Header { buf: [u8; 14], have: usize },
    /// A frame's payload: `left` bytes to skip, or to keep for a close frame.
    Payload { left: u64, close: Option<Vec<u8>> },
    /// The close frame was read: nothing more to follow.
    Done,
}

/// Follows the frames of a server's byte stream, from the start of its HTTP answer.
pub struct Scanner {
    stage: Stage,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner { stage: Stage::Http { matched: 0 } }
    }
}

impl Scanner {
    /// Read `bytes`, the next ones from the peer: the payload of the first close frame, once complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Vec<u8>> {
        while !bytes.is_empty() {
            match &mut self.stage {
                Stage::Done => return None,
                Stage::Http { matched } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    *matched = if b == END_OF_HEADERS[*matched] { *matched + 1 } else { usize::from(b == b'\r') };
                    if *matched == END_OF_HEADERS.len() {
                        self.stage = Stage::Header { buf: [0; 14], have: 0 };
                    }
                }
                Stage::Header { buf, have } => {
                    let needed = header_len(&buf[..*have]);
                    let n = (needed - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == header_len(&buf[..*have]) {
                        let (opcode, len) = (buf[0] & 0x0f, payload_len(&buf[..*have]));
                        let close = (opcode == 0x8).then(|| Vec::with_capacity(MAX_CONTROL_PAYLOAD));
                        self.stage = Stage::Payload { left: len, close };
                    }
                }
                Stage::Payload { left, close } => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                    if let Some(c) = close {
                        let room = MAX_CONTROL_PAYLOAD.saturating_sub(c.len());
                        c.extend_from_slice(&bytes[..n.min(room)]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                }
            }
            if let Stage::Payload { left: 0, close } = &mut self.stage {
                let close = close.take();
                if close.is_some() {
                    self.stage = Stage::Done;
                    return close;
                }
                self.stage = Stage::Header { buf: [0; 14], have: 0 };
            }
        }
        None
    }
}

/// Bytes of a frame header, from what is known of it (2 until its first two bytes are in).
fn header_len(head: &[u8]) -> usize {
    let [_, b1, ..] = head else { return 2 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

fn payload_len(head: &[u8]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().unwrap_or([0; 8])),
        n => u64::from(n),
    }
}

/// A stream whose reads go through a `Scanner`; writes pass through.
pub struct Tap<S> {
    inner: S,
    scanner: Scanner,
    seen: CloseSeen,
}

impl<S> Tap<S> {
    pub fn new(inner: S, seen: CloseSeen) -> Self {
        Tap { inner, scanner: Scanner::default(), seen }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        std::task::ready!(Pin::new(&mut me.inner).poll_read(cx, buf))?;
        if let Some(payload) = me.scanner.feed(&buf.filled()[before..]) {
            let _ = me.seen.0.set(payload);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n @ 126..=65535 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn stream(close: &[u8]) -> Vec<u8> {
        let mut s = ANSWER.to_vec();
        s.extend(frame(0x1, b"hello"));
        s.extend(frame(0x9, b"ping"));
        s.extend(frame(0x2, &vec![0x88; 300]));
        s.extend(frame(0x2, &vec![0x88; 70_000]));
        s.extend(frame(0x8, close));
        s.extend(frame(0x1, b"after"));
        s
    }

    #[test]
    fn the_first_close_frame_is_kept_however_the_bytes_are_split() {
        let mut close = 999u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        let bytes = stream(&close);
        for chunk in [1, 2, 3, 7, 13, 64, 4096, bytes.len()] {
            let mut s = Scanner::default();
            let found: Vec<Vec<u8>> = bytes.chunks(chunk).filter_map(|c| s.feed(c)).collect();
            assert_eq!(found, vec![close.clone()], "chunks of {chunk}");
        }
        let seen = CloseSeen::default();
        let _ = seen.0.set(close);
        assert_eq!(seen.code_and_reason(), Some((999, "bye".into())));
    }

    #[test]
    fn a_close_frame_without_a_code_has_none() {
        let mut s = Scanner::default();
        let got = s.feed(&stream(b""));
        assert_eq!(got, Some(vec![]));
        let seen = CloseSeen::default();
        let _ = seen.0.set(vec![]);
        assert_eq!(seen.code_and_reason(), None);
        // nothing before the end of the HTTP answer is a frame
        let mut s = Scanner::default();
        assert_eq!(s.feed(b"HTTP/1.1 101 OK\r\nX: \x88\x02\x03\xe8\r\n"), None);
        assert_eq!(s.feed(b"\r\n"), None);
        assert_eq!(s.feed(&frame(0x8, &[0x03, 0xea])), Some(vec![0x03, 0xea]));
    }
}
