//! The primitives `snow` runs the handshake with: X25519 from AWS-LC (`aws-lc-rs`); AES-256-GCM,
//! ChaCha20-Poly1305 (through `crate::aead`), SHA-256 and the RNG from `ring`; BLAKE2s from
//! RustCrypto's `blake2`.
//!
//! Why not `snow`'s built-in resolvers: its default X25519 (curve25519-dalek's Montgomery ladder)
//! costs about twice AWS-LC's on x86_64, and the handshake is three DHs per side, so the handshake
//! rate roughly doubles with AWS-LC (`benches/`); and the AEADs are the same `ring` code as the
//! transport's. Nothing here implements a primitive; each type adapts one library call to `snow`'s
//! traits.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use blake2::{Blake2s256, Digest};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::aead::{Algorithm, Key, TAG_LEN};

pub(crate) struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SystemRng(SystemRandom::new())))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(Dh25519::default())),
            DHChoice::Curve448 => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::SHA256 => Some(Box::new(Sha256(digest::Context::new(&digest::SHA256)))),
            HashChoice::Blake2s => Some(Box::new(Blake2s(Blake2s256::new()))),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        let alg = match choice {
            CipherChoice::AESGCM => Algorithm::Aes256Gcm,
            CipherChoice::ChaChaPoly => Algorithm::ChaCha20Poly1305,
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        // A zero key until `set`: snow always sets the key before using the cipher.
        Key::new(alg, &[0u8; 32])
            .ok()
            .map(|key| Box::new(AeadCipher { alg, key }) as Box<dyn Cipher>)
    }
}

struct SystemRng(SystemRandom);

impl Random for SystemRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest).map_err(|_| snow::Error::Rng)
    }
}

#[derive(Default)]
struct Dh25519 {
    private: Zeroizing<[u8; 32]>,
    key: Option<PrivateKey>,
    public: [u8; 32],
}

impl Dh for Dh25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        self.private.copy_from_slice(&privkey[..32]);
        self.key = PrivateKey::from_private_key(&X25519, &self.private[..]).ok();
        self.public = [0; 32];
        if let Some(public) = self.key.as_ref().and_then(|k| k.compute_public_key().ok()) {
            self.public.copy_from_slice(public.as_ref());
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut private = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(&mut private[..])?;
        self.set(&private[..]);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        // AWS-LC refuses low-order points (an all-zero shared secret), which Noise allows (§12.1).
        agreement::agree(
            key,
            UnparsedPublicKey::new(&X25519, &pubkey[..32]),
            snow::Error::Dh,
            |shared| {
                out[..32].copy_from_slice(shared);
                Ok(())
            },
        )
    }
}

struct AeadCipher {
    alg: Algorithm,
    key: Key,
}

impl Cipher for AeadCipher {
    fn name(&self) -> &'static str {
        self.alg.noise_name()
    }

    fn set(&mut self, key: &[u8; 32]) {
        if let Ok(k) = Key::new(self.alg, key) {
            self.key = k;
        }
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len() + TAG_LEN;
        // snow sizes `out` for the tag; the seal cannot fail for these sizes.
        match self.key.seal_to(
            &self.alg.noise_nonce(nonce),
            authtext,
            plaintext,
            &mut out[..len],
        ) {
            Ok(()) => len,
            Err(_) => 0,
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        self.key
            .open_to(
                &self.alg.noise_nonce(nonce),
                authtext,
                ciphertext,
                &mut out[..len],
            )
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(len)
    }
}

struct Sha256(digest::Context);

impl Hash for Sha256 {
    fn name(&self) -> &'static str {
        "SHA256"
    }

    fn block_len(&self) -> usize {
        64
    }

    fn hash_len(&self) -> usize {
        32
    }

    fn reset(&mut self) {
        self.0 = digest::Context::new(&digest::SHA256);
    }

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        let ctx = std::mem::replace(&mut self.0, digest::Context::new(&digest::SHA256));
        out[..32].copy_from_slice(ctx.finish().as_ref());
    }
}

struct Blake2s(Blake2s256);

impl Hash for Blake2s {
    fn name(&self) -> &'static str {
        "BLAKE2s"
    }

    fn block_len(&self) -> usize {
        64
    }

    fn hash_len(&self) -> usize {
        32
    }

    fn reset(&mut self) {
        self.0 = Blake2s256::new();
    }

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.0.finalize_reset());
    }
}
