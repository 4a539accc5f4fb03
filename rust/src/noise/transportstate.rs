//! The transport phase of a Noise session: two [`CipherState`]s from `Split()` (spec rev 34
//! §5.2), implicit nonces, one Noise message (at most 65535 bytes) per call, `REKEY` on demand.
//! This is the standard Noise transport; secure channels use the explicit-nonce
//! [`crate::channel::ChannelCipher`] instead, which tolerates reordering.

use super::handshakestate::{Split, DH_LEN};
use super::{CipherState, Suite, MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN};
use crate::aead::TAG_LEN;
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct TransportState {
    send: CipherState,
    recv: CipherState,
    suite: Suite,
    initiator: bool,
    handshake_hash: Vec<u8>,
    remote_static: [u8; DH_LEN],
}

impl TransportState {
    pub fn from_split(split: &Split) -> Result<Self> {
        Ok(Self {
            send: CipherState::new(split.suite.cipher, &split.send_key[..])?,
            recv: CipherState::new(split.suite.cipher, &split.recv_key[..])?,
            suite: split.suite,
            initiator: split.initiator,
            handshake_hash: split.handshake_hash.clone(),
            remote_static: split.remote_static,
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }
    pub fn remote_static(&self) -> &[u8; DH_LEN] {
        &self.remote_static
    }
    pub fn sending_nonce(&self) -> u64 {
        self.send.nonce()
    }
    pub fn receiving_nonce(&self) -> u64 {
        self.recv.nonce()
    }
    pub fn set_sending_nonce(&mut self, n: u64) {
        self.send.set_nonce(n);
    }
    pub fn set_receiving_nonce(&mut self, n: u64) {
        self.recv.set_nonce(n);
    }

    fn check_plaintext(len: usize) -> Result<()> {
        if len > MAX_PAYLOAD_LEN {
            return Err(Error::InvalidArgument(format!(
                "a Noise transport message carries at most {MAX_PAYLOAD_LEN} bytes, got {len}; split bulk data"
            )));
        }
        Ok(())
    }

    fn check_ciphertext(len: usize) -> Result<()> {
        if !(TAG_LEN..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(Error::Decrypt);
        }
        Ok(())
    }

    pub fn encrypt_to(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<()> {
        Self::check_plaintext(plaintext.len())?;
        self.send.encrypt_to(&[], plaintext, out)
    }

    pub fn decrypt_to(&mut self, ciphertext: &[u8], out: &mut [u8]) -> Result<()> {
        Self::check_ciphertext(ciphertext.len())?;
        self.recv.decrypt_to(&[], ciphertext, out)
    }

    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        Self::check_plaintext(plaintext.len())?;
        self.send.encrypt(&[], plaintext)
    }

    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        Self::check_ciphertext(ciphertext.len())?;
        self.recv.decrypt(&[], ciphertext)
    }

    pub fn rekey_outgoing(&mut self) {
        self.send.rekey();
    }

    pub fn rekey_incoming(&mut self) {
        self.recv.rekey();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{generate_keypair, Handshake};

    fn transports(name: &str) -> (TransportState, TransportState) {
        let (a, _) = generate_keypair().unwrap();
        let (b, _) = generate_keypair().unwrap();
        let mut i = Handshake::new(name, true, &a[..], b"", None).unwrap();
        let mut r = Handshake::new(name, false, &b[..], b"", None).unwrap();
        r.read_message(&i.write_message(b"").unwrap()).unwrap();
        i.read_message(&r.write_message(b"").unwrap()).unwrap();
        r.read_message(&i.write_message(b"").unwrap()).unwrap();
        let (si, sr) = (i.split().unwrap(), r.split().unwrap());
        (
            TransportState::from_split(&si).unwrap(),
            TransportState::from_split(&sr).unwrap(),
        )
    }

    #[test]
    fn both_directions_and_rekey() {
        let (mut i, mut r) = transports("Noise_XX_25519_ChaChaPoly_SHA256");
        assert_eq!(r.decrypt(&i.encrypt(b"ping").unwrap()).unwrap(), b"ping");
        assert_eq!(i.decrypt(&r.encrypt(b"pong").unwrap()).unwrap(), b"pong");
        i.rekey_outgoing();
        r.rekey_incoming();
        assert_eq!(r.decrypt(&i.encrypt(b"after").unwrap()).unwrap(), b"after");
        assert_eq!(i.remote_static().len(), 32);
        assert_eq!(i.handshake_hash(), r.handshake_hash());
    }

    #[test]
    fn limits() {
        let (mut i, mut r) = transports("Noise_XX_25519_AESGCM_BLAKE2s");
        assert!(i.encrypt(&vec![0; MAX_PAYLOAD_LEN + 1]).is_err());
        let ct = i.encrypt(&vec![0; MAX_PAYLOAD_LEN]).unwrap();
        assert_eq!(ct.len(), MAX_MESSAGE_LEN);
        assert_eq!(r.decrypt(&[0; 15]), Err(Error::Decrypt));
        assert_eq!(r.receiving_nonce(), 0);
        assert!(r.decrypt(&ct).is_ok());
    }
}
