//! One error type for the whole core. The bindings map each variant to one Python exception
//! class of `tether.core.errors` (see `py/errors.rs`); nothing else decides how an error looks.
//!
//! Messages are written for the person reading a log: what happened and what to do. None of
//! them carries key material or plaintext; authentication failures carry no detail at all, so an
//! attacker learns nothing from them.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A frame header announced more bytes than the decoder's limit (checked before allocating).
    FrameTooLarge { len: u64, max: u64 },
    /// The byte stream is not valid framing (or a frame is too large to encode).
    Frame(String),
    /// A routed message is malformed: truncated, trailing bytes, bad counts or lengths, or an
    /// unknown version.
    Route(String),
    /// AEAD authentication failed. Deliberately carries no detail.
    Decrypt,
    /// A message repeats a nonce already delivered, or is older than the replay window.
    Replay { nonce: u64, reason: ReplayReason },
    /// The handshake failed (bad message, bad key, wrong protocol name).
    Handshake(String),
    /// A cipher state reached the last nonce (2^64-1 is never used): start a new handshake.
    NonceExhausted,
    /// A key, nonce or buffer argument has the wrong size or value.
    InvalidArgument(String),
    /// The call is not legal in the object's current state (for example, writing a handshake
    /// message when it is the peer's turn).
    State(String),
    /// The object failed earlier in a way it cannot recover from and refuses all further use.
    Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayReason {
    Duplicate,
    TooOld,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::FrameTooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds the limit of {max} bytes; the peer is misbehaving or \
                 the limit is set too low"
            ),
            Error::Frame(m) => write!(f, "malformed frame stream: {m}"),
            Error::Route(m) => write!(f, "malformed routed message: {m}"),
            Error::Decrypt => {
                f.write_str("message authentication failed (forged, corrupted or wrong key)")
            }
            Error::Replay {
                nonce,
                reason: ReplayReason::Duplicate,
            } => {
                write!(f, "replayed message: nonce {nonce} was already received")
            }
            Error::Replay {
                nonce,
                reason: ReplayReason::TooOld,
            } => {
                write!(
                    f,
                    "message too old: nonce {nonce} is behind the anti-replay window"
                )
            }
            Error::Handshake(m) => write!(f, "Noise handshake failed: {m}"),
            Error::NonceExhausted => f.write_str(
                "cipher state exhausted its nonces (2^64-1 is never used); open a new channel",
            ),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::State(m) => write!(f, "not allowed in this state: {m}"),
            Error::Broken => f.write_str(
                "this object failed earlier and cannot be used any more; start a new handshake",
            ),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
