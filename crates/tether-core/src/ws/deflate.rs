//! permessage-deflate (RFC 7692) for a client, without I/O: the offer in the upgrade request
//! ([`Offer`]), the reading of the server's `Sec-WebSocket-Extensions` answer into the parameters both
//! sides then use ([`negotiate`], [`Agreed`]), and the per-connection codecs: a [`Deflater`] for the
//! messages we send and an [`Inflater`] for the ones the server compressed.
//!
//! Each codec allocates its zlib state at its first message, so a connection that negotiated the
//! extension and stays idle (or never receives a compressed message) holds none. With context takeover
//! (the default) a message may refer back to earlier ones, so the state lives as long as the connection;
//! a new connection (a reconnect) starts from fresh codecs, and whatever it re-sends is compressed
//! again against the new context. Without context takeover the state is reset at every message.
//!
//! The engine is zlib-rs (a memory-safe Rust zlib derived from zlib-ng), chosen by measurement over
//! flate2's default miniz_oxide backend: about half the CPU to compress and inflate signaling-sized
//! JSON (300 B to 10 KiB), and only a zlib engine honours a window smaller than 32 KiB when
//! compressing, which `client_max_window_bits` (websockets' server asks for 12 bits) requires. It is
//! used directly rather than through flate2 (the same engine, the same speed) to set zlib's
//! `memLevel`: 5, as websockets does, takes a quarter to a third less memory per compressor.

use std::fmt::Write;

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status};

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";
/// What a sync flush ends with; the sender removes it and the receiver puts it back (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// zlib's default, which websockets uses too: the same ratio as the peer it replaces.
const LEVEL: i32 = 6;
/// Below zlib's default `memLevel` (8): smaller buffers, a quarter to a third less memory per
/// compressor for a slightly worse ratio (websockets' choice too).
const MEM_LEVEL: i32 = 5;

/// The parameters the client offers (RFC 7692 §7.1). `Offer::default()` is websockets' offer:
/// `permessage-deflate; client_max_window_bits`, which lets the server pick the window we compress with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// Ask the server to compress each message on its own.
    pub server_no_context_takeover: bool,
    /// Announce that we compress each message on its own.
    pub client_no_context_takeover: bool,
    /// Ask the server to compress with at most this window (8..=15 bits).
    pub server_max_window_bits: Option<u8>,
    /// Let the server limit the window we compress with, up to a bound of ours or not.
    pub client_max_window_bits: ClientWindow,
}

/// The `client_max_window_bits` of an offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientWindow {
    /// Not offered: the server may not limit our window.
    NotOffered,
    /// Offered without a value: the server may answer with any limit.
    #[default]
    Any,
    /// Offered with this value (8..=15): we compress with at most this window whatever the answer.
    AtMost(u8),
}

impl Offer {
    /// The `Sec-WebSocket-Extensions` value of the request.
    pub fn header_value(&self) -> String {
        let mut v = String::from(NAME);
        if self.server_no_context_takeover {
            v.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            v.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            let _ = write!(v, "; server_max_window_bits={bits}");
        }
        match self.client_max_window_bits {
            ClientWindow::NotOffered => {}
            ClientWindow::Any => v.push_str("; client_max_window_bits"),
            ClientWindow::AtMost(bits) => {
                let _ = write!(v, "; client_max_window_bits={bits}");
            }
        }
        v
    }
}

/// What both sides use once the server accepted the offer (windows in bits, 8..=15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
}

impl Agreed {
    /// The compressor of the messages we send.
    pub fn deflater(&self) -> Deflater {
        Deflater {
            window_bits: self.client_max_window_bits,
            no_context_takeover: self.client_no_context_takeover,
            stream: None,
            // zlib cannot write a raw deflate stream with a 256-byte window (it would use 512 bytes,
            // which the server may refuse): such messages go uncompressed, as the extension allows
            off: self.client_max_window_bits < 9,
        }
    }

    /// The decompressor of the messages the server compressed.
    pub fn inflater(&self) -> Inflater {
        Inflater {
            window_bits: self.server_max_window_bits,
            no_context_takeover: self.server_no_context_takeover,
            stream: None,
            in_message: false,
        }
    }
}

/// One extension of a `Sec-WebSocket-Extensions` value: its name and parameters (a value unquoted).
type Extension = (String, Vec<(String, Option<String>)>);

/// RFC 7230 §3.2.6 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The extensions listed in one header value (RFC 6455 §9.1 grammar; a quoted value must unquote to a
/// token).
fn parse_extensions(value: &str) -> Result<Vec<Extension>, String> {
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue; // RFC 7230 §7: empty list elements are allowed and ignored
        }
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if name.is_empty() || !name.chars().all(is_tchar) {
            return Err(format!("{item:?} is not an extension token"));
        }
        let mut params = Vec::new();
        for p in parts {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (p, None),
            };
            if k.is_empty() || !k.chars().all(is_tchar) {
                return Err(format!("{p:?} is not a parameter of {name}"));
            }
            let v = match v {
                None => None,
                Some(v) => {
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).map_or(v, |q| q);
                    let v = v.replace('\\', "");
                    if v.is_empty() || !v.chars().all(is_tchar) {
                        return Err(format!("the value of {k} in {name} is not a token"));
                    }
                    Some(v)
                }
            };
            params.push((k.to_ascii_lowercase(), v));
        }
        out.push((name.to_ascii_lowercase(), params));
    }
    Ok(out)
}

/// A window size parameter's value: 8..=15.
fn window_bits(name: &str, value: Option<&str>) -> Result<u8, String> {
    match value.map(|v| (v, v.parse::<u8>())) {
        Some((_, Ok(b @ 8..=15))) => Ok(b),
        Some((v, _)) => Err(format!("{name}={v} is not 8..15")),
        None => Err(format!("{name} without a value")),
    }
}

/// Read the server's `Sec-WebSocket-Extensions` values (`values`, every header of that name) against
/// what we offered: None when it accepted nothing, the agreed parameters when it accepted our offer, or
/// why the answer is invalid (RFC 7692 §7.1: the client then fails the connection). An extension we did
/// not offer, permessage-deflate twice, an unknown, repeated or malformed parameter, or one that
/// contradicts the offer is refused.
pub fn negotiate(offer: Option<&Offer>, values: &[&str]) -> Result<Option<Agreed>, String> {
    let mut agreed = None;
    for value in values {
        for (name, params) in parse_extensions(value)? {
            let Some(offer) = offer.filter(|_| name == NAME) else {
                return Err(format!("the server chose an extension that was not offered ({name})"));
            };
            if agreed.is_some() {
                return Err(format!("the server accepted {NAME} twice"));
            }
            agreed = Some(accept(offer, &params).map_err(|why| format!("the server's {NAME} answer: {why}"))?);
        }
    }
    Ok(agreed)
}

/// The parameters of the server's permessage-deflate against our offer (RFC 7692 §7.1.1-7.1.2).
fn accept(offer: &Offer, params: &[(String, Option<String>)]) -> Result<Agreed, String> {
    let (mut server_nct, mut client_nct) = (false, false);
    let (mut server_bits, mut client_bits): (Option<u8>, Option<u8>) = (None, None);
    for (k, v) in params {
        let flag = |seen: bool| match (seen, v) {
            (true, _) => Err(format!("{k} twice")),
            (false, Some(v)) => Err(format!("{k}={v} (it takes no value)")),
            (false, None) => Ok(true),
        };
        match k.as_str() {
            "server_no_context_takeover" => server_nct = flag(server_nct)?,
            "client_no_context_takeover" => client_nct = flag(client_nct)?,
            "server_max_window_bits" | "client_max_window_bits" => {
                let slot = if k.starts_with("server") { &mut server_bits } else { &mut client_bits };
                if slot.is_some() {
                    return Err(format!("{k} twice"));
                }
                *slot = Some(window_bits(k, v.as_deref())?);
            }
            other => return Err(format!("an unknown parameter {other}")),
        }
    }
    if offer.server_no_context_takeover && !server_nct {
        return Err("no server_no_context_takeover, which the offer required".into());
    }
    // our own no_context_takeover holds whatever the server says
    client_nct |= offer.client_no_context_takeover;
    if let Some(asked) = offer.server_max_window_bits {
        match server_bits {
            None => return Err(format!("no server_max_window_bits, which the offer set to {asked}")),
            Some(b) if b > asked => {
                return Err(format!("server_max_window_bits={b}, over the {asked} the offer asked for"))
            }
            Some(_) => {}
        }
    }
    let client_bits = match (offer.client_max_window_bits, client_bits) {
        (ClientWindow::NotOffered, Some(b)) => {
            return Err(format!("client_max_window_bits={b}, which was not offered"));
        }
        (ClientWindow::AtMost(max), Some(b)) if b > max => {
            return Err(format!("client_max_window_bits={b}, over the {max} the offer allows"));
        }
        (ClientWindow::AtMost(max), None) => max,
        (_, b) => b.unwrap_or(15),
    };
    Ok(Agreed {
        server_no_context_takeover: server_nct,
        client_no_context_takeover: client_nct,
        server_max_window_bits: server_bits.unwrap_or(15),
        client_max_window_bits: client_bits,
    })
}

/// Compresses the messages we send (one per connection, in send order: with context takeover each
/// message may refer back to the ones before it).
pub struct Deflater {
    window_bits: u8,
    no_context_takeover: bool,
    /// Allocated at the first message (boxed: a connection without compression carries a pointer).
    stream: Option<Box<Deflate>>,
    /// Send every message as it is (RSV1 clear): the window cannot be honoured, or the engine failed.
    off: bool,
}

impl Deflater {
    /// Append `msg` compressed (without the tail the receiver adds back) to `out` and return true, or
    /// append nothing and return false: the message is then sent uncompressed, which the extension
    /// allows for any message.
    pub fn compress(&mut self, msg: &[u8], out: &mut Vec<u8>) -> bool {
        if self.off {
            return false;
        }
        if msg.is_empty() {
            // an empty stored block: what zlib writes, without a call that would make no progress
            out.push(0x00);
            return true;
        }
        let bits = self.window_bits;
        let stream = self.stream.get_or_insert_with(|| {
            let mut cfg = DeflateConfig::new(LEVEL);
            cfg.window_bits = -i32::from(bits); // negative: raw deflate, no zlib header
            cfg.mem_level = MEM_LEVEL;
            Box::new(Deflate::new_with_config(cfg))
        });
        if self.no_context_takeover {
            stream.reset();
        }
        let start = out.len();
        let mut input = msg;
        loop {
            let at = out.len();
            // room for the whole message in one call unless it does not compress at all
            let room = input.len() + input.len() / 8 + 64;
            out.resize(at + room, 0);
            let (took, made) = (stream.total_in(), stream.total_out());
            let r = stream.compress(input, &mut out[at..], DeflateFlush::SyncFlush);
            let (took, made) = ((stream.total_in() - took) as usize, (stream.total_out() - made) as usize);
            out.truncate(at + made);
            input = &input[took..];
            if r.is_err() {
                return self.give_up(out, start);
            }
            // a sync flush is complete once it returns with room to spare
            if input.is_empty() && made < room {
                break;
            }
        }
        if !out.ends_with(&TAIL) {
            return self.give_up(out, start);
        }
        out.truncate(out.len() - TAIL.len());
        true
    }

    /// The engine failed mid-message: the server's context cannot follow ours any more, so this and
    /// every later message go uncompressed (which leaves its context unused, and so still valid).
    fn give_up(&mut self, out: &mut Vec<u8>, start: usize) -> bool {
        out.truncate(start);
        self.off = true;
        self.stream = None;
        false
    }
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the limit: a deflate bomb, or simply too big (`produced` so far).
    TooBig { produced: usize },
    /// Not a deflate stream (zlib's reason).
    Corrupt(&'static str),
}

/// Decompresses the server's compressed messages, frame by frame.
pub struct Inflater {
    window_bits: u8,
    no_context_takeover: bool,
    /// Allocated at the first compressed message (boxed, as the deflater's).
    stream: Option<Box<Inflate>>,
    /// Between the first and the last frame of a message.
    in_message: bool,
}

impl Inflater {
    /// Append what `data` (a frame's payload of a compressed message; `last` for its final frame)
    /// inflates to onto `out`, never letting `out` grow past `max` bytes: the output is produced in
    /// steps and the check comes before each, so a small frame that would inflate to gigabytes fails
    /// once `max` is passed, having allocated about `max`.
    pub fn inflate(&mut self, data: &[u8], last: bool, out: &mut Vec<u8>, max: usize) -> Result<(), InflateError> {
        let bits = self.window_bits;
        let stream = self.stream.get_or_insert_with(|| Box::new(Inflate::new(false, bits)));
        if !self.in_message && self.no_context_takeover {
            stream.reset(false);
        }
        self.in_message = !last;
        let mut r = Self::run(stream, data, out, max);
        if r == Ok(false) && last {
            r = Self::run(stream, &TAIL, out, max);
        }
        if r.is_err() {
            self.in_message = false;
        }
        r.map(|_| ())
    }

    /// Inflate `input` onto `out`; true if it ended the deflate stream (a final block).
    fn run(stream: &mut Inflate, mut input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<bool, InflateError> {
        loop {
            let at = out.len();
            // start near the usual ratio of JSON, then double: few calls, little zero-filling
            let want = (input.len() * 4).max(at).max(256);
            let room = want.min(max.saturating_sub(at) + 1);
            out.resize(at + room, 0);
            let (took, made) = (stream.total_in(), stream.total_out());
            let r = stream.decompress(input, &mut out[at..], InflateFlush::SyncFlush);
            let (took, made) = ((stream.total_in() - took) as usize, (stream.total_out() - made) as usize);
            out.truncate(at + made);
            input = &input[took..];
            if out.len() > max {
                return Err(InflateError::TooBig { produced: out.len() });
            }
            match r {
                Err(e) => return Err(InflateError::Corrupt(e.as_str())),
                // a final block (BFINAL): the stream is over, what follows (the tail) is not read; the
                // next message starts a stream of its own
                Ok(Status::StreamEnd) => {
                    stream.reset(false);
                    return Ok(true);
                }
                Ok(_) if input.is_empty() && made < room => return Ok(false),
                // no progress: input that ends inside a block, to be continued by the next frame
                Ok(_) if took == 0 && made == 0 => return Ok(false),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(server_nct: bool, client_nct: bool, server_bits: u8, client_bits: u8) -> Agreed {
        Agreed {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        }
    }

    /// A JSON signaling message of about `n` bytes that differs from call to call.
    fn json(i: usize, n: usize) -> Vec<u8> {
        let mut s = format!(r#"{{"id":{i},"type":"candidate","payload":["#);
        let mut k = 0u64;
        while s.len() < n {
            k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407 ^ i as u64);
            let _ = write!(
                s,
                r#"{{"candidate":"candidate:{} 1 udp {} 10.0.{}.{} typ host","sdpMid":"0"}},"#,
                k >> 40,
                k >> 50,
                (k >> 8) & 0xFF,
                k & 0xFF
            );
        }
        s.push_str("null]}");
        s.into_bytes()
    }

    /// Compress `msgs` with one side's deflater and read them back with the other side's inflater.
    fn round_trip(a: Agreed, msgs: &[Vec<u8>]) -> Vec<usize> {
        // the server's view: its deflater uses our inflater's parameters
        let mut tx = a.deflater();
        let mut rx = agreed(a.client_no_context_takeover, false, a.client_max_window_bits, 15).inflater();
        let mut sizes = vec![];
        for m in msgs {
            let mut wire = vec![];
            assert!(tx.compress(m, &mut wire));
            let mut back = vec![];
            rx.inflate(&wire, true, &mut back, 1 << 20).unwrap();
            assert!(&back == m, "{} bytes came back as {}", m.len(), back.len());
            sizes.push(wire.len());
        }
        sizes
    }

    #[test]
    fn messages_round_trip_with_and_without_context_takeover_and_in_every_window() {
        let msgs: Vec<Vec<u8>> = (0..20).map(|i| json(i, [300, 4000, 10_000][i % 3])).collect();
        for bits in 9..=15 {
            for nct in [false, true] {
                round_trip(agreed(false, nct, 15, bits), &msgs);
            }
        }
        // an empty message, then more
        let with_empty = vec![json(1, 500), vec![], json(2, 500)];
        round_trip(agreed(false, false, 15, 15), &with_empty);
        round_trip(agreed(false, true, 15, 15), &with_empty);
    }

    #[test]
    fn context_takeover_makes_a_repeated_message_small_and_its_absence_does_not() {
        let m = json(7, 3000);
        let msgs = vec![m.clone(), m.clone(), m];
        let takeover = round_trip(agreed(false, false, 15, 15), &msgs);
        let alone = round_trip(agreed(false, true, 15, 15), &msgs);
        assert!(takeover[2] * 10 < alone[2], "{takeover:?} vs {alone:?}");
        assert_eq!(alone[0], alone[2], "each message compressed on its own: {alone:?}");
    }

    #[test]
    fn a_small_window_never_refers_further_back_than_it() {
        // the same 3 KiB twice: a 32 KiB window finds the repeat, a 512-byte one cannot
        let block = json(3, 3000);
        let mut m = block.clone();
        m.extend_from_slice(&block);
        let wide = round_trip(agreed(false, false, 15, 15), std::slice::from_ref(&m))[0];
        let narrow = round_trip(agreed(false, false, 15, 9), std::slice::from_ref(&m))[0];
        assert!(narrow > wide + wide / 2, "9 bits: {narrow} bytes, 15 bits: {wide}");
        // and what it wrote inflates with a window of 9 bits
        let mut tx = agreed(false, false, 15, 9).deflater();
        let mut wire = vec![];
        assert!(tx.compress(&m, &mut wire));
        let mut rx = agreed(false, false, 9, 15).inflater();
        let mut back = vec![];
        rx.inflate(&wire, true, &mut back, 1 << 20).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn a_256_byte_window_sends_uncompressed() {
        let mut tx = agreed(false, false, 15, 8).deflater();
        let mut out = vec![];
        assert!(!tx.compress(b"hello hello hello", &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_message_split_across_frames_inflates_as_one() {
        let m = json(9, 20_000);
        let mut tx = agreed(false, false, 15, 15).deflater();
        let mut wire = vec![];
        assert!(tx.compress(&m, &mut wire));
        for cut in [1, 7, wire.len() / 2, wire.len() - 1] {
            let mut rx = agreed(false, false, 15, 15).inflater();
            let mut back = vec![];
            rx.inflate(&wire[..cut], false, &mut back, 1 << 20).unwrap();
            rx.inflate(&wire[cut..], true, &mut back, 1 << 20).unwrap();
            assert!(back == m, "cut at {cut}");
        }
    }

    #[test]
    fn a_deflate_bomb_fails_at_the_limit_without_inflating_the_rest() {
        // zeros compress about 1000:1: 16 MiB of them in 16 KiB
        let mut tx = agreed(false, false, 15, 15).deflater();
        let zeros = vec![0u8; 16 << 20];
        let mut wire = vec![];
        assert!(tx.compress(&zeros, &mut wire));
        assert!(wire.len() < 40_000, "{}", wire.len());
        let mut rx = agreed(false, false, 15, 15).inflater();
        let mut out = vec![];
        let e = rx.inflate(&wire, true, &mut out, 1 << 20).unwrap_err();
        assert!(matches!(e, InflateError::TooBig { produced } if produced == (1 << 20) + 1), "{e:?}");
        assert!(out.capacity() < 2 << 20, "at most about the limit was allocated: {}", out.capacity());
        // exactly the limit inflates
        let mut tx = agreed(false, false, 15, 15).deflater();
        let mut wire = vec![];
        assert!(tx.compress(&zeros[..1 << 20], &mut wire));
        let mut out = vec![];
        agreed(false, false, 15, 15).inflater().inflate(&wire, true, &mut out, 1 << 20).unwrap();
        assert_eq!(out.len(), 1 << 20);
    }

    #[test]
    fn bytes_that_are_not_deflate_are_corrupt() {
        let mut rx = agreed(false, false, 15, 15).inflater();
        // BTYPE 11 is reserved
        let e = rx.inflate(&[0xFF, 0xFF, 0xFF], true, &mut vec![], 1000).unwrap_err();
        assert!(matches!(e, InflateError::Corrupt(_)), "{e:?}");
    }

    #[test]
    fn a_final_block_ends_the_message_and_the_next_starts_afresh() {
        // RFC 7692 §7.2.3.4: a sender may end a message with BFINAL set; what follows is ignored.
        // Fixed-Huffman "a" with BFINAL: 0x4B 0x04 0x00
        let mut rx = agreed(false, false, 15, 15).inflater();
        let mut out = vec![];
        rx.inflate(&[0x4B, 0x04, 0x00], true, &mut out, 1000).unwrap();
        assert_eq!(out, b"a");
        let mut tx = agreed(false, false, 15, 15).deflater();
        let mut wire = vec![];
        assert!(tx.compress(b"next", &mut wire));
        let mut out = vec![];
        rx.inflate(&wire, true, &mut out, 1000).unwrap();
        assert_eq!(out, b"next");
    }

    fn answer(offer: &Offer, value: &str) -> Result<Option<Agreed>, String> {
        negotiate(Some(offer), &[value])
    }

    #[test]
    fn the_default_offer_is_websockets_and_its_usual_answers_are_agreed() {
        let offer = Offer::default();
        assert_eq!(offer.header_value(), "permessage-deflate; client_max_window_bits");
        assert_eq!(negotiate(Some(&offer), &[]), Ok(None));
        // websockets' server
        assert_eq!(
            answer(&offer, "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
            Ok(Some(agreed(false, false, 12, 12)))
        );
        assert_eq!(answer(&offer, "permessage-deflate"), Ok(Some(agreed(false, false, 15, 15))));
        assert_eq!(
            answer(
                &offer,
                r#"Permessage-Deflate ; Server_No_Context_Takeover; client_no_context_takeover; client_max_window_bits="10""#
            ),
            Ok(Some(agreed(true, true, 15, 10)))
        );
        // a list split over two headers, with an empty element
        assert_eq!(negotiate(Some(&offer), &["", ", permessage-deflate"]), Ok(Some(agreed(false, false, 15, 15))));
    }

    #[test]
    fn an_offer_with_every_parameter_is_written_and_held_to() {
        let offer = Offer {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: ClientWindow::AtMost(11),
        };
        assert_eq!(
            offer.header_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=11"
        );
        // client_no_context_takeover and client_max_window_bits are ours to keep even if not echoed
        assert_eq!(
            answer(&offer, "permessage-deflate; server_no_context_takeover; server_max_window_bits=9"),
            Ok(Some(agreed(true, true, 9, 11)))
        );
        for (value, why) in [
            ("permessage-deflate; server_max_window_bits=10", "server_no_context_takeover"),
            ("permessage-deflate; server_no_context_takeover", "no server_max_window_bits"),
            ("permessage-deflate; server_no_context_takeover; server_max_window_bits=12", "over the 10"),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12",
                "over the 11",
            ),
        ] {
            let e = answer(&offer, value).unwrap_err();
            assert!(e.contains(why), "{value}: {e}");
        }
        let plain = Offer { client_max_window_bits: ClientWindow::NotOffered, ..Offer::default() };
        assert_eq!(plain.header_value(), "permessage-deflate");
        let e = answer(&plain, "permessage-deflate; client_max_window_bits=10").unwrap_err();
        assert!(e.contains("not offered"), "{e}");
    }

    #[test]
    fn answers_that_break_rfc_7692_are_refused_with_the_reason() {
        let offer = Offer::default();
        for (value, why) in [
            ("permessage-deflate; server_max_window_bits=16", "server_max_window_bits=16 is not 8..15"),
            ("permessage-deflate; server_max_window_bits=7", "is not 8..15"),
            ("permessage-deflate; server_max_window_bits", "without a value"),
            ("permessage-deflate; client_max_window_bits=abc", "is not 8..15"),
            (
                "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
                "server_max_window_bits twice",
            ),
            ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", "twice"),
            ("permessage-deflate; server_no_context_takeover=1", "takes no value"),
            ("permessage-deflate; x_custom", "unknown parameter x_custom"),
            ("permessage-deflate, permessage-deflate", "twice"),
            ("x-webkit-deflate-frame", "not offered (x-webkit-deflate-frame)"),
            ("permessage-deflate; =1", "not a parameter"),
            ("permessage-deflate; server_max_window_bits=\"1 0\"", "not a token"),
            ("per message", "not an extension token"),
        ] {
            let e = answer(&offer, value).unwrap_err();
            assert!(e.contains(why), "{value}: {e}");
        }
        // anything at all when nothing was offered
        let e = negotiate(None, &["permessage-deflate"]).unwrap_err();
        assert!(e.contains("not offered"), "{e}");
    }
}
