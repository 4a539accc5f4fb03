//! Noise XX (The Noise Protocol Framework, revision 34).
//!
//! The handshake itself is `snow`'s (a well-kept implementation; we re-implement nothing of
//! §5's SymmetricState/HandshakeState), running on the primitives of `resolver` (X25519 from AWS-LC, the rest from `ring`). On `split()`
//! (§5.2) the two keys leave `snow` and become our own [`CipherState`]s over `ring`'s AEADs, so the
//! transport hot path is one AEAD call with no boxing and the output written straight into the
//! caller's buffer:
//!
//! * [`handshakestate`] — [`Handshake`]: XX only, over 25519 with AESGCM or ChaChaPoly and SHA256
//!   or BLAKE2s, under the standard protocol names. Turning into a transport consumes it.
//! * [`cipherstate`] — §5.1 CipherState: implicit counter nonce, `REKEY`, 2^64-1 never used.
//! * [`transportstate`] — the pair of CipherStates after `split()`, plus the handshake hash and
//!   the peer's static key.

pub mod cipherstate;
pub mod handshakestate;
mod resolver;
pub mod transportstate;

pub use cipherstate::CipherState;
pub use handshakestate::{generate_keypair, public_key, x25519, Handshake, Suite};
pub use transportstate::TransportState;

/// The largest Noise message (§3).
pub const MAX_MESSAGE_LEN: usize = 65535;
/// The largest transport payload: a Noise message less the AEAD tag.
pub const MAX_PAYLOAD_LEN: usize = MAX_MESSAGE_LEN - crate::aead::TAG_LEN;
