//! Portal session messages (`docs/portals.md`, "Protocol"): a sans-IO, allocation-free decoder
//! and its encoder.
//!
//! ```text
//! payload = kind:u8 rest
//!   kind = KIND_ERROR (1): rest = reason        an error report: the path to the peer failed
//!   any other kind:        rest = type:u8 body  a session message (the sender writes KIND_DATA)
//!
//! type      body
//! 1 OPEN    ignored (written empty)
//! 2 DATA    0..=MAX_DATA bytes of the stream
//! 3 EOF     ignored (written empty)
//! 4 CLOSE   the reason, UTF-8; only its first MAX_REASON bytes are kept
//! 5 CREDIT  u32 big-endian: credit units returned
//! ```
//!
//! Decoding accepts exactly what both data planes' drivers accept (one decoder for both), and
//! refuses with the same texts: a kind other than [`KIND_ERROR`] is read as data, the body of OPEN
//! and EOF is ignored, an empty DATA is accepted, and a reason longer than [`MAX_REASON`] bytes is
//! cut (as a borrowed slice; the caller decodes it as UTF-8 with replacement). Session state
//! (DATA after EOF, flow-control overruns) is the session's business, not this module's.
//!
//! Every decoded message borrows from the payload: `Data`, `Close` and `PathFailed` are slices of
//! it, nothing is copied. Encoding a decoded message and decoding the result gives the same
//! message back; the encoding of a payload is canonical except where the list above says bytes
//! are ignored or cut.

use std::fmt;

pub mod session;

pub use session::{charge, Action, Control, Session, MIN_CHARGE};

/// The kind byte of a data message (`tether.core.message.KIND_DATA`).
pub const KIND_DATA: u8 = 0;
/// The kind byte of an error report from a node on the path (`tether.core.message.KIND_ERROR`).
pub const KIND_ERROR: u8 = 1;

pub const T_OPEN: u8 = 1;
pub const T_DATA: u8 = 2;
pub const T_EOF: u8 = 3;
pub const T_CLOSE: u8 = 4;
pub const T_CREDIT: u8 = 5;

/// The largest DATA body (240 KiB: one DATA is one channel fragment).
pub const MAX_DATA: usize = 240 * 1024;
/// The most bytes of a CLOSE or error-report reason that are kept (and sent).
pub const MAX_REASON: usize = 1024;
/// How many ended sessions an outlet remembers, so that what their inlets still send (a late
/// OPEN among it) is dropped quietly instead of answered with a second CLOSE.
pub const ENDED_MEMORY: usize = 4096;
/// The size of a CREDIT body.
pub const CREDIT_LEN: usize = 4;
/// Kind and type bytes in front of a session message's body.
pub const HEADER_LEN: usize = 2;

/// One decoded portal message, borrowing from the payload it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortalMessage<'a> {
    /// Open a session (a repeated OPEN is harmless).
    Open,
    /// Bytes of the stream, at most [`MAX_DATA`].
    Data(&'a [u8]),
    /// The sender shut its write half.
    Eof,
    /// The session is over; the reason (at most [`MAX_REASON`] bytes, maybe empty).
    Close(&'a [u8]),
    /// Credit units returned by the receiver.
    Credit(u32),
    /// A kind-1 error report: a node on the path could not deliver; the reason (at most
    /// [`MAX_REASON`] bytes, maybe empty).
    PathFailed(&'a [u8]),
}

/// A refused portal message (or, for [`PortalError::ReasonTooLong`], a refused encode). Every
/// decode error is a protocol error: the session ends and the peer is told why (its `Display`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortalError {
    /// Fewer than the two header bytes, and not an error report.
    Empty,
    /// A DATA body of this many bytes, more than [`MAX_DATA`].
    DataTooLarge(usize),
    /// A CREDIT body of this many bytes instead of [`CREDIT_LEN`].
    MalformedCredit(usize),
    /// A type byte this protocol does not define.
    UnknownType(u8),
    /// Encoding only: a CLOSE or error-report reason of this many bytes, more than
    /// [`MAX_REASON`] (see [`truncate_reason`]).
    ReasonTooLong(usize),
}

impl fmt::Display for PortalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortalError::Empty => f.write_str("protocol error: empty portal message"),
            PortalError::DataTooLarge(n) => {
                write!(f, "protocol error: DATA of {n} bytes (at most {MAX_DATA})")
            }
            PortalError::MalformedCredit(_) => f.write_str("protocol error: malformed CREDIT"),
            PortalError::UnknownType(t) => {
                write!(f, "protocol error: unknown portal message type {t}")
            }
            PortalError::ReasonTooLong(n) => write!(
                f,
                "a portal reason is at most {MAX_REASON} bytes, got {n}; cut it with truncate_reason"
            ),
        }
    }
}

impl std::error::Error for PortalError {}

impl<'a> PortalMessage<'a> {
    /// Decode one portal payload (kind byte, type byte, body). Allocates nothing.
    pub fn decode(payload: &'a [u8]) -> Result<Self, PortalError> {
        match payload {
            [KIND_ERROR, reason @ ..] => Ok(PortalMessage::PathFailed(cut(reason))),
            [_kind, t, body @ ..] => match *t {
                T_OPEN => Ok(PortalMessage::Open),
                T_DATA if body.len() > MAX_DATA => Err(PortalError::DataTooLarge(body.len())),
                T_DATA => Ok(PortalMessage::Data(body)),
                T_EOF => Ok(PortalMessage::Eof),
                T_CLOSE => Ok(PortalMessage::Close(cut(body))),
                T_CREDIT => match <[u8; CREDIT_LEN]>::try_from(body) {
                    Ok(n) => Ok(PortalMessage::Credit(u32::from_be_bytes(n))),
                    Err(_) => Err(PortalError::MalformedCredit(body.len())),
                },
                other => Err(PortalError::UnknownType(other)),
            },
            _ => Err(PortalError::Empty),
        }
    }

    /// The type byte, or `None` for an error report (which has none).
    pub fn message_type(&self) -> Option<u8> {
        match self {
            PortalMessage::Open => Some(T_OPEN),
            PortalMessage::Data(_) => Some(T_DATA),
            PortalMessage::Eof => Some(T_EOF),
            PortalMessage::Close(_) => Some(T_CLOSE),
            PortalMessage::Credit(_) => Some(T_CREDIT),
            PortalMessage::PathFailed(_) => None,
        }
    }

    /// Check the limits [`Self::encode_into`] enforces: DATA at most [`MAX_DATA`] bytes, a
    /// reason at most [`MAX_REASON`].
    pub fn check(&self) -> Result<(), PortalError> {
        match *self {
            PortalMessage::Data(b) if b.len() > MAX_DATA => Err(PortalError::DataTooLarge(b.len())),
            PortalMessage::Close(r) | PortalMessage::PathFailed(r) if r.len() > MAX_REASON => {
                Err(PortalError::ReasonTooLong(r.len()))
            }
            _ => Ok(()),
        }
    }

    /// The encoded size.
    pub fn encoded_len(&self) -> usize {
        match *self {
            PortalMessage::Open | PortalMessage::Eof => HEADER_LEN,
            PortalMessage::Data(b) | PortalMessage::Close(b) => HEADER_LEN + b.len(),
            PortalMessage::Credit(_) => HEADER_LEN + CREDIT_LEN,
            PortalMessage::PathFailed(r) => 1 + r.len(),
        }
    }

    /// Append the encoding to `out`, after checking the limits ([`Self::check`]); on an error
    /// `out` is unchanged.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), PortalError> {
        self.check()?;
        out.reserve(self.encoded_len());
        match *self {
            PortalMessage::PathFailed(r) => {
                out.push(KIND_ERROR);
                out.extend_from_slice(r);
            }
            PortalMessage::Credit(n) => {
                out.extend_from_slice(&[KIND_DATA, T_CREDIT]);
                out.extend_from_slice(&n.to_be_bytes());
            }
            PortalMessage::Data(b) | PortalMessage::Close(b) => {
                out.extend_from_slice(&[KIND_DATA, self.message_type().unwrap_or_default()]);
                out.extend_from_slice(b);
            }
            PortalMessage::Open | PortalMessage::Eof => {
                out.extend_from_slice(&[KIND_DATA, self.message_type().unwrap_or_default()]);
            }
        }
        Ok(())
    }

    /// The encoding, in a new vector.
    pub fn encode(&self) -> Result<Vec<u8>, PortalError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// The first [`MAX_REASON`] bytes of a received reason.
fn cut(reason: &[u8]) -> &[u8] {
    &reason[..reason.len().min(MAX_REASON)]
}

/// `reason` cut to at most [`MAX_REASON`] bytes at a character boundary: what a CLOSE or an
/// error report carries.
pub fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(payload: &[u8]) -> Result<PortalMessage<'_>, PortalError> {
        PortalMessage::decode(payload)
    }

    #[test]
    fn known_encodings() {
        let data = [7u8; 3];
        let cases: [(PortalMessage<'_>, &[u8]); 6] = [
            (PortalMessage::Open, &[0, 1]),
            (PortalMessage::Data(&data), &[0, 2, 7, 7, 7]),
            (PortalMessage::Eof, &[0, 3]),
            (PortalMessage::Close(b"bye"), b"\x00\x04bye"),
            (PortalMessage::Credit(0x0102_0304), &[0, 5, 1, 2, 3, 4]),
            (PortalMessage::PathFailed(b"no route"), b"\x01no route"),
        ];
        for (m, enc) in cases {
            assert_eq!(m.encode().unwrap(), enc, "{m:?}");
            assert_eq!(m.encoded_len(), enc.len());
            assert_eq!(d(enc), Ok(m));
        }
    }

    #[test]
    fn round_trip() {
        let big = vec![0xa5u8; MAX_DATA];
        let reason = [b'r'; MAX_REASON];
        let messages = [
            PortalMessage::Open,
            PortalMessage::Eof,
            PortalMessage::Data(b""),
            PortalMessage::Data(b"x"),
            PortalMessage::Data(&big),
            PortalMessage::Close(b""),
            PortalMessage::Close(&reason),
            PortalMessage::Credit(0),
            PortalMessage::Credit(u32::MAX),
            PortalMessage::PathFailed(b""),
            PortalMessage::PathFailed(&reason),
        ];
        for m in messages {
            let enc = m.encode().unwrap();
            assert_eq!(enc.len(), m.encoded_len());
            assert_eq!(d(&enc).unwrap(), m);
        }
    }

    #[test]
    fn decoding_borrows_the_payload() {
        let payload = b"\x00\x02stream bytes";
        let Ok(PortalMessage::Data(body)) = d(payload) else {
            panic!("not DATA");
        };
        assert_eq!(body.as_ptr(), payload[2..].as_ptr());
    }

    #[test]
    fn errors_carry_the_engine_texts() {
        assert_eq!(d(b""), Err(PortalError::Empty));
        assert_eq!(d(&[0]), Err(PortalError::Empty));
        assert_eq!(d(&[7]), Err(PortalError::Empty));
        assert_eq!(
            PortalError::Empty.to_string(),
            "protocol error: empty portal message"
        );
        let mut over = vec![0, T_DATA];
        over.resize(HEADER_LEN + MAX_DATA + 1, 0);
        assert_eq!(d(&over), Err(PortalError::DataTooLarge(MAX_DATA + 1)));
        assert_eq!(
            d(&over).unwrap_err().to_string(),
            "protocol error: DATA of 245761 bytes (at most 245760)"
        );
        for body in [&b""[..], b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"] {
            let mut p = vec![0, T_CREDIT];
            p.extend_from_slice(body);
            assert_eq!(d(&p), Err(PortalError::MalformedCredit(body.len())));
            assert_eq!(
                d(&p).unwrap_err().to_string(),
                "protocol error: malformed CREDIT"
            );
        }
        for t in [0u8, 6, 255] {
            assert_eq!(d(&[0, t]), Err(PortalError::UnknownType(t)));
        }
        assert_eq!(
            d(&[0, 9, 1]).unwrap_err().to_string(),
            "protocol error: unknown portal message type 9"
        );
    }

    #[test]
    fn lenient_where_the_engine_is() {
        // The body of OPEN and EOF is ignored; a kind other than KIND_ERROR reads as data.
        assert_eq!(d(b"\x00\x01junk"), Ok(PortalMessage::Open));
        assert_eq!(d(b"\x00\x03junk"), Ok(PortalMessage::Eof));
        assert_eq!(d(b"\x09\x02ab"), Ok(PortalMessage::Data(b"ab")));
        assert_eq!(d(&[1]), Ok(PortalMessage::PathFailed(b"")));
        // Reasons are cut to MAX_REASON bytes.
        let mut close = vec![0, T_CLOSE];
        close.resize(HEADER_LEN + MAX_REASON + 10, b'z');
        assert_eq!(
            d(&close),
            Ok(PortalMessage::Close(&close[2..2 + MAX_REASON]))
        );
        let mut report = vec![KIND_ERROR];
        report.resize(1 + MAX_REASON + 10, b'z');
        assert_eq!(
            d(&report),
            Ok(PortalMessage::PathFailed(&report[1..=MAX_REASON]))
        );
    }

    #[test]
    fn encode_checks_limits_and_leaves_out_unchanged() {
        let big = vec![0u8; MAX_DATA + 1];
        let long = vec![b'r'; MAX_REASON + 1];
        let mut out = vec![9];
        assert_eq!(
            PortalMessage::Data(&big).encode_into(&mut out),
            Err(PortalError::DataTooLarge(MAX_DATA + 1))
        );
        assert_eq!(
            PortalMessage::Close(&long).encode_into(&mut out),
            Err(PortalError::ReasonTooLong(MAX_REASON + 1))
        );
        assert_eq!(
            PortalMessage::PathFailed(&long).encode_into(&mut out),
            Err(PortalError::ReasonTooLong(MAX_REASON + 1))
        );
        assert_eq!(out, [9]);
        PortalMessage::Eof.encode_into(&mut out).unwrap();
        assert_eq!(out, [9, 0, 3]);
    }

    #[test]
    fn truncate_reason_cuts_at_a_character_boundary() {
        assert_eq!(truncate_reason("short"), "short");
        let s = "é".repeat(MAX_REASON); // 2 bytes each
        assert_eq!(truncate_reason(&s).len(), MAX_REASON);
        let odd = format!("x{s}");
        assert_eq!(truncate_reason(&odd).len(), MAX_REASON - 1);
        assert_eq!(
            PortalMessage::Close(truncate_reason(&odd).as_bytes()).check(),
            Ok(())
        );
    }
}
