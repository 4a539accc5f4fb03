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
//! Failure discipline: `snow` restores its symmetric state when a read or write fails, so a
//! tampered, truncated or extended handshake message is refused and the genuine message can
//! still be read afterwards. A finished handshake turns into a transport by a change of type
//! ([`Handshake::split`] consumes it).

use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::rand::{SecureRandom, SystemRandom};
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
    SystemRandom::new().fill(private.as_mut()).map_err(|_| {
        Error::State("the operating system's random number generator failed".into())
    })?;
    let public = public_key(&private[..])?;
    Ok((private, public))
}

/// The X25519 public key of `private` (RFC 7748 clamping applies).
pub fn public_key(private: &[u8]) -> Result<[u8; DH_LEN]> {
    let mut sk: [u8; DH_LEN] = private.try_into().map_err(|_| {
        Error::InvalidArgument(format!(
            "an X25519 private key is {DH_LEN} bytes, got {}",
            private.len()
        ))
    })?;
    let public = MontgomeryPoint::mul_base_clamped(sk).to_bytes();
    sk.zeroize();
    Ok(public)
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
        let mut builder = snow::Builder::new(params)
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
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    pub fn is_my_turn(&self) -> bool {
        !self.is_finished() && self.state.is_my_turn()
    }

    /// The handshake hash `h` so far (final once the handshake is finished).
    pub fn handshake_hash(&self) -> &[u8] {
        self.state.get_handshake_hash()
    }

    /// The peer's static public key, once its message carrying `s` has been read.
    pub fn remote_static(&self) -> Option<&[u8]> {
        self.state.get_remote_static()
    }

    /// The most payload bytes the next message can carry.
    pub fn max_payload_len(&self) -> usize {
        MAX_MESSAGE_LEN - OVERHEAD[self.messages.min(2)]
    }

    /// Write the next handshake message carrying `payload`.
    pub fn write_message(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
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
        let n = self
            .state
            .write_message(payload, &mut out)
            .map_err(|e| map_snow(&e))?;
        out.truncate(n);
        self.messages += 1;
        Ok(out)
    }

    /// Read the peer's next handshake message and return its payload. A message that fails
    /// changes nothing: the genuine one can still be read.
    pub fn read_message(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        if self.is_finished() {
            return Err(Error::State("the handshake is already finished".into()));
        }
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
    fn tampered_message_is_refused_and_the_genuine_one_still_works() {
        let (mut i, mut r) = pair("Noise_XX_25519_AESGCM_SHA256");
        r.read_message(&i.write_message(b"").unwrap()).unwrap();
        let m2 = r.write_message(b"hi").unwrap();
        for pos in [0, 40, m2.len() - 1] {
            let mut bad = m2.clone();
            bad[pos] ^= 1;
            assert!(matches!(i.read_message(&bad), Err(Error::Handshake(_))));
        }
        assert!(i.read_message(&m2[..m2.len() - 1]).is_err());
        assert_eq!(i.read_message(&m2).unwrap(), b"hi");
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
