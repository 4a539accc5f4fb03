//! The Noise XX handshake (spec rev 34 §7.5 pattern `XX`; §5.3 HandshakeState), driven by `snow`.
//!
//! ```text
//! XX:
//!   -> e
//!   <- e, ee, s, es
//!   -> s, se
//! ```
//!
//! Only the four suites tether speaks are accepted, by their standard names:
//! `Noise_XX_25519_{AESGCM,ChaChaPoly}_{SHA256,BLAKE2s}`.
//!
//! Failure discipline: a handshake message that is refused (tampered, truncated, extended, or
//! from a peer with other keys) makes the handshake **terminal**: every later call returns
//! [`Error::Broken`], as the Noise spec has the handshake aborted on any error (§5.3). It cannot
//! be made atomic here: `snow` rolls back `h` and `ck` after a failed read but not the cipher
//! state's key and nonce, so after a failure late in message 3 (`s` decrypted, `se` mixed, payload
//! refused) the genuine message would no longer decrypt. A fresh handshake is unaffected. Misuse
//! (`State` errors: wrong turn, oversized payload) changes nothing and is not terminal.
//!
//! A finished handshake turns into a transport by a change of type ([`Handshake::split`]
//! consumes it).

use aws_lc_rs::agreement::{PrivateKey, X25519};
use ring::rand::SecureRandom;
use zeroize::{Zeroize, Zeroizing};

use super::MAX_MESSAGE_LEN;
use crate::aead::{Algorithm, KEY_LEN};
use crate::error::{Error, Result};

pub const DH_LEN: usize = 32;

/// Bytes a message adds around its payload, by message index (XX has three messages):
/// `e` | `e` + encrypted `s` + payload tag | encrypted `s` + payload tag.
const OVERHEAD: [usize; 3] = [DH_LEN, DH_LEN + DH_LEN + 16 + 16, DH_LEN + 16 + 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Blake2s,
}

/// A supported protocol suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    pub cipher: Algorithm,
    pub hash: Hash,
}

impl Suite {
    pub const ALL: [Suite; 4] = [
        Suite {
            cipher: Algorithm::Aes256Gcm,
            hash: Hash::Sha256,
        },
        Suite {
            cipher: Algorithm::ChaCha20Poly1305,
            hash: Hash::Sha256,
        },
        Suite {
            cipher: Algorithm::Aes256Gcm,
            hash: Hash::Blake2s,
        },
        Suite {
            cipher: Algorithm::ChaCha20Poly1305,
            hash: Hash::Blake2s,
        },
    ];

    pub fn protocol_name(self) -> String {
        let hash = match self.hash {
            Hash::Sha256 => "SHA256",
            Hash::Blake2s => "BLAKE2s",
        };
        format!("Noise_XX_25519_{}_{hash}", self.cipher.noise_name())
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.protocol_name() == name)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                "unsupported Noise protocol {name:?}; tether speaks Noise_XX_25519_AESGCM_SHA256, \
                 Noise_XX_25519_ChaChaPoly_SHA256, Noise_XX_25519_AESGCM_BLAKE2s and \
                 Noise_XX_25519_ChaChaPoly_BLAKE2s"
            ))
            })
    }
}

/// A fresh X25519 key pair `(private, public)` from the operating system's RNG.
pub fn generate_keypair() -> Result<(Zeroizing<[u8; DH_LEN]>, [u8; DH_LEN])> {
    let mut private = Zeroizing::new([0u8; DH_LEN]);
    ring::rand::SystemRandom::new()
        .fill(private.as_mut())
        .map_err(|_| {
            Error::State("the operating system's random number generator failed".into())
        })?;
    let public = public_key(&private[..])?;
    Ok((private, public))
}

/// The X25519 public key of `private` (RFC 7748 clamping applies).
pub fn public_key(private: &[u8]) -> Result<[u8; DH_LEN]> {
    if private.len() != DH_LEN {
        return Err(Error::InvalidArgument(format!(
            "an X25519 private key is {DH_LEN} bytes, got {}",
            private.len()
        )));
    }
    let refused = || Error::InvalidArgument("the X25519 private key was refused".into());
    let key = PrivateKey::from_private_key(&X25519, private).map_err(|_| refused())?;
    let public = key.compute_public_key().map_err(|_| refused())?;
    let mut out = [0u8; DH_LEN];
    out.copy_from_slice(public.as_ref());
    Ok(out)
}

/// X25519 (RFC 7748) of `private` and the peer's `public`: the same AWS-LC call the handshake's
/// DH uses. Low-order peer keys (an all-zero result) are refused, as Noise allows (§12.1).
pub fn x25519(private: &[u8], public: &[u8]) -> Result<[u8; DH_LEN]> {
    if private.len() != DH_LEN || public.len() != DH_LEN {
        return Err(Error::InvalidArgument(format!(
            "X25519 keys are {DH_LEN} bytes, got {} (private) and {} (public)",
            private.len(),
            public.len()
        )));
    }
    let key = PrivateKey::from_private_key(&X25519, private)
        .map_err(|_| Error::InvalidArgument("the X25519 private key was refused".into()))?;
    let mut out = [0u8; DH_LEN];
    aws_lc_rs::agreement::agree(
        &key,
        aws_lc_rs::agreement::UnparsedPublicKey::new(&X25519, public),
        Error::InvalidArgument("X25519 refused the public key (low order)".into()),
        |shared| {
            out.copy_from_slice(shared);
            Ok(())
        },
    )?;
    Ok(out)
}

fn map_snow(e: &snow::Error) -> Error {
    use snow::error::StateProblem;
    match e {
        snow::Error::Decrypt => Error::Handshake(
            "message authentication failed (tampered, or a peer \
                                                  with different keys or prologue)"
                .into(),
        ),
        snow::Error::Input => Error::Handshake("malformed handshake message (wrong length)".into()),
        snow::Error::Dh => Error::Handshake("Diffie-Hellman failed on the peer's key".into()),
        snow::Error::State(StateProblem::NotTurnToWrite) => {
            Error::State("it is the peer's turn: read its handshake message first".into())
        }
        snow::Error::State(StateProblem::NotTurnToRead) => {
            Error::State("it is our turn: write a handshake message first".into())
        }
        snow::Error::State(StateProblem::HandshakeAlreadyFinished) => {
            Error::State("the handshake is already finished".into())
        }
        other => Error::Handshake(format!("{other}")),
    }
}

/// The keys and facts a finished handshake leaves behind (spec §5.2 `Split()`).
pub struct Split {
    pub suite: Suite,
    pub initiator: bool,
    pub send_key: Zeroizing<[u8; KEY_LEN]>,
    pub recv_key: Zeroizing<[u8; KEY_LEN]>,
    pub handshake_hash: Vec<u8>,
    pub remote_static: [u8; DH_LEN],
}

/// A Noise XX handshake in progress.
pub struct Handshake {
    state: snow::HandshakeState,
    suite: Suite,
    initiator: bool,
    messages: usize,
    broken: bool,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("protocol", &self.suite.protocol_name())
            .field("initiator", &self.initiator)
            .field("messages", &self.messages)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// `ephemeral_key` fixes the ephemeral private key: for test vectors only.
    pub fn new(
        protocol_name: &str,
        initiator: bool,
        static_key: &[u8],
        prologue: &[u8],
        ephemeral_key: Option<&[u8]>,
    ) -> Result<Self> {
        let suite = Suite::parse(protocol_name)?;
        if static_key.len() != DH_LEN {
            return Err(Error::InvalidArgument(format!(
                "the static key is an X25519 private key of {DH_LEN} bytes, got {}",
                static_key.len()
            )));
        }
        let params: snow::params::NoiseParams = protocol_name
            .parse()
            .map_err(|e: snow::Error| Error::InvalidArgument(e.to_string()))?;
        let mut builder = snow::Builder::with_resolver(params, Box::new(super::resolver::Resolver))
            .local_private_key(static_key)
            .and_then(|b| b.prologue(prologue))
            .map_err(|e| map_snow(&e))?;
        if let Some(e) = ephemeral_key {
            if e.len() != DH_LEN {
                return Err(Error::InvalidArgument(format!(
                    "an ephemeral key is {DH_LEN} bytes, got {}",
                    e.len()
                )));
            }
            builder = builder.fixed_ephemeral_key_for_testing_only(e);
        }
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(|e| map_snow(&e))?;
        Ok(Self {
            state,
            suite,
            initiator,
            messages: 0,
            broken: false,
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    pub fn is_finished(&self) -> bool {
        !self.broken && self.state.is_handshake_finished()
    }

    /// A refused message ended this handshake; start a new one.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn is_my_turn(&self) -> bool {
        !self.is_finished() && self.state.is_my_turn()
    }

    /// The handshake hash `h` so far (final once the handshake is finished).
    pub fn handshake_hash(&self) -> &[u8] {
        self.state.get_handshake_hash()
    }

    /// The peer's static public key, once its message carrying `s` has been read.
    /// `None` on a broken handshake: a refused message may have carried an `s` that decrypted
    /// (the failure came later), and such a key must not be reported as the peer's.
    pub fn remote_static(&self) -> Option<&[u8]> {
        if self.broken {
            return None;
        }
        self.state.get_remote_static()
    }

    /// The most payload bytes the next message can carry.
    pub fn max_payload_len(&self) -> usize {
        MAX_MESSAGE_LEN - OVERHEAD[self.messages.min(2)]
    }

    /// Write the next handshake message carrying `payload`.
    pub fn write_message(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.is_finished() {
            return Err(Error::State("the handshake is already finished".into()));
        }
        if payload.len() > self.max_payload_len() {
            return Err(Error::InvalidArgument(format!(
                "handshake payload of {} bytes exceeds the {} bytes this message can carry",
                payload.len(),
                self.max_payload_len()
            )));
        }
        // snow wants room for a tag even on the first, unencrypted, message.
        let mut out = vec![0u8; payload.len() + OVERHEAD[self.messages] + 16];
        let n = self.state.write_message(payload, &mut out).map_err(|e| {
            let e = map_snow(&e);
            if !matches!(e, Error::State(_)) {
                self.broken = true;
            }
            e
        })?;
        out.truncate(n);
        self.messages += 1;
        Ok(out)
    }

    /// Read the peer's next handshake message and return its payload. A refused message makes
    /// the handshake broken (see the module documentation).
    pub fn read_message(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.is_finished() {
            return Err(Error::State("the handshake is already finished".into()));
        }
        if !self.state.is_my_turn() {
            let res = self.read_checked(message);
            if matches!(res, Err(Error::Handshake(_))) {
                self.broken = true;
            }
            return res;
        }
        Err(Error::State(
            "it is our turn: write a handshake message first".into(),
        ))
    }

    fn read_checked(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(Error::Handshake(format!(
                "message of {} bytes exceeds the Noise limit of {MAX_MESSAGE_LEN}",
                message.len()
            )));
        }
        let overhead = OVERHEAD[self.messages.min(2)];
        if message.len() < overhead {
            return Err(Error::Handshake(format!(
                "handshake message {} is {} bytes, shorter than the {overhead} bytes it must carry",
                self.messages + 1,
                message.len()
            )));
        }
        let mut out = vec![0u8; message.len()];
        let n = self
            .state
            .read_message(message, &mut out)
            .map_err(|e| map_snow(&e))?;
        out.truncate(n);
        self.messages += 1;
        Ok(out)
    }

    /// Finish: `Split()` into the send and receive keys. Consumes the handshake.
    pub fn split(mut self) -> Result<Split> {
        if self.broken {
            return Err(Error::Broken);
        }
        if !self.is_finished() {
            return Err(Error::State("the handshake is not finished yet".into()));
        }
        let remote_static: [u8; DH_LEN] = self
            .state
            .get_remote_static()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Handshake("no remote static key after XX".into()))?;
        let handshake_hash = self.state.get_handshake_hash().to_vec();
        let (mut k1, mut k2) = self.state.dangerously_get_raw_split();
        let (send, recv) = if self.initiator { (k1, k2) } else { (k2, k1) };
        k1.zeroize();
        k2.zeroize();
        Ok(Split {
            suite: self.suite,
            initiator: self.initiator,
            send_key: Zeroizing::new(send),
            recv_key: Zeroizing::new(recv),
            handshake_hash,
            remote_static,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pair(name: &str) -> (Handshake, Handshake) {
        let (a, _) = generate_keypair().unwrap();
        let (b, _) = generate_keypair().unwrap();
        (
            Handshake::new(name, true, &a[..], b"p", None).unwrap(),
            Handshake::new(name, false, &b[..], b"p", None).unwrap(),
        )
    }

    #[test]
    fn full_handshake_every_suite() {
        for suite in Suite::ALL {
            let (mut i, mut r) = pair(&suite.protocol_name());
            assert_eq!(
                r.read_message(&i.write_message(b"one").unwrap()).unwrap(),
                b"one"
            );
            assert_eq!(
                i.read_message(&r.write_message(b"two").unwrap()).unwrap(),
                b"two"
            );
            assert_eq!(
                r.read_message(&i.write_message(b"three").unwrap()).unwrap(),
                b"three"
            );
            assert!(i.is_finished() && r.is_finished());
            assert_eq!(i.handshake_hash(), r.handshake_hash());
            let (si, sr) = (i.split().unwrap(), r.split().unwrap());
            assert_eq!(*si.send_key, *sr.recv_key);
            assert_eq!(*si.recv_key, *sr.send_key);
        }
    }

    #[test]
    fn a_refused_message_ends_the_handshake_and_a_fresh_one_works() {
        let name = "Noise_XX_25519_AESGCM_SHA256";
        for (msg_index, tamper) in [(1usize, 0usize), (1, 40), (2, 0), (2, 64)] {
            let (mut i, mut r) = pair(name);
            r.read_message(&i.write_message(b"").unwrap()).unwrap();
            let m2 = r.write_message(b"hi").unwrap();
            let (reader, mut msg) = if msg_index == 1 {
                (&mut i, m2)
            } else {
                i.read_message(&m2).unwrap();
                (&mut r, i.write_message(b"bye").unwrap())
            };
            if tamper < msg.len() {
                msg[tamper] ^= 1;
            } else {
                msg.push(0); // extended
            }
            assert!(matches!(
                reader.read_message(&msg),
                Err(Error::Handshake(_))
            ));
            assert!(reader.is_broken());
            assert_eq!(reader.remote_static(), None);
            assert!(!reader.is_finished());
            assert_eq!(reader.read_message(&msg), Err(Error::Broken));
            assert_eq!(reader.write_message(b"").unwrap_err(), Error::Broken);
        }
        // Misuse is not terminal.
        let (mut i, mut r) = pair(name);
        assert!(matches!(r.write_message(b""), Err(Error::State(_))));
        r.read_message(&i.write_message(b"").unwrap()).unwrap();
        assert!(!r.is_broken());
        // And a fresh handshake is unaffected.
        let (mut i2, mut r2) = pair(name);
        r2.read_message(&i2.write_message(b"").unwrap()).unwrap();
        i2.read_message(&r2.write_message(b"").unwrap()).unwrap();
        r2.read_message(&i2.write_message(b"").unwrap()).unwrap();
        assert!(i2.is_finished() && r2.is_finished());
        let _ = i;
    }

    #[test]
    fn wrong_turn_and_wrong_names() {
        let (mut i, mut r) = pair("Noise_XX_25519_ChaChaPoly_BLAKE2s");
        assert!(matches!(r.write_message(b""), Err(Error::State(_))));
        assert!(matches!(i.read_message(&[0u8; 32]), Err(Error::State(_))));
        assert!(Handshake::new("Noise_IK_25519_AESGCM_SHA256", true, &[1; 32], b"", None).is_err());
        assert!(Handshake::new("Noise_XX_448_AESGCM_SHA256", true, &[1; 32], b"", None).is_err());
        assert!(Handshake::new("Noise_XX_25519_AESGCM_SHA256", true, &[1; 31], b"", None).is_err());
    }

    #[test]
    fn prologue_mismatch_fails() {
        let (a, _) = generate_keypair().unwrap();
        let (b, _) = generate_keypair().unwrap();
        let name = "Noise_XX_25519_AESGCM_SHA256";
        let mut i = Handshake::new(name, true, &a[..], b"one", None).unwrap();
        let mut r = Handshake::new(name, false, &b[..], b"two", None).unwrap();
        r.read_message(&i.write_message(b"").unwrap()).unwrap();
        assert!(i.read_message(&r.write_message(b"").unwrap()).is_err());
    }

    #[test]
    fn payload_limits() {
        let (mut i, _) = pair("Noise_XX_25519_AESGCM_SHA256");
        assert_eq!(i.max_payload_len(), 65535 - 32);
        assert!(i.write_message(&vec![0; 65535 - 31]).is_err());
        assert_eq!(i.write_message(&vec![0; 65535 - 32]).unwrap().len(), 65535);
    }

    #[test]
    fn x25519_matches_rfc7748() {
        // RFC 7748 §6.1: Alice's private key with Bob's public key.
        let a = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let b_pub = hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
            .unwrap();
        assert_eq!(
            hex::encode(x25519(&a, &b_pub).unwrap()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
        assert!(x25519(&a, &[0u8; 32]).is_err());
        assert!(x25519(&a, &[0u8; 31]).is_err());
    }

    #[test]
    fn public_key_matches_rfc7748() {
        // RFC 7748 §6.1, Alice.
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        assert_eq!(
            hex::encode(public_key(&sk).unwrap()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
