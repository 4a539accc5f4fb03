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
//! 4 CLOSE   the reason, UTF-8; only its first MAX_REASON bytes are kept
//! 6 DATA    seq:u64, then 0..=MAX_DATA bytes of the stream
//! 7 EOF     seq:u64
//! 8 ACK     next:u64 consumed:u64 flags:u8 (ACK_RESEND, ACK_PROBE; the others zero)
//! 2, 3, 5   retired: DATA, EOF and CREDIT of the protocol before sequence numbers
//! ```
//!
//! Integers are big-endian. DATA and EOF share one sequence per direction (0, 1, 2, …): the
//! receiver takes them in that order only, drops what it already has, and its ACK says it has
//! everything before `next` and has written `consumed` credit units to its socket (both
//! cumulative, so a lost ACK is made good by the next one).
//!
//! Decoding accepts exactly what both data planes' drivers accept (one decoder for both), and
//! refuses with the same texts: a kind other than [`KIND_ERROR`] is read as data, the body of
//! OPEN is ignored, an empty DATA is accepted, and a reason longer than [`MAX_REASON`] bytes is
//! cut (as a borrowed slice; the caller decodes it as UTF-8 with replacement). Session state
//! (order, DATA after EOF, flow-control overruns) is the session's business, not this module's.
//!
//! Every decoded message borrows from the payload: the bytes of `Data`, `Close` and `PathFailed`
//! are slices of it, nothing is copied. Encoding a decoded message and decoding the result gives
//! the same message back; the encoding of a payload is canonical except where the list above
//! says bytes are ignored or cut.

use std::fmt;

pub mod session;

pub use session::{charge, Action, Control, Session, MIN_CHARGE};

/// The kind byte of a data message (`tether.core.message.KIND_DATA`).
pub const KIND_DATA: u8 = 0;
/// The kind byte of an error report from a node on the path (`tether.core.message.KIND_ERROR`).
pub const KIND_ERROR: u8 = 1;

pub const T_OPEN: u8 = 1;
pub const T_CLOSE: u8 = 4;
pub const T_DATA: u8 = 6;
pub const T_EOF: u8 = 7;
pub const T_ACK: u8 = 8;
/// Types of the protocol before sequence numbers (DATA, EOF, CREDIT): refused with a word on
/// upgrading the peer.
pub const RETIRED_TYPES: [u8; 3] = [2, 3, 5];

/// The largest DATA body (240 KiB: one DATA is one channel fragment).
pub const MAX_DATA: usize = 240 * 1024;
/// The most bytes of a CLOSE or error-report reason that are kept (and sent).
pub const MAX_REASON: usize = 1024;
/// How many ended sessions an outlet remembers, so that what their inlets still send (a late
/// OPEN among it) is dropped quietly instead of answered with a second CLOSE.
pub const ENDED_MEMORY: usize = 4096;
/// ACK flag: what follows `next` is missing: send it again.
pub const ACK_RESEND: u8 = 1;
/// ACK flag: answer with an ACK (a sender out of credit asks whether any came back).
pub const ACK_PROBE: u8 = 2;
const ACK_FLAGS: u8 = ACK_RESEND | ACK_PROBE;
/// The size of a sequence number.
pub const SEQ_LEN: usize = 8;
/// The size of an ACK body.
pub const ACK_LEN: usize = 17;
/// Kind and type bytes in front of a session message's body.
pub const HEADER_LEN: usize = 2;
/// Kind, type and sequence number in front of a DATA's stream bytes.
pub const DATA_HEADER_LEN: usize = HEADER_LEN + SEQ_LEN;

/// One decoded portal message, borrowing from the payload it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortalMessage<'a> {
    /// Open a session (a repeated OPEN is harmless).
    Open,
    /// Bytes of the stream (at most [`MAX_DATA`]), number `seq` of its direction.
    Data { seq: u64, bytes: &'a [u8] },
    /// The sender shut its write half: number `seq` of its direction.
    Eof { seq: u64 },
    /// The session is over; the reason (at most [`MAX_REASON`] bytes, maybe empty).
    Close(&'a [u8]),
    /// The receiver holds every DATA and EOF before `next` and has written `consumed` credit
    /// units in all; `flags` (`ACK_*`) say more.
    Ack { next: u64, consumed: u64, flags: u8 },
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
    /// A DATA of this many stream bytes, more than [`MAX_DATA`].
    DataTooLarge(usize),
    /// A message of this type whose body has the wrong size (this many bytes) or bits.
    Malformed(u8, usize),
    /// A type byte this protocol does not define.
    UnknownType(u8),
    /// A type of the protocol before sequence numbers: the peer runs an older tether.
    Retired(u8),
    /// Encoding only: a CLOSE or error-report reason of this many bytes, more than
    /// [`MAX_REASON`] (see [`truncate_reason`]).
    ReasonTooLong(usize),
}

fn type_name(t: u8) -> &'static str {
    match t {
        T_OPEN => "OPEN",
        T_CLOSE => "CLOSE",
        T_DATA => "DATA",
        T_EOF => "EOF",
        T_ACK => "ACK",
        _ => "message",
    }
}

impl fmt::Display for PortalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortalError::Empty => f.write_str("protocol error: empty portal message"),
            PortalError::DataTooLarge(n) => {
                write!(f, "protocol error: DATA of {n} bytes (at most {MAX_DATA})")
            }
            PortalError::Malformed(t, n) => {
                write!(f, "protocol error: malformed {} ({n} bytes)", type_name(*t))
            }
            PortalError::UnknownType(t) => {
                write!(f, "protocol error: unknown portal message type {t}")
            }
            PortalError::Retired(t) => write!(
                f,
                "protocol error: portal message type {t} is from an older tether (sessions \
                 without sequence numbers): upgrade tether on the peer's node"
            ),
            PortalError::ReasonTooLong(n) => write!(
                f,
                "a portal reason is at most {MAX_REASON} bytes, got {n}; cut it with truncate_reason"
            ),
        }
    }
}

impl std::error::Error for PortalError {}

fn seq_of(body: &[u8]) -> u64 {
    let mut b = [0u8; SEQ_LEN];
    b.copy_from_slice(&body[..SEQ_LEN]);
    u64::from_be_bytes(b)
}

/// The header of DATA number `seq` (its stream bytes follow).
pub fn data_header(seq: u64) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = KIND_DATA;
    h[1] = T_DATA;
    h[HEADER_LEN..].copy_from_slice(&seq.to_be_bytes());
    h
}

impl<'a> PortalMessage<'a> {
    /// Decode one portal payload (kind byte, type byte, body). Allocates nothing.
    pub fn decode(payload: &'a [u8]) -> Result<Self, PortalError> {
        match payload {
            [KIND_ERROR, reason @ ..] => Ok(PortalMessage::PathFailed(cut(reason))),
            [_kind, t, body @ ..] => match *t {
                T_OPEN => Ok(PortalMessage::Open),
                T_DATA if body.len() < SEQ_LEN => Err(PortalError::Malformed(T_DATA, body.len())),
                T_DATA if body.len() - SEQ_LEN > MAX_DATA => {
                    Err(PortalError::DataTooLarge(body.len() - SEQ_LEN))
                }
                T_DATA => Ok(PortalMessage::Data {
                    seq: seq_of(body),
                    bytes: &body[SEQ_LEN..],
                }),
                T_EOF if body.len() == SEQ_LEN => Ok(PortalMessage::Eof { seq: seq_of(body) }),
                T_CLOSE => Ok(PortalMessage::Close(cut(body))),
                T_ACK if body.len() == ACK_LEN && body[16] & !ACK_FLAGS == 0 => {
                    Ok(PortalMessage::Ack {
                        next: seq_of(body),
                        consumed: seq_of(&body[SEQ_LEN..]),
                        flags: body[16],
                    })
                }
                T_EOF | T_ACK => Err(PortalError::Malformed(*t, body.len())),
                t if RETIRED_TYPES.contains(&t) => Err(PortalError::Retired(t)),
                other => Err(PortalError::UnknownType(other)),
            },
            _ => Err(PortalError::Empty),
        }
    }

    /// The type byte, or `None` for an error report (which has none).
    pub fn message_type(&self) -> Option<u8> {
        match self {
            PortalMessage::Open => Some(T_OPEN),
            PortalMessage::Data { .. } => Some(T_DATA),
            PortalMessage::Eof { .. } => Some(T_EOF),
            PortalMessage::Close(_) => Some(T_CLOSE),
            PortalMessage::Ack { .. } => Some(T_ACK),
            PortalMessage::PathFailed(_) => None,
        }
    }

    /// Check the limits [`Self::encode_into`] enforces: DATA at most [`MAX_DATA`] bytes, a
    /// reason at most [`MAX_REASON`].
    pub fn check(&self) -> Result<(), PortalError> {
        match *self {
            PortalMessage::Data { bytes, .. } if bytes.len() > MAX_DATA => {
                Err(PortalError::DataTooLarge(bytes.len()))
            }
            PortalMessage::Close(r) | PortalMessage::PathFailed(r) if r.len() > MAX_REASON => {
                Err(PortalError::ReasonTooLong(r.len()))
            }
            _ => Ok(()),
        }
    }

    /// The encoded size.
    pub fn encoded_len(&self) -> usize {
        match *self {
            PortalMessage::Open => HEADER_LEN,
            PortalMessage::Data { bytes, .. } => DATA_HEADER_LEN + bytes.len(),
            PortalMessage::Eof { .. } => DATA_HEADER_LEN,
            PortalMessage::Close(b) => HEADER_LEN + b.len(),
            PortalMessage::Ack { .. } => HEADER_LEN + ACK_LEN,
            PortalMessage::PathFailed(r) => 1 + r.len(),
        }
    }

    /// Append the encoding to `out`, after checking the limits ([`Self::check`]); on an error
    /// `out` is unchanged.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), PortalError> {
        self.check()?;
        out.reserve(self.encoded_len());
        if let PortalMessage::PathFailed(r) = *self {
            out.push(KIND_ERROR);
            out.extend_from_slice(r);
            return Ok(());
        }
        out.extend_from_slice(&[KIND_DATA, self.message_type().unwrap_or_default()]);
        match *self {
            PortalMessage::Data { seq, bytes } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            PortalMessage::Eof { seq } => out.extend_from_slice(&seq.to_be_bytes()),
            PortalMessage::Ack {
                next,
                consumed,
                flags,
            } => {
                out.extend_from_slice(&next.to_be_bytes());
                out.extend_from_slice(&consumed.to_be_bytes());
                out.push(flags);
            }
            PortalMessage::Close(b) => out.extend_from_slice(b),
            PortalMessage::Open | PortalMessage::PathFailed(_) => {}
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
            (
                PortalMessage::Data {
                    seq: 0x0102,
                    bytes: &data,
                },
                &[0, 6, 0, 0, 0, 0, 0, 0, 1, 2, 7, 7, 7],
            ),
            (
                PortalMessage::Eof { seq: 9 },
                &[0, 7, 0, 0, 0, 0, 0, 0, 0, 9],
            ),
            (PortalMessage::Close(b"bye"), b"\x00\x04bye"),
            (
                PortalMessage::Ack {
                    next: 3,
                    consumed: 0x0102_0304,
                    flags: ACK_RESEND,
                },
                &[0, 8, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1, 2, 3, 4, 1],
            ),
            (PortalMessage::PathFailed(b"no route"), b"\x01no route"),
        ];
        for (m, enc) in cases {
            assert_eq!(m.encode().unwrap(), enc, "{m:?}");
            assert_eq!(m.encoded_len(), enc.len());
            assert_eq!(d(enc), Ok(m));
        }
        assert_eq!(data_header(0x0102)[..], [0, 6, 0, 0, 0, 0, 0, 0, 1, 2][..]);
    }

    #[test]
    fn round_trip() {
        let big = vec![0xa5u8; MAX_DATA];
        let reason = [b'r'; MAX_REASON];
        let messages = [
            PortalMessage::Open,
            PortalMessage::Eof { seq: 0 },
            PortalMessage::Eof { seq: u64::MAX },
            PortalMessage::Data { seq: 0, bytes: b"" },
            PortalMessage::Data {
                seq: u64::MAX,
                bytes: b"x",
            },
            PortalMessage::Data {
                seq: 1,
                bytes: &big,
            },
            PortalMessage::Close(b""),
            PortalMessage::Close(&reason),
            PortalMessage::Ack {
                next: 0,
                consumed: 0,
                flags: 0,
            },
            PortalMessage::Ack {
                next: u64::MAX,
                consumed: u64::MAX,
                flags: ACK_FLAGS,
            },
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
        let payload = b"\x00\x06\0\0\0\0\0\0\0\x05stream bytes";
        let Ok(PortalMessage::Data { seq: 5, bytes }) = d(payload) else {
            panic!("not DATA 5");
        };
        assert_eq!(bytes.as_ptr(), payload[DATA_HEADER_LEN..].as_ptr());
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
        let mut over = data_header(0).to_vec();
        over.resize(DATA_HEADER_LEN + MAX_DATA + 1, 0);
        assert_eq!(d(&over), Err(PortalError::DataTooLarge(MAX_DATA + 1)));
        assert_eq!(
            d(&over).unwrap_err().to_string(),
            "protocol error: DATA of 245761 bytes (at most 245760)"
        );
        assert_eq!(
            d(&[0, T_DATA, 1, 2]).unwrap_err().to_string(),
            "protocol error: malformed DATA (2 bytes)"
        );
        for (t, body) in [
            (T_EOF, &b""[..]),
            (T_EOF, &[0; 9][..]),
            (T_ACK, &[0; 16][..]),
            (T_ACK, &[0; 18][..]),
        ] {
            let mut p = vec![0, t];
            p.extend_from_slice(body);
            assert_eq!(d(&p), Err(PortalError::Malformed(t, body.len())));
        }
        let mut flags = vec![0, T_ACK];
        flags.extend_from_slice(&[0; 16]);
        flags.push(4);
        assert_eq!(
            d(&flags).unwrap_err().to_string(),
            "protocol error: malformed ACK (17 bytes)"
        );
        for t in [0u8, 9, 255] {
            assert_eq!(d(&[0, t]), Err(PortalError::UnknownType(t)));
        }
        assert_eq!(
            d(&[0, 9, 1]).unwrap_err().to_string(),
            "protocol error: unknown portal message type 9"
        );
        for t in RETIRED_TYPES {
            assert_eq!(d(&[0, t, 0, 0, 0, 0]), Err(PortalError::Retired(t)));
        }
        assert!(d(&[0, 2, b'x'])
            .unwrap_err()
            .to_string()
            .contains("upgrade tether on the peer's node"));
    }

    #[test]
    fn lenient_where_the_engine_is() {
        // The body of OPEN is ignored; a kind other than KIND_ERROR reads as data.
        assert_eq!(d(b"\x00\x01junk"), Ok(PortalMessage::Open));
        assert_eq!(
            d(b"\x09\x06\0\0\0\0\0\0\0\0ab"),
            Ok(PortalMessage::Data {
                seq: 0,
                bytes: b"ab"
            })
        );
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
            PortalMessage::Data {
                seq: 0,
                bytes: &big
            }
            .encode_into(&mut out),
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
        PortalMessage::Open.encode_into(&mut out).unwrap();
        assert_eq!(out, [9, 0, 1]);
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
