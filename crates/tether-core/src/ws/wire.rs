//! One client connection's bytes, without I/O: TLS (for `wss://`), the upgrade request and its
//! answer, then frames. The front end hands over what the socket read ([`Wire::receive`]) and writes
//! what [`Wire::take_outgoing`] and [`Wire::frame`] give it; the events it gets back are the server's
//! answer to the upgrade, then its messages and control frames.
//!
//! When the answer agrees to permessage-deflate, the connection gets its own compression contexts:
//! [`Wire::frame`] compresses data messages, the decoder inflates compressed ones. A new connection
//! (a reconnect) is a new `Wire`, so it starts from fresh contexts.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::deflate::{Deflater, Offer};
use super::frame::{self, Decoder, Fed, Inbound, Violation};
use super::tls::{TlsError, TlsSession};
use super::upgrade::{self, Refusal, Request};

/// What the server sent.
#[derive(Debug)]
pub enum WireEvent<'a> {
    /// Its answer to the upgrade request, checked against the request (`Answer::check`): Ok if it
    /// opened the WebSocket, and frames follow; else why not, and nothing more is read.
    Answer(Result<(), Refusal>),
    Frame(Inbound<'a>),
}

/// Why the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Tls(TlsError),
    /// The answer to the upgrade is not HTTP/1.1.
    NotHttp(String),
    /// The server broke the WebSocket protocol: fail the connection with its close code.
    Violation(Violation),
}

enum Stage {
    /// Waiting for the answer to the upgrade request; what was read of it so far.
    Answer(Vec<u8>),
    Frames(Decoder),
    /// The answer refused the upgrade: nothing more is read.
    Refused,
}

pub struct Wire {
    /// Boxed: a rustls connection is large, and most connections are plain.
    tls: Option<Box<TlsSession>>,
    stage: Stage,
    /// What proves the answer is to our request, what it offered, and the subprotocols it asked for.
    accept: String,
    offer: Option<Offer>,
    protocols: Vec<String>,
    /// permessage-deflate was agreed: our data messages go through it.
    deflater: Option<Deflater>,
    /// A compressed message, between the compressor and the frame.
    compressed: Vec<u8>,
    max_message_size: usize,
    keep: usize,
    /// Plaintext not yet handed to TLS or the socket (the upgrade request until taken).
    pending: Vec<u8>,
    /// Decrypted bytes, reused between reads (TLS only).
    plain: Vec<u8>,
}

impl Wire {
    /// A connection that will send `request` (through TLS when `tls` is set) and then speak WebSocket,
    /// refusing messages over `max_message_size`; buffers over `keep` bytes are released when done.
    pub fn new(
        tls: Option<(Arc<rustls::ClientConfig>, &str)>,
        request: &Request,
        max_message_size: usize,
        keep: usize,
    ) -> Result<Wire, TlsError> {
        let tls = match tls {
            Some((cfg, host)) => Some(Box::new(TlsSession::new(cfg, host)?)),
            None => None,
        };
        Ok(Wire {
            tls,
            stage: Stage::Answer(Vec::new()),
            accept: request.accept.clone(),
            offer: request.deflate.clone(),
            protocols: request.protocols.clone(),
            deflater: None,
            compressed: Vec::new(),
            max_message_size,
            keep,
            pending: request.bytes.clone(),
            plain: Vec::new(),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the TLS handshake is still under way (never for a plain connection).
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Bytes to write now (the upgrade request, TLS handshake records), appended to `out`.
    pub fn take_outgoing(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        match &mut self.tls {
            Some(tls) => {
                if !self.pending.is_empty() {
                    // rustls holds early plaintext until its handshake is done
                    tls.send(&self.pending, out)?;
                    self.pending = Vec::new();
                }
                tls.take_outgoing(out);
            }
            None => out.append(&mut self.pending),
        }
        Ok(())
    }

    /// Append one frame for the server to `out` (encrypted when TLS is on); a data message is
    /// compressed if permessage-deflate was agreed (control frames never are).
    pub fn frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut compressed = std::mem::take(&mut self.compressed);
        compressed.clear();
        let data_frame = matches!(opcode, frame::OP_TEXT | frame::OP_BINARY);
        let deflated = data_frame && self.deflater.as_mut().is_some_and(|d| d.compress(payload, &mut compressed));
        let (rsv, payload) = if deflated { (0b100, compressed.as_slice()) } else { (0, payload) };
        let n = frame::frame_len(payload.len());
        let r = match &mut self.tls {
            None => {
                let at = out.len();
                out.resize(at + n, 0);
                frame::write_frame(&mut out[at..], opcode, rsv, payload, mask_key());
                Ok(())
            }
            Some(tls) => {
                let mut buf = vec![0u8; n];
                frame::write_frame(&mut buf, opcode, rsv, payload, mask_key());
                tls.send(&buf, out)
            }
        };
        if compressed.capacity() <= self.keep {
            self.compressed = compressed;
        }
        r
    }

    /// Say goodbye at the TLS level (close_notify), after a close frame; appended to `out`.
    pub fn close_tls(&mut self, out: &mut Vec<u8>) {
        if let Some(tls) = &mut self.tls {
            tls.close();
            tls.take_outgoing(out);
        }
    }

    /// Bytes held for a frame not handled yet (`Stopped` input included).
    pub fn buffered(&self) -> usize {
        match &self.stage {
            Stage::Frames(d) => d.buffered(),
            Stage::Answer(head) => head.len(),
            Stage::Refused => 0,
        }
    }

    /// Hand over what the socket read; events go to `on` in order. `on` returning `Break` stops, keeping
    /// the rest for [`Wire::resume`]. TLS may have records to write afterwards (`take_outgoing`).
    pub fn receive<F>(&mut self, data: &[u8], on: &mut F) -> Result<Fed, WireError>
    where
        F: FnMut(WireEvent<'_>) -> ControlFlow<()>,
    {
        match &mut self.tls {
            None => self.plaintext(data, on),
            Some(tls) => {
                let mut plain = std::mem::take(&mut self.plain);
                let r = tls.receive(data, &mut plain).map_err(WireError::Tls);
                let fed = r.and_then(|()| self.plaintext(&plain, on));
                plain.clear();
                if plain.capacity() <= self.keep {
                    self.plain = plain;
                }
                fed
            }
        }
    }

    /// Go on with input kept by a stop.
    pub fn resume<F>(&mut self, on: &mut F) -> Result<Fed, WireError>
    where
        F: FnMut(WireEvent<'_>) -> ControlFlow<()>,
    {
        self.plaintext(&[], on)
    }

    fn plaintext<F>(&mut self, data: &[u8], on: &mut F) -> Result<Fed, WireError>
    where
        F: FnMut(WireEvent<'_>) -> ControlFlow<()>,
    {
        let mut data = data;
        let head_rest: Vec<u8>;
        if let Stage::Answer(head) = &mut self.stage {
            if data.is_empty() {
                return Ok(Fed::All);
            }
            head.extend_from_slice(data);
            let Some((answer, used)) = upgrade::parse_answer(head).map_err(WireError::NotHttp)? else {
                return Ok(Fed::All);
            };
            head_rest = head.split_off(used);
            let agreed = match answer.check(&self.accept, self.offer.as_ref(), &self.protocols) {
                Ok(agreed) => agreed,
                Err(refusal) => {
                    self.stage = Stage::Refused;
                    // nothing more is read, whatever the receiver says
                    let _ = on(WireEvent::Answer(Err(refusal)));
                    return Ok(Fed::All);
                }
            };
            // `Break` at the answer: the receiver wants no frames
            if on(WireEvent::Answer(Ok(()))).is_break() {
                self.stage = Stage::Refused;
                return Ok(Fed::All);
            }
            let mut decoder = Decoder::new(self.max_message_size, self.keep);
            if let Some(a) = agreed {
                self.deflater = Some(a.deflater());
                decoder = decoder.inflating(a.inflater());
            }
            self.stage = Stage::Frames(decoder);
            // all of `data` went into the head: the frames that came with the answer are its rest
            data = &head_rest;
        }
        match &mut self.stage {
            Stage::Frames(d) => d.feed(data, &mut |f| on(WireEvent::Frame(f))).map_err(WireError::Violation),
            Stage::Refused | Stage::Answer(_) => Ok(Fed::All),
        }
    }
}

/// Masking keys drawn from the thread's generator in blocks (RFC 6455 §5.3: unpredictable, from a
/// strong source of entropy): one call into it per 64 frames instead of one per frame, which a paced
/// sender writing a frame per message pays every time.
fn mask_key() -> [u8; 4] {
    const BLOCK: usize = 64 * 4;
    thread_local! {
        static KEYS: std::cell::RefCell<([u8; BLOCK], usize)> = const { std::cell::RefCell::new(([0; BLOCK], BLOCK)) };
    }
    KEYS.with(|k| {
        let (keys, next) = &mut *k.borrow_mut();
        if *next == BLOCK {
            rand::fill(&mut keys[..]);
            *next = 0;
        }
        let key = [keys[*next], keys[*next + 1], keys[*next + 2], keys[*next + 3]];
        *next += 4;
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::Agreed;
    use crate::ws::upgrade::{accept_for, request, Endpoint};

    fn answer_head(accept: &str) -> Vec<u8> {
        answer_with(accept, "")
    }

    /// A 101 answer with `extra` header lines.
    fn answer_with(accept: &str, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn wire() -> (Wire, Request) {
        wire_offering(None)
    }

    fn wire_offering(offer: Option<&Offer>) -> (Wire, Request) {
        let req = request(&Endpoint::parse("ws://h/").unwrap(), &[], [3; 16], offer);
        (Wire::new(None, &req, 1000, 64).unwrap(), req)
    }

    /// Events as text: "answer ok", "refused: why" or the frame's Debug.
    fn events(w: &mut Wire, data: &[u8], stop_at_answer: bool) -> Result<Vec<String>, WireError> {
        let mut got = vec![];
        w.receive(data, &mut |e| {
            got.push(match e {
                WireEvent::Answer(Ok(())) => "answer ok".to_string(),
                WireEvent::Answer(Err(r)) => format!("refused: {r:?}"),
                WireEvent::Frame(f) => format!("{f:?}"),
            });
            if stop_at_answer {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(got)
    }

    #[test]
    fn the_request_goes_out_first_then_the_answer_and_the_frames_behind_it_come_in() {
        let (mut w, req) = wire();
        let mut out = vec![];
        w.take_outgoing(&mut out).unwrap();
        assert_eq!(out, req.bytes);
        let mut data = answer_head(&req.accept);
        data.extend_from_slice(b"\x81\x02hi\x89\x00");
        // the answer split in two reads, the frames in the second
        let (a, b) = data.split_at(20);
        assert!(events(&mut w, a, false).unwrap().is_empty());
        assert_eq!(events(&mut w, b, false).unwrap(), vec!["answer ok", "Text(\"hi\")", "Ping([])"]);
        let mut out = vec![];
        w.frame(frame::OP_TEXT, b"x", &mut out).unwrap();
        assert_eq!((out[0], out[1]), (0x81, 0x81), "a final text frame, masked");
    }

    #[test]
    fn a_refused_answer_reads_no_frames() {
        let (mut w, _) = wire();
        let mut data = answer_head(&accept_for("another key"));
        data.extend_from_slice(b"\x81\x02hi");
        let got = events(&mut w, &data, false).unwrap();
        assert!(matches!(&got[..], [r] if r.contains("Sec-WebSocket-Accept")), "{got:?}");
        assert!(events(&mut w, b"\x81\x02hi", false).unwrap().is_empty());
        let (mut w, _) = wire();
        let redirect = b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n\x81\x02hi";
        let got = events(&mut w, redirect, false).unwrap();
        assert!(matches!(&got[..], [r] if r.contains("status: 302")), "{got:?}");
        // the receiver may refuse a good answer too
        let (mut w, req) = wire();
        let mut data = answer_head(&req.accept);
        data.extend_from_slice(b"\x81\x02hi");
        assert_eq!(events(&mut w, &data, true).unwrap(), vec!["answer ok"]);
        assert!(events(&mut w, b"\x81\x02hi", false).unwrap().is_empty());
    }

    /// A client frame as the server reads it: first byte and unmasked payload.
    fn unmask(f: &[u8]) -> (u8, Vec<u8>) {
        let (len, at) = match f[1] & 0x7F {
            126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
            127 => (u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert_eq!(f.len(), at + 4 + len, "one frame");
        let mask = &f[at..at + 4];
        (f[0], f[at + 4..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect())
    }

    /// What websockets' server answers the default offer with.
    const WEBSOCKETS_DEFLATE: &str = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12";

    fn extensions(value: &str) -> String {
        format!("Sec-WebSocket-Extensions: {value}\r\n")
    }

    #[test]
    fn an_agreed_deflate_compresses_data_frames_and_inflates_the_servers() {
        let offer = Offer::default();
        let (mut w, req) = wire_offering(Some(&offer));
        let mut out = vec![];
        w.take_outgoing(&mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("Sec-WebSocket-Extensions: permessage-deflate"));
        let agreed = crate::ws::deflate::negotiate(Some(&offer), &[WEBSOCKETS_DEFLATE]).unwrap().unwrap();
        // the server's side: it compresses with its window and inflates with ours
        let server = Agreed { client_max_window_bits: agreed.server_max_window_bits, ..agreed };
        let mut server_tx = server.deflater();
        let mut server_rx = Agreed { server_max_window_bits: agreed.client_max_window_bits, ..agreed }.inflater();

        let mut data = answer_with(&req.accept, &extensions(WEBSOCKETS_DEFLATE));
        let mut payload = vec![];
        assert!(server_tx.compress(b"compressed hello", &mut payload));
        data.extend_from_slice(&[0xC1, payload.len() as u8]);
        data.extend_from_slice(&payload);
        data.extend_from_slice(b"\x81\x05plain");
        assert_eq!(
            events(&mut w, &data, false).unwrap(),
            vec!["answer ok", "Text(\"compressed hello\")", "Text(\"plain\")"]
        );

        let msg =
            br#"{"type":"offer","sdp":"v=0 o=- 4611731400430051336 2 IN IP4 127.0.0.1 s=- t=0 0 a=group:BUNDLE 0"}"#;
        let mut sizes = vec![];
        for _ in 0..2 {
            let mut out = vec![];
            w.frame(frame::OP_TEXT, msg, &mut out).unwrap();
            let (b0, payload) = unmask(&out);
            assert_eq!(b0, 0xC1, "FIN, RSV1, text");
            let mut back = vec![];
            server_rx.inflate(&payload, true, &mut back, 1000).unwrap();
            assert_eq!(back, msg);
            sizes.push(payload.len());
        }
        assert!(sizes[1] < sizes[0] / 4, "the second refers back to the first: {sizes:?}");
        for (op, b0) in [(frame::OP_PING, 0x89), (frame::OP_PONG, 0x8A), (frame::OP_CLOSE, 0x88)] {
            let mut out = vec![];
            w.frame(op, b"control", &mut out).unwrap();
            assert_eq!(unmask(&out), (b0, b"control".to_vec()), "control frames are never compressed");
        }
    }

    #[test]
    fn a_declined_offer_compresses_nothing_and_rsv1_is_a_violation() {
        let (mut w, req) = wire_offering(Some(&Offer::default()));
        assert_eq!(events(&mut w, &answer_head(&req.accept), false).unwrap(), vec!["answer ok"]);
        let mut out = vec![];
        w.frame(frame::OP_TEXT, b"hello hello hello hello", &mut out).unwrap();
        assert_eq!(unmask(&out), (0x81, b"hello hello hello hello".to_vec()));
        let e = events(&mut w, b"\xC1\x03abc", false).unwrap_err();
        assert!(matches!(&e, WireError::Violation(v) if v.code() == 1002), "{e:?}");
    }

    #[test]
    fn an_extension_answer_the_offer_does_not_allow_is_refused() {
        for (offer, extra, why) in [
            (Some(Offer::default()), "permessage-deflate; server_max_window_bits=16", "is not 8..15"),
            (Some(Offer::default()), "permessage-deflate; foo", "unknown parameter foo"),
            (None, WEBSOCKETS_DEFLATE, "not offered"),
        ] {
            let (mut w, req) = wire_offering(offer.as_ref());
            let mut data = answer_with(&req.accept, &extensions(extra));
            data.extend_from_slice(b"\x81\x02hi");
            let got = events(&mut w, &data, false).unwrap();
            assert!(matches!(&got[..], [r] if r.starts_with("refused") && r.contains(why)), "{extra}: {got:?}");
        }
    }

    #[test]
    fn violations_and_non_http_answers_are_errors() {
        let (mut w, req) = wire();
        let mut data = answer_head(&req.accept);
        data.extend_from_slice(b"\x81\x02\xff\xfe");
        assert_eq!(events(&mut w, &data, false), Err(WireError::Violation(Violation::InvalidUtf8)));
        let (mut w, _) = wire();
        assert!(matches!(events(&mut w, b"SSH-2.0-x\r\n\r\n", false), Err(WireError::NotHttp(_))));
    }
}
