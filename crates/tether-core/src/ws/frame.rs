//! WebSocket framing (RFC 6455 §5) for a client, without I/O: bytes from the server go into
//! [`Decoder::feed`], which hands over each message and control frame, borrowing its payload from the
//! input where the frame arrived whole (no copy before the bindings build the Python object); frames
//! for the server are written by [`write_frame`] (masked, as a client must) into a buffer the caller
//! sized with [`frame_len`].
//!
//! The decoder enforces what a server may send, and names the close code a violation is answered with
//! (RFC 6455 §7.4.1): 1002 for a masked frame, a reserved opcode or reserved bit, a fragmented or
//! oversized (over 125 bytes) control frame, a continuation without a message or a message interrupting
//! another, and a close code that may not appear on the wire (reported by its number); 1007 for text
//! that is not UTF-8 (checked fragment by fragment, so a fragmented message fails at the first bad
//! byte); 1009 for a message over `max_message_size` (checked at the frame header, before its payload is
//! buffered).
//!
//! Memory: a frame split across reads is kept in a buffer allocated only then, and a fragmented message
//! in one allocated only for it; both are released once they are done if they grew past `keep` bytes,
//! so an idle connection holds no read buffer.
//!
//! Extensions: without one every reserved bit is a violation. With permessage-deflate (RFC 7692,
//! [`Decoder::inflating`]) RSV1 marks the first frame of a compressed message (on a continuation or a
//! control frame it is a violation, 1002); each of its frames is inflated as it arrives, and the
//! inflated size counts against `max_message_size` while inflating, so a deflate bomb is a 1009 once
//! the limit is passed, not memory growth. Data that does not inflate is a 1002. The writer compresses
//! a message and sets RSV1 through [`write_frame`]'s `rsv`.

use std::ops::ControlFlow;

use super::deflate::{InflateError, Inflater};

/// The largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header a server sends: 2 bytes, then a 64-bit length (no mask).
const MAX_SERVER_HEADER: usize = 10;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes tether sends.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A message or control frame from the server. Payloads borrow from the input (or from the decoder's
/// reassembly buffer for a fragmented message): build what must outlast the call inside it.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A close frame: its code and reason, or None for a close frame without a body (no status code).
    Close(Option<(u16, &'a str)>),
}

/// Why the server's bytes cannot be read. The connection is failed with [`Violation::code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Protocol(String),
    InvalidUtf8,
    /// A message (or the frame announcing it) larger than `max`.
    TooBig {
        size: u64,
        max: usize,
    },
    /// A close frame whose code may not be sent on the wire (RFC 6455 §7.4); answered with 1002.
    InvalidCloseCode(u16),
    /// A compressed message that inflates past `max` (its size is not known: inflating stopped there).
    InflatedTooBig {
        max: usize,
    },
}

impl Violation {
    /// The close code that fails the connection.
    pub fn code(&self) -> u16 {
        match self {
            Violation::Protocol(_) | Violation::InvalidCloseCode(_) => CLOSE_PROTOCOL_ERROR,
            Violation::InvalidUtf8 => CLOSE_INVALID_DATA,
            Violation::TooBig { .. } | Violation::InflatedTooBig { .. } => CLOSE_TOO_BIG,
        }
    }

    /// The reason sent in the close frame (short, no data from the peer).
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::Protocol(_) | Violation::InvalidCloseCode(_) => "protocol error",
            Violation::InvalidUtf8 => "invalid UTF-8",
            Violation::TooBig { .. } | Violation::InflatedTooBig { .. } => "message too big",
        }
    }
}

/// RFC 6455 §7.4: the codes an endpoint may put on the wire (1004-1006 and 1015 are reserved for
/// local use, 1016-2999 for future RFCs).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    len: u64,
    /// Header bytes (mask key included).
    size: usize,
}

/// The frame header at the start of `buf`, or None when more bytes are needed to know it.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, Violation> {
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    let masked = b1 & 0x80 != 0;
    let (len, mut size) = match b1 & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(Violation::Protocol("a frame length with its most significant bit set".into()));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if masked {
        size += 4;
        if buf.len() < size {
            return Ok(None);
        }
    }
    Ok(Some(Header { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, opcode: b0 & 0x0F, masked, len, size }))
}

/// A fragmented message being reassembled.
struct Fragments {
    text: bool,
    /// Its first frame had RSV1: `data` holds what its frames inflated to so far.
    compressed: bool,
    data: Vec<u8>,
    /// The prefix of `data` known to be UTF-8 (text only): each fragment is checked as it arrives.
    valid: usize,
}

/// Whether what `data[*valid..]` adds is UTF-8 so far (a code point cut at the end may be completed by
/// the next fragment); advances `valid`.
fn validate_more(data: &[u8], valid: &mut usize) -> Result<(), Violation> {
    match std::str::from_utf8(&data[*valid..]) {
        Ok(_) => {
            *valid = data.len();
            Ok(())
        }
        // an incomplete sequence at the end: wait for the rest
        Err(e) if e.error_len().is_none() => {
            *valid += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(Violation::InvalidUtf8),
    }
}

/// Whether `feed` used all its input or stopped because the callback asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    All,
    /// The callback returned `Break`: the rest of the input is kept, and `feed(&[])` goes on with it.
    Stopped,
}

pub struct Decoder {
    max_message_size: usize,
    /// Capacity kept by the buffers between uses (larger ones are released when done).
    keep: usize,
    /// The start of a frame that has not arrived whole, and input left after a stop.
    partial: Vec<u8>,
    frag: Option<Fragments>,
    /// A close frame was read: nothing after it is a frame.
    closed: bool,
    /// permessage-deflate was negotiated: messages with RSV1 are inflated by it.
    inflater: Option<Inflater>,
    /// What a single-frame compressed message inflated to (kept between messages up to `keep` bytes).
    inflated: Vec<u8>,
}

impl Decoder {
    pub fn new(max_message_size: usize, keep: usize) -> Self {
        Decoder {
            max_message_size,
            keep,
            partial: Vec::new(),
            frag: None,
            closed: false,
            inflater: None,
            inflated: Vec::new(),
        }
    }

    /// permessage-deflate is on: compressed messages (RSV1) are inflated with `inflater`.
    pub fn inflating(mut self, inflater: Inflater) -> Self {
        self.inflater = Some(inflater);
        self
    }

    /// Bytes held for a frame (or input) not handled yet.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Decode `data` (and whatever an earlier call kept), handing each message and control frame to
    /// `on` in order. `on` returning `Break` stops here: the rest is kept for the next call (`feed(&[])`
    /// to go on without new input). After a violation the connection is to be failed: call no more.
    pub fn feed<F>(&mut self, data: &[u8], on: &mut F) -> Result<Fed, Violation>
    where
        F: FnMut(Inbound<'_>) -> ControlFlow<()>,
    {
        let mut data = data;
        while !self.partial.is_empty() && !self.closed {
            // complete the frame begun in `partial`: add only what it needs
            let need = match parse_header(&self.partial)? {
                None => MAX_SERVER_HEADER + 4 - self.partial.len().min(MAX_SERVER_HEADER + 4),
                Some(h) => {
                    let total = self.check(&h)?;
                    self.partial.reserve(total.saturating_sub(self.partial.len()));
                    total.saturating_sub(self.partial.len())
                }
            };
            let take = need.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            let Some(h) = parse_header(&self.partial)? else {
                if data.is_empty() {
                    return Ok(Fed::All);
                }
                continue;
            };
            let total = self.check(&h)?;
            if self.partial.len() < total {
                if data.is_empty() {
                    return Ok(Fed::All);
                }
                continue;
            }
            let mut buf = std::mem::take(&mut self.partial);
            let flow = self.frame(&h, &buf[h.size..total], on)?;
            // input kept after a stop sits behind the frame
            buf.drain(..total);
            if !buf.is_empty() || buf.capacity() <= self.keep {
                self.partial = buf;
            }
            if flow.is_break() {
                self.partial.extend_from_slice(data);
                return Ok(Fed::Stopped);
            }
        }
        while !data.is_empty() && !self.closed {
            let Some(h) = parse_header(data)? else { break };
            let total = self.check(&h)?;
            if data.len() < total {
                self.partial.reserve(total);
                break;
            }
            let flow = self.frame(&h, &data[h.size..total], on)?;
            data = &data[total..];
            if flow.is_break() {
                self.partial.extend_from_slice(data);
                return Ok(if data.is_empty() { Fed::All } else { Fed::Stopped });
            }
        }
        if self.closed {
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(data);
        }
        Ok(Fed::All)
    }

    /// A header's violations, found before its payload is waited for; the frame's total length.
    fn check(&self, h: &Header) -> Result<usize, Violation> {
        if h.masked {
            return Err(Violation::Protocol("the server sent a masked frame".into()));
        }
        if h.rsv != 0 {
            self.check_reserved_bits(h)?;
        }
        match h.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !h.fin {
                    return Err(Violation::Protocol("a fragmented control frame".into()));
                }
                if h.len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(Violation::Protocol(format!("a control frame of {} bytes (over 125)", h.len)));
                }
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                // a compressed message's inflated size is checked while inflating: its frames are
                // bounded one by one, as they are never buffered together
                let before = match &self.frag {
                    Some(f) if h.opcode == OP_CONTINUATION && !f.compressed => f.data.len(),
                    _ => 0,
                };
                let size = before as u64 + h.len;
                if size > self.max_message_size as u64 {
                    return Err(Violation::TooBig { size, max: self.max_message_size });
                }
            }
            op => return Err(Violation::Protocol(format!("reserved opcode {op:#x}"))),
        }
        // within max_message_size (data) or 125 (control), so it fits in usize
        Ok(h.size + h.len as usize)
    }

    /// Reserved bits a frame may carry: RSV1 on the first frame of a data message once
    /// permessage-deflate is negotiated, nothing else.
    fn check_reserved_bits(&self, h: &Header) -> Result<(), Violation> {
        let why = match (h.rsv, self.inflater.is_some(), h.opcode) {
            (0b100, true, OP_TEXT | OP_BINARY) => return Ok(()),
            (0b100, true, OP_CONTINUATION) => {
                "RSV1 on a continuation frame (only a message's first frame may carry it)"
            }
            (0b100, true, _) => "RSV1 on a control frame (control frames are never compressed)",
            (0b100, false, _) => "RSV1 set but permessage-deflate was not negotiated",
            _ => "reserved bits set without a negotiated extension",
        };
        Err(Violation::Protocol(format!("{why}: {:#05b}", h.rsv)))
    }

    /// Inflate one frame of a compressed message onto `out`, within `max_message_size`.
    fn inflate(
        inflater: &mut Option<Inflater>,
        max: usize,
        payload: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Violation> {
        // `check_reserved_bits` let RSV1 through only with an inflater
        let Some(inflater) = inflater.as_mut() else { unreachable!("RSV1 without permessage-deflate") };
        inflater.inflate(payload, last, out, max).map_err(|e| match e {
            InflateError::TooBig { .. } => Violation::InflatedTooBig { max },
            InflateError::Corrupt(why) => {
                Violation::Protocol(format!("a compressed message that does not inflate ({why})"))
            }
        })
    }

    fn frame<F>(&mut self, h: &Header, payload: &[u8], on: &mut F) -> Result<ControlFlow<()>, Violation>
    where
        F: FnMut(Inbound<'_>) -> ControlFlow<()>,
    {
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                if self.frag.is_some() {
                    return Err(Violation::Protocol("a new message began before the fragmented one ended".into()));
                }
                let text = h.opcode == OP_TEXT;
                let compressed = h.rsv != 0;
                if h.fin && compressed {
                    let mut out = std::mem::take(&mut self.inflated);
                    out.clear();
                    let r = Self::inflate(&mut self.inflater, self.max_message_size, payload, true, &mut out)
                        .and_then(|()| self.complete(text, &out, on));
                    if out.capacity() <= self.keep {
                        self.inflated = out;
                    }
                    return r;
                }
                if h.fin {
                    return self.complete(text, payload, on);
                }
                let data = if compressed {
                    let mut out = Vec::new();
                    Self::inflate(&mut self.inflater, self.max_message_size, payload, false, &mut out)?;
                    out
                } else {
                    payload.to_vec()
                };
                let mut f = Fragments { text, compressed, data, valid: 0 };
                if text {
                    validate_more(&f.data, &mut f.valid)?;
                }
                self.frag = Some(f);
                Ok(ControlFlow::Continue(()))
            }
            OP_CONTINUATION => {
                let Some(f) = self.frag.as_mut() else {
                    return Err(Violation::Protocol("a continuation frame without a message to continue".into()));
                };
                if f.compressed {
                    Self::inflate(&mut self.inflater, self.max_message_size, payload, h.fin, &mut f.data)?;
                } else {
                    f.data.extend_from_slice(payload);
                }
                if f.text {
                    validate_more(&f.data, &mut f.valid)?;
                }
                if !h.fin {
                    return Ok(ControlFlow::Continue(()));
                }
                let Some(f) = self.frag.take() else { unreachable!("checked above") };
                if f.text && f.valid != f.data.len() {
                    return Err(Violation::InvalidUtf8);
                }
                // validated fragment by fragment already
                Ok(if f.text {
                    on(Inbound::Text(std::str::from_utf8(&f.data).map_err(|_| Violation::InvalidUtf8)?))
                } else {
                    on(Inbound::Binary(&f.data))
                })
            }
            OP_PING => Ok(on(Inbound::Ping(payload))),
            OP_PONG => Ok(on(Inbound::Pong(payload))),
            OP_CLOSE => {
                self.closed = true;
                self.partial = Vec::new();
                self.frag = None;
                match payload {
                    [] => Ok(on(Inbound::Close(None))),
                    [_] => Err(Violation::Protocol("a close frame with a 1-byte body".into())),
                    [a, b, reason @ ..] => {
                        let code = u16::from_be_bytes([*a, *b]);
                        if !close_code_allowed(code) {
                            return Err(Violation::InvalidCloseCode(code));
                        }
                        let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
                        Ok(on(Inbound::Close(Some((code, reason)))))
                    }
                }
            }
            _ => unreachable!("`check` refused other opcodes"),
        }
    }

    /// A whole message (inflated if it was compressed): validated and handed over.
    fn complete<F>(&self, text: bool, payload: &[u8], on: &mut F) -> Result<ControlFlow<()>, Violation>
    where
        F: FnMut(Inbound<'_>) -> ControlFlow<()>,
    {
        Ok(if text {
            on(Inbound::Text(std::str::from_utf8(payload).map_err(|_| Violation::InvalidUtf8)?))
        } else {
            on(Inbound::Binary(payload))
        })
    }
}

/// Bytes [`write_frame`] writes for a payload of `len` bytes.
pub fn frame_len(len: usize) -> usize {
    let header = match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    header + 4 + len
}

/// Write one final, masked frame at the start of `out` (at least `frame_len(payload.len())` bytes);
/// returns the bytes written. `rsv` are the reserved bits an extension sets (0 without one).
pub fn write_frame(out: &mut [u8], opcode: u8, rsv: u8, payload: &[u8], mask: [u8; 4]) -> usize {
    let len = payload.len();
    out[0] = 0x80 | ((rsv & 0x7) << 4) | opcode;
    let mut i = match len {
        0..=125 => {
            out[1] = 0x80 | len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = 0x80 | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 0x80 | 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    out[i..i + 4].copy_from_slice(&mask);
    i += 4;
    mask_into(&mut out[i..i + len], payload, mask);
    i + len
}

/// `dst = src ^ mask` (RFC 6455 §5.3), eight bytes at a time.
fn mask_into(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let v = u64::from_ne_bytes(s.try_into().unwrap_or_default()) ^ wide;
        d.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, (d, s)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *d = s ^ mask[i % 4];
    }
}

/// The body of a close frame: the code, then the reason (cut to fit a control frame, at a character
/// boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn own(m: Inbound<'_>) -> Got {
        match m {
            Inbound::Text(t) => Got::Text(t.into()),
            Inbound::Binary(b) => Got::Binary(b.into()),
            Inbound::Ping(b) => Got::Ping(b.into()),
            Inbound::Pong(b) => Got::Pong(b.into()),
            Inbound::Close(c) => Got::Close(c.map(|(c, r)| (c, r.into()))),
        }
    }

    /// A frame as a server writes it: unmasked.
    fn server(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n @ 126..=0xFFFF => {
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

    /// Everything `chunks` decode to, fed one chunk at a time.
    fn decode(max: usize, chunks: &[&[u8]]) -> Result<Vec<Got>, Violation> {
        feed_all(Decoder::new(max, 64), chunks)
    }

    fn feed_all(mut d: Decoder, chunks: &[&[u8]]) -> Result<Vec<Got>, Violation> {
        let mut got = vec![];
        for c in chunks {
            d.feed(c, &mut |m| {
                got.push(own(m));
                ControlFlow::Continue(())
            })?;
        }
        Ok(got)
    }

    /// `bytes` fed in every split into two chunks, and byte by byte: the same result each time.
    fn decode_every_split(max: usize, bytes: &[u8]) -> Result<Vec<Got>, Violation> {
        let whole = decode(max, &[bytes]);
        // every split in the first 1,000 bytes, then every 997th
        for cut in (0..=bytes.len()).filter(|c| *c < 1000 || c % 997 == 0) {
            let split = decode(max, &[&bytes[..cut], &bytes[cut..]]);
            assert!(split == whole, "split at {cut}: {:?}", split.map(|g| summary(&g)));
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let one_by_one = decode(max, &singles);
        assert!(one_by_one == whole, "byte by byte: {:?}", one_by_one.map(|g| summary(&g)));
        whole
    }

    /// Kinds and sizes, for failure messages that stay readable.
    fn summary(got: &[Got]) -> Vec<String> {
        got.iter()
            .map(|g| match g {
                Got::Binary(b) => format!("Binary({} bytes)", b.len()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn messages_and_control_frames_come_out_in_order_however_the_bytes_are_split() {
        let mut wire = server(true, OP_TEXT, "héllo".as_bytes());
        wire.extend(server(true, OP_PING, b"p"));
        wire.extend(server(true, OP_BINARY, &[7u8; 300]));
        wire.extend(server(true, OP_PONG, b""));
        wire.extend(server(true, OP_BINARY, &[9u8; 70_000]));
        wire.extend(server(true, OP_CLOSE, &[0x03, 0xE8, b'o', b'k']));
        wire.extend(server(true, OP_TEXT, b"after the close: not a frame"));
        let got = decode_every_split(1 << 20, &wire).unwrap();
        assert!(
            got == vec![
                Got::Text("héllo".into()),
                Got::Ping(b"p".to_vec()),
                Got::Binary(vec![7; 300]),
                Got::Pong(vec![]),
                Got::Binary(vec![9; 70_000]),
                Got::Close(Some((1000, "ok".into()))),
            ],
            "{:?}",
            summary(&got)
        );
    }

    #[test]
    fn a_fragmented_message_is_reassembled_with_control_frames_between_its_fragments() {
        let mut wire = server(false, OP_TEXT, "ab".as_bytes());
        wire.extend(server(true, OP_PING, b"x"));
        // "é" cut between two fragments: UTF-8 is checked across the boundary
        wire.extend(server(false, OP_CONTINUATION, &"cé".as_bytes()[..2]));
        wire.extend(server(true, OP_CONTINUATION, &"cé".as_bytes()[2..]));
        wire.extend(server(false, OP_BINARY, b"12"));
        wire.extend(server(true, OP_CONTINUATION, b"34"));
        let got = decode_every_split(100, &wire).unwrap();
        assert_eq!(got, vec![Got::Ping(b"x".to_vec()), Got::Text("abcé".into()), Got::Binary(b"1234".to_vec())]);
    }

    #[test]
    fn invalid_utf8_fails_with_1007_at_the_first_bad_fragment() {
        assert_eq!(decode(100, &[&server(true, OP_TEXT, &[0xFF, 0xFE])]).unwrap_err().code(), 1007);
        // the bad byte is in the first fragment: no need to wait for the end of the message
        let first = server(false, OP_TEXT, &[b'a', 0xFF]);
        assert_eq!(decode(100, &[&first]), Err(Violation::InvalidUtf8));
        // a sequence left incomplete by the last fragment
        let mut wire = server(false, OP_TEXT, b"a");
        wire.extend(server(true, OP_CONTINUATION, &[0xC3]));
        assert_eq!(decode(100, &[&wire]), Err(Violation::InvalidUtf8));
        // a close reason that is not UTF-8
        assert_eq!(decode(100, &[&server(true, OP_CLOSE, &[0x03, 0xE8, 0xFF])]), Err(Violation::InvalidUtf8));
    }

    #[test]
    fn a_message_over_the_limit_fails_with_1009_at_its_header() {
        // only the header arrived: the decoder does not wait for 2,000 bytes it would refuse
        let header = &server(true, OP_BINARY, &[0u8; 2000])[..4];
        assert_eq!(decode(1000, &[header]), Err(Violation::TooBig { size: 2000, max: 1000 }));
        // fragments that add up to more
        let mut wire = server(false, OP_BINARY, &[0u8; 600]);
        wire.extend(server(true, OP_CONTINUATION, &[0u8; 600]));
        assert_eq!(decode(1000, &[&wire]).unwrap_err().code(), 1009);
        // exactly the limit is fine
        assert_eq!(decode(1000, &[&server(true, OP_BINARY, &[1u8; 1000])]).unwrap(), vec![Got::Binary(vec![1; 1000])]);
    }

    #[test]
    fn what_a_server_may_not_send_fails_with_1002() {
        let masked = [0x81, 0x81, 1, 2, 3, 4, b'a' ^ 1];
        let long_ping = server(true, OP_PING, &[0u8; 126]);
        let fragmented_ping = server(false, OP_PING, b"");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("reserved opcode", vec![0x83, 0x00]),
            ("reserved bits", vec![0xA1, 0x01, b'a']),
            ("rsv1", vec![0xC1, 0x01, b'a']),
            ("masked", masked.to_vec()),
            ("control over 125", long_ping),
            ("fragmented control", fragmented_ping),
            ("continuation without a message", server(true, OP_CONTINUATION, b"a")),
            ("1-byte close body", server(true, OP_CLOSE, &[3])),
            ("length with its top bit set", vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]),
        ];
        for (what, wire) in cases {
            let e = decode(1000, &[&wire]).unwrap_err();
            assert!(matches!(e, Violation::Protocol(_)) && e.code() == 1002, "{what}: {e:?}");
        }
        let mut interrupted = server(false, OP_TEXT, b"a");
        interrupted.extend(server(true, OP_TEXT, b"b"));
        assert_eq!(decode(1000, &[&interrupted]).unwrap_err().code(), 1002);
    }

    #[test]
    fn a_close_code_not_allowed_on_the_wire_is_reported_by_its_number() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let wire = server(true, OP_CLOSE, &code.to_be_bytes());
            assert_eq!(decode(100, &[&wire]), Err(Violation::InvalidCloseCode(code)), "{code}");
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            let wire = server(true, OP_CLOSE, &code.to_be_bytes());
            assert_eq!(decode(100, &[&wire]).unwrap(), vec![Got::Close(Some((code, String::new())))], "{code}");
        }
        assert_eq!(decode(100, &[&server(true, OP_CLOSE, b"")]).unwrap(), vec![Got::Close(None)]);
    }

    #[test]
    fn a_stop_keeps_the_rest_for_the_next_call() {
        let mut wire = vec![];
        for i in 0..5u8 {
            wire.extend(server(true, OP_BINARY, &[i; 3]));
        }
        let mut d = Decoder::new(100, 64);
        let mut got = vec![];
        // stop after each message, also in the middle of a split frame
        let (a, b) = wire.split_at(7);
        let mut take_one = |m: Inbound<'_>| {
            got.push(own(m));
            ControlFlow::Break(())
        };
        assert_eq!(d.feed(a, &mut take_one).unwrap(), Fed::Stopped);
        assert_eq!(d.feed(b, &mut take_one).unwrap(), Fed::Stopped);
        while d.feed(&[], &mut take_one).unwrap() == Fed::Stopped {}
        assert_eq!(got, (0..5u8).map(|i| Got::Binary(vec![i; 3])).collect::<Vec<_>>());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn buffers_are_released_once_a_big_frame_is_done() {
        let mut d = Decoder::new(1 << 20, 64);
        let wire = server(true, OP_BINARY, &[5u8; 10_000]);
        let mut n = 0;
        d.feed(&wire[..5000], &mut |_| ControlFlow::Continue(())).unwrap();
        assert!(d.partial.capacity() >= 10_000, "the frame's size is reserved once");
        d.feed(&wire[5000..], &mut |m| {
            assert_eq!(m, Inbound::Binary(&[5u8; 10_000]));
            n += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!((n, d.partial.capacity()), (1, 0));
    }

    /// What a server reads: unmask a client frame.
    fn unmask(frame: &[u8]) -> (u8, u8, Vec<u8>) {
        assert_eq!(frame[0] & 0x80, 0x80, "final");
        assert_eq!(frame[1] & 0x80, 0x80, "masked");
        let (len, at) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let mask = &frame[at..at + 4];
        let data = frame[at + 4..at + 4 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        (frame[0] & 0x0F, (frame[0] >> 4) & 7, data)
    }

    #[test]
    fn written_frames_are_masked_with_the_right_length_encoding() {
        for len in [0usize, 1, 7, 8, 9, 125, 126, 1000, 0xFFFF, 0x10000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut out = vec![0u8; frame_len(len)];
            let n = write_frame(&mut out, OP_BINARY, 0, &payload, [0x12, 0x34, 0x56, 0x78]);
            assert_eq!(n, out.len(), "{len}");
            assert_eq!(unmask(&out), (OP_BINARY, 0, payload), "{len}");
        }
        let mut out = vec![0u8; frame_len(2)];
        write_frame(&mut out, OP_TEXT, 0b100, b"hi", [1, 2, 3, 4]);
        assert_eq!(unmask(&out), (OP_TEXT, 0b100, b"hi".to_vec()));
    }

    use crate::ws::deflate::{negotiate, Agreed, Offer};

    /// What websockets' server agrees to by default.
    fn agreed() -> Agreed {
        let answer = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12";
        negotiate(Some(&Offer::default()), &[answer]).unwrap().unwrap()
    }

    /// `msgs` compressed as the server would (one context, in order), each in one frame with RSV1.
    fn compressed_frames(msgs: &[(u8, &[u8])]) -> Vec<u8> {
        // the server compresses with the window it announced for itself
        let a = agreed();
        let mut tx = Agreed { client_max_window_bits: a.server_max_window_bits, ..a }.deflater();
        let mut wire = vec![];
        for (op, m) in msgs {
            let mut payload = vec![];
            assert!(tx.compress(m, &mut payload));
            let mut f = server(true, *op, &payload);
            f[0] |= 0x40;
            wire.extend(f);
        }
        wire
    }

    fn decode_inflating(max: usize, chunks: &[&[u8]]) -> Result<Vec<Got>, Violation> {
        feed_all(Decoder::new(max, 64).inflating(agreed().inflater()), chunks)
    }

    #[test]
    fn compressed_messages_inflate_with_uncompressed_ones_and_control_frames_between() {
        let sdp =
            format!("{{\"sdp\":\"{}\"}}", "a=candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host\\r\\n".repeat(60));
        let mut wire =
            compressed_frames(&[(OP_TEXT, sdp.as_bytes()), (OP_BINARY, &[1, 2, 3]), (OP_TEXT, sdp.as_bytes())]);
        // the second compressed text refers back to the first: context takeover
        assert!(wire.len() < sdp.len() / 4, "{} bytes on the wire", wire.len());
        wire.extend(server(true, OP_PING, b"p"));
        wire.extend(server(true, OP_TEXT, b"plain"));
        let want = vec![
            Got::Text(sdp.clone()),
            Got::Binary(vec![1, 2, 3]),
            Got::Text(sdp.clone()),
            Got::Ping(b"p".to_vec()),
            Got::Text("plain".into()),
        ];
        for cut in (0..=wire.len()).step_by(7) {
            let got = decode_inflating(1 << 20, &[&wire[..cut], &wire[cut..]]).unwrap();
            assert!(got == want, "cut at {cut}: {:?}", summary(&got));
        }
    }

    #[test]
    fn a_fragmented_compressed_message_is_inflated_across_its_frames() {
        let text = "é".repeat(3000);
        let one = compressed_frames(&[(OP_TEXT, text.as_bytes())]);
        // the payload of the single frame, split into three frames (a UTF-8 sequence may be cut too)
        let payload = &one[parse_header(&one).unwrap().unwrap().size..];
        let (a, rest) = payload.split_at(payload.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut wire = server(false, OP_TEXT, a);
        wire[0] |= 0x40;
        wire.extend(server(true, OP_PONG, b""));
        wire.extend(server(false, OP_CONTINUATION, b));
        wire.extend(server(true, OP_CONTINUATION, c));
        let got = decode_inflating(1 << 20, &[&wire]).unwrap();
        assert_eq!(got, vec![Got::Pong(vec![]), Got::Text(text.clone())]);
        // byte by byte, too
        let singles: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_inflating(1 << 20, &singles).unwrap(), vec![Got::Pong(vec![]), Got::Text(text)]);
    }

    #[test]
    fn rsv1_is_refused_with_1002_where_it_may_not_be() {
        let one = compressed_frames(&[(OP_TEXT, b"hello")]);
        let mut on_continuation = server(false, OP_TEXT, b"a");
        let mut cont = server(true, OP_CONTINUATION, b"b");
        cont[0] |= 0x40;
        on_continuation.extend(cont);
        let mut on_ping = server(true, OP_PING, b"");
        on_ping[0] |= 0x40;
        let mut rsv2 = server(true, OP_TEXT, b"a");
        rsv2[0] |= 0x20;
        for (what, wire, inflating, why) in [
            ("rsv1 on a continuation", on_continuation, true, "continuation"),
            ("rsv1 on a control frame", on_ping, true, "control"),
            ("rsv2 with deflate", rsv2, true, "reserved bits"),
            ("rsv1 without negotiation", one, false, "not negotiated"),
        ] {
            let e = if inflating { decode_inflating(1000, &[&wire]) } else { decode(1000, &[&wire]) }.unwrap_err();
            assert!(matches!(&e, Violation::Protocol(p) if p.contains(why)) && e.code() == 1002, "{what}: {e:?}");
        }
    }

    #[test]
    fn a_deflate_bomb_is_a_1009_once_inflating_passes_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let wire = compressed_frames(&[(OP_BINARY, &zeros)]);
        assert!(wire.len() < 20_000, "{}", wire.len());
        let e = decode_inflating(1 << 20, &[&wire]).unwrap_err();
        assert_eq!((e.clone(), e.code()), (Violation::InflatedTooBig { max: 1 << 20 }, 1009));
        // fragmented, the limit holds across frames
        let payload = &wire[parse_header(&wire).unwrap().unwrap().size..];
        let (a, b) = payload.split_at(payload.len() / 2);
        let mut frags = server(false, OP_BINARY, a);
        frags[0] |= 0x40;
        frags.extend(server(true, OP_CONTINUATION, b));
        assert_eq!(decode_inflating(1 << 20, &[&frags]), Err(Violation::InflatedTooBig { max: 1 << 20 }));
        // at the limit it is a message
        assert_eq!(decode_inflating(8 << 20, &[&wire]).unwrap(), vec![Got::Binary(zeros)]);
    }

    #[test]
    fn inflated_text_is_checked_for_utf8_and_garbage_does_not_inflate() {
        let wire = compressed_frames(&[(OP_TEXT, &[b'a', 0xFF])]);
        assert_eq!(decode_inflating(1000, &[&wire]), Err(Violation::InvalidUtf8));
        let mut garbage = server(true, OP_BINARY, &[0xFF, 0xFF, 0xFF]);
        garbage[0] |= 0x40;
        let e = decode_inflating(1000, &[&garbage]).unwrap_err();
        assert!(matches!(&e, Violation::Protocol(p) if p.contains("does not inflate")) && e.code() == 1002, "{e:?}");
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame() {
        let p = close_payload(1000, &"é".repeat(100));
        assert!(p.len() <= MAX_CONTROL_PAYLOAD && std::str::from_utf8(&p[2..]).is_ok(), "{}", p.len());
        assert_eq!(close_payload(4001, "bye"), vec![0x0F, 0xA1, b'b', b'y', b'e']);
    }
}
