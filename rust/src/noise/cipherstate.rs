//! Noise CipherState (spec rev 34, §5.1): a key and a 64-bit counter nonce.
//!
//! * `EncryptWithAd`/`DecryptWithAd` use nonce `n` then increment it; a failed decryption leaves
//!   `n` unchanged (§5.1: "If an authentication failure occurs ... the nonce is not incremented").
//! * Nonce 2^64-1 is reserved for `REKEY` (§5.1, §11.3): reaching it is [`Error::NonceExhausted`],
//!   never a wrap.
//! * `Rekey()` replaces the key and keeps `n` (§4.2).

use crate::aead::{Algorithm, Key, TAG_LEN};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct CipherState {
    key: Key,
    n: u64,
}

impl CipherState {
    pub fn new(alg: Algorithm, key: &[u8]) -> Result<Self> {
        Ok(Self {
            key: Key::new(alg, key)?,
            n: 0,
        })
    }

    pub fn nonce(&self) -> u64 {
        self.n
    }

    /// Noise `SetNonce`: for tests and for resuming at a known counter.
    pub fn set_nonce(&mut self, n: u64) {
        self.n = n;
    }

    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    fn next_nonce(&self) -> Result<[u8; 12]> {
        if self.n == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        Ok(self.key.algorithm().noise_nonce(self.n))
    }

    /// Encrypt into `out` (`plaintext.len() + 16` bytes).
    pub fn encrypt_to(&mut self, ad: &[u8], plaintext: &[u8], out: &mut [u8]) -> Result<()> {
        let nonce = self.next_nonce()?;
        self.key.seal_to(&nonce, ad, plaintext, out)?;
        self.n += 1;
        Ok(())
    }

    /// Decrypt into `out` (`ciphertext.len() - 16` bytes). On failure nothing changes.
    pub fn decrypt_to(&mut self, ad: &[u8], ciphertext: &[u8], out: &mut [u8]) -> Result<()> {
        let nonce = self.next_nonce()?;
        self.key.open_to(&nonce, ad, ciphertext, out)?;
        self.n += 1;
        Ok(())
    }

    pub fn encrypt(&mut self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        self.encrypt_to(ad, plaintext, &mut out)?;
        Ok(out)
    }

    pub fn decrypt(&mut self, ad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![
            0u8;
            ciphertext
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(Error::Decrypt)?
        ];
        self.decrypt_to(ad, ciphertext, &mut out)?;
        Ok(out)
    }

    /// Noise `Rekey()`.
    pub fn rekey(&mut self) {
        self.key = self.key.rekey();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_decrypt_does_not_advance_the_nonce() {
        let mut a = CipherState::new(Algorithm::ChaCha20Poly1305, &[9u8; 32]).unwrap();
        let mut b = CipherState::new(Algorithm::ChaCha20Poly1305, &[9u8; 32]).unwrap();
        let ct = a.encrypt(b"", b"one").unwrap();
        let mut bad = ct.clone();
        bad[0] ^= 0x80;
        assert_eq!(b.decrypt(b"", &bad), Err(Error::Decrypt));
        assert_eq!(b.nonce(), 0);
        assert_eq!(b.decrypt(b"", &ct).unwrap(), b"one");
        assert_eq!(b.nonce(), 1);
    }

    #[test]
    fn the_last_nonce_is_never_used() {
        let mut a = CipherState::new(Algorithm::Aes256Gcm, &[1u8; 32]).unwrap();
        a.set_nonce(u64::MAX - 1);
        assert!(a.encrypt(b"", b"last").is_ok());
        assert_eq!(a.nonce(), u64::MAX);
        assert_eq!(a.encrypt(b"", b"x"), Err(Error::NonceExhausted));
        assert_eq!(a.nonce(), u64::MAX);
    }

    #[test]
    fn rekey_keeps_the_nonce_and_both_sides_agree() {
        let mut a = CipherState::new(Algorithm::Aes256Gcm, &[2u8; 32]).unwrap();
        let mut b = CipherState::new(Algorithm::Aes256Gcm, &[2u8; 32]).unwrap();
        b.decrypt(b"", &a.encrypt(b"", b"x").unwrap()).unwrap();
        a.rekey();
        assert_eq!(a.nonce(), 1);
        let ct = a.encrypt(b"", b"after").unwrap();
        assert_eq!(b.decrypt(b"", &ct), Err(Error::Decrypt));
        assert_eq!(b.nonce(), 1);
        b.rekey();
        assert_eq!(b.decrypt(b"", &ct).unwrap(), b"after");
    }
}
