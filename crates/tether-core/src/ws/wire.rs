//! One client connection's bytes, without I/O: TLS (for `wss://`), the upgrade request and its
//! answer, then frames. The front end hands over what the socket read ([`Wire::receive`]) and writes
//! what [`Wire::take_outgoing`] and [`Wire::frame`] give it; the events it gets back are the server's
//! answer to the upgrade, then its messages and control frames.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::frame::{self, Decoder, Fed, Inbound, Violation};
use super::tls::{TlsError, TlsSession};
use super::upgrade::{self, Answer, Request};

/// What the server sent.
#[derive(Debug)]
pub enum WireEvent<'a> {
    /// Its answer to the upgrade request (checked by the receiver with `Answer::check`); what follows
    /// is frames if it opened the WebSocket.
    Answer(Answer),
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

    /// Append one frame for the server to `out` (encrypted when TLS is on).
    pub fn frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        let n = frame::frame_len(payload.len());
        match &mut self.tls {
            None => {
                let at = out.len();
                out.resize(at + n, 0);
                frame::write_frame(&mut out[at..], opcode, 0, payload, rand::random());
            }
            Some(tls) => {
                let mut buf = vec![0u8; n];
                frame::write_frame(&mut buf, opcode, 0, payload, rand::random());
                tls.send(&buf, out)?;
            }
        }
        Ok(())
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
            let opened = answer.status == 101;
            // `Break` at the answer: the receiver refused it (a wrong accept value): read no frames
            if on(WireEvent::Answer(answer)).is_break() || !opened {
                self.stage = Stage::Refused;
                return Ok(Fed::All);
            }
            self.stage = Stage::Frames(Decoder::new(self.max_message_size, self.keep));
            // all of `data` went into the head: the frames that came with the answer are its rest
            data = &head_rest;
        }
        match &mut self.stage {
            Stage::Frames(d) => d.feed(data, &mut |f| on(WireEvent::Frame(f))).map_err(WireError::Violation),
            Stage::Refused | Stage::Answer(_) => Ok(Fed::All),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::upgrade::{accept_for, request, Endpoint};

    fn answer_head(accept: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes()
    }

    fn wire() -> (Wire, Request) {
        let req = request(&Endpoint::parse("ws://h/").unwrap(), &[], [3; 16]);
        (Wire::new(None, &req, 1000, 64).unwrap(), req)
    }

    /// Events as text: "answer 101" or the frame's Debug.
    fn events(w: &mut Wire, data: &[u8], stop_at_answer: bool) -> Result<Vec<String>, WireError> {
        let mut got = vec![];
        w.receive(data, &mut |e| {
            got.push(match e {
                WireEvent::Answer(a) => format!("answer {}", a.status),
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
        assert_eq!(events(&mut w, b, false).unwrap(), vec!["answer 101", "Text(\"hi\")", "Ping([])"]);
        let mut out = vec![];
        w.frame(frame::OP_TEXT, b"x", &mut out).unwrap();
        assert_eq!((out[0], out[1]), (0x81, 0x81), "a final text frame, masked");
    }

    #[test]
    fn a_refused_answer_reads_no_frames() {
        let (mut w, _) = wire();
        let mut data = answer_head(&accept_for("another key"));
        data.extend_from_slice(b"\x81\x02hi");
        assert_eq!(events(&mut w, &data, true).unwrap(), vec!["answer 101"]);
        assert!(events(&mut w, b"\x81\x02hi", false).unwrap().is_empty());
        let (mut w, _) = wire();
        let redirect = b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n\x81\x02hi";
        assert_eq!(events(&mut w, redirect, false).unwrap(), vec!["answer 302"]);
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
