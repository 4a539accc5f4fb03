//! AEAD: AES-256-GCM and ChaCha20-Poly1305, both from `ring` (BoringSSL's assembly: AES-NI /
//! VAES + PCLMUL, and vectorised ChaCha20-Poly1305). Nothing here is a hand-written primitive;
//! this module only adapts `ring` to Noise's conventions:
//!
//! * the 96-bit nonce built from a 64-bit counter — Noise spec rev 34 §12.3 (ChaChaPoly: 32 zero
//!   bits then the counter little-endian) and §12.4 (AESGCM: 32 zero bits then big-endian);
//! * `REKEY(k)` = the first 32 bytes of `ENCRYPT(k, 2^64-1, "", zeros(32))` — §4.2, §11.3;
//! * sealing and opening straight into a caller-supplied buffer (one allocation per message on the
//!   Python side, and none here).
//!
//! An open that fails leaves no trace: the key has no mutable state, and the output buffer is
//! the caller's scratch space.

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
pub const TAG_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Algorithm {
    /// The cipher's name in a Noise protocol name.
    pub fn noise_name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "AESGCM",
            Algorithm::ChaCha20Poly1305 => "ChaChaPoly",
        }
    }

    /// Parse a user-facing algorithm name (case-insensitive; Noise names accepted too).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "aes256gcm" | "aesgcm" => Ok(Algorithm::Aes256Gcm),
            "chacha20poly1305" | "chachapoly" => Ok(Algorithm::ChaCha20Poly1305),
            _ => Err(Error::InvalidArgument(format!(
                "unknown AEAD algorithm {name:?}; use \"AES-256-GCM\" or \"ChaCha20-Poly1305\""
            ))),
        }
    }

    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Algorithm::Aes256Gcm => &aead::AES_256_GCM,
            Algorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// The 96-bit AEAD nonce for Noise counter `n`.
    pub fn noise_nonce(self, n: u64) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        match self {
            Algorithm::Aes256Gcm => nonce[4..].copy_from_slice(&n.to_be_bytes()),
            Algorithm::ChaCha20Poly1305 => nonce[4..].copy_from_slice(&n.to_le_bytes()),
        }
        nonce
    }
}

/// An AEAD key. `ring` expands it into its key schedule; the raw bytes are not kept.
pub struct Key {
    alg: Algorithm,
    key: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(alg: Algorithm, key: &[u8]) -> Result<Self> {
        if key.len() != KEY_LEN {
            return Err(Error::InvalidArgument(format!(
                "an AEAD key is {KEY_LEN} bytes, got {}",
                key.len()
            )));
        }
        let unbound = UnboundKey::new(alg.ring(), key)
            .map_err(|_| Error::InvalidArgument("the AEAD key was refused".into()))?;
        Ok(Self {
            alg,
            key: LessSafeKey::new(unbound),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Seal `plaintext` into `out` (exactly `plaintext.len() + TAG_LEN` bytes): ciphertext, then tag.
    pub fn seal_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        if out.len() != plaintext.len() + TAG_LEN {
            return Err(Error::InvalidArgument(
                "output buffer has the wrong size".into(),
            ));
        }
        out[..plaintext.len()].copy_from_slice(plaintext);
        self.seal_in_place(nonce, aad, out)
    }

    /// Seal in place: `buf` holds the plaintext followed by `TAG_LEN` bytes for the tag.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<()> {
        if buf.len() < TAG_LEN {
            return Err(Error::InvalidArgument(
                "output buffer has the wrong size".into(),
            ));
        }
        let (body, tag_out) = buf.split_at_mut(buf.len() - TAG_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                body,
            )
            .map_err(|_| Error::InvalidArgument("message too long for this AEAD".into()))?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Open `ciphertext` (ciphertext then tag) into `out` (exactly `ciphertext.len() - TAG_LEN`
    /// bytes). On failure `out` holds garbage and must be discarded; nothing else changes.
    pub fn open_to(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        if ciphertext.len() < TAG_LEN {
            return Err(Error::Decrypt);
        }
        let (body, tag) = ciphertext.split_at(ciphertext.len() - TAG_LEN);
        if out.len() != body.len() {
            return Err(Error::InvalidArgument(
                "output buffer has the wrong size".into(),
            ));
        }
        out.copy_from_slice(body);
        self.open_in_place(nonce, aad, out, tag)
    }

    /// Open in place: `buf` holds the ciphertext (without its tag) and becomes the plaintext.
    /// On failure `buf` holds garbage and must be discarded; nothing else changes.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        let tag = aead::Tag::try_from(tag).map_err(|_| Error::Decrypt)?;
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                aead::Aad::from(aad),
                tag,
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| Error::Decrypt)
    }

    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        self.seal_to(nonce, aad, plaintext, &mut out)?;
        Ok(out)
    }

    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![
            0u8;
            ciphertext
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(Error::Decrypt)?
        ];
        self.open_to(nonce, aad, ciphertext, &mut out)?;
        Ok(out)
    }

    /// Noise `REKEY` (spec §4.2 and §11.3): a new key from this one, without the nonce changing.
    pub fn rekey(&self) -> Key {
        let zeros = [0u8; KEY_LEN];
        let mut out = [0u8; KEY_LEN + TAG_LEN];
        // Both calls are infallible here: the sizes are fixed and correct.
        let sealed = self.seal_to(&self.alg.noise_nonce(u64::MAX), &[], &zeros, &mut out);
        debug_assert!(sealed.is_ok());
        let key = Key::new(self.alg, &out[..KEY_LEN]);
        out.zeroize();
        match key {
            Ok(k) => k,
            Err(_) => unreachable!("a 32-byte key is always accepted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_layouts_follow_the_spec() {
        assert_eq!(
            Algorithm::Aes256Gcm.noise_nonce(1),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            Algorithm::ChaCha20Poly1305.noise_nonce(1),
            [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
            let k = Key::new(alg, &[7u8; 32]).unwrap();
            let n = alg.noise_nonce(3);
            let ct = k.seal(&n, b"ad", b"secret").unwrap();
            assert_eq!(ct.len(), 6 + TAG_LEN);
            assert_eq!(k.open(&n, b"ad", &ct).unwrap(), b"secret");
            for i in 0..ct.len() {
                let mut bad = ct.clone();
                bad[i] ^= 1;
                assert_eq!(k.open(&n, b"ad", &bad), Err(Error::Decrypt));
            }
            assert_eq!(k.open(&n, b"other", &ct), Err(Error::Decrypt));
            assert_eq!(k.open(&alg.noise_nonce(4), b"ad", &ct), Err(Error::Decrypt));
            assert_eq!(k.open(&n, b"ad", &ct[..TAG_LEN - 1]), Err(Error::Decrypt));
        }
    }

    #[test]
    fn wrong_key_length_is_an_argument_error() {
        assert!(matches!(
            Key::new(Algorithm::Aes256Gcm, &[0u8; 16]),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn rekey_matches_the_definition() {
        let alg = Algorithm::Aes256Gcm;
        let k = Key::new(alg, &[1u8; 32]).unwrap();
        let expected = k.seal(&alg.noise_nonce(u64::MAX), &[], &[0u8; 32]).unwrap();
        let k2 = k.rekey();
        let k2_direct = Key::new(alg, &expected[..32]).unwrap();
        let n = alg.noise_nonce(0);
        assert_eq!(
            k2.seal(&n, b"", b"x").unwrap(),
            k2_direct.seal(&n, b"", b"x").unwrap()
        );
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            Algorithm::parse("AES-256-GCM").unwrap(),
            Algorithm::Aes256Gcm
        );
        assert_eq!(
            Algorithm::parse("ChaChaPoly").unwrap(),
            Algorithm::ChaCha20Poly1305
        );
        assert!(Algorithm::parse("rot13").is_err());
    }
}
