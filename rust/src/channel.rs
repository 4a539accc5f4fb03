//! Transport messages for secure channels: explicit nonces, an anti-replay window, and rekey by
//! message count (wire format: `docs/wire-format.md`, "Channel messages").
//!
//! ```text
//! message = nonce:u64be  ciphertext||tag   (AEAD of the payload, Noise nonce = nonce, empty ad)
//! ```
//!
//! A secure channel runs over routes that may reorder or duplicate messages (relays, several
//! connections), so the implicit-nonce Noise transport (§5.1), which needs in-order delivery,
//! does not fit; this is the explicit-nonce variant the Noise spec suggests for such transports
//! (§11.4 "out-of-order transport messages"). Keys come from the same `Split()`.
//!
//! Rekey by count: the key for nonce `n` is the split key after `n / rekey_interval` Noise
//! `REKEY`s (§11.3), so both sides agree without a signal and a message announces its epoch by its
//! nonce. The receiver keeps the current and the previous epoch's key, which is enough because
//! the replay window is shorter than an epoch (`rekey_interval >= replay::WINDOW` is enforced).
//!
//! Atomicity: `open` checks the window, derives a candidate key if the message is in a later
//! epoch, decrypts, and only then records the nonce and adopts the new key. A forged, replayed,
//! truncated or too-old message changes nothing.

use crate::aead::{Algorithm, Key, TAG_LEN};
use crate::error::{Error, ReplayReason, Result};
use crate::noise::handshakestate::{Split, Suite};
use crate::replay::{ReplayWindow, WINDOW};

pub const NONCE_LEN: usize = 8;
/// Overhead of one channel message: the explicit nonce and the AEAD tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// The largest channel plaintext. Larger than a Noise transport message (65,519 bytes): the
/// explicit nonce makes each channel message self-contained, and bulk data (portals) costs
/// far less per byte in fewer, larger messages. AES-256-GCM and ChaCha20-Poly1305 are safe far
/// beyond this per message.
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// The largest channel message.
pub const MAX_MESSAGE: usize = OVERHEAD + MAX_PAYLOAD_LEN;
/// Default: rekey every 2^16 messages (at 64 KiB each, every 4 GiB).
pub const DEFAULT_REKEY_INTERVAL: u64 = 1 << 16;
/// A message may be at most this many epochs ahead of the receiver. A legitimate gap that
/// large means 8 * interval lost messages; a forger can make the receiver compute at most this
/// many rekeys per forged message.
pub const MAX_EPOCH_SKIP: u64 = 8;

#[derive(Debug)]
struct Sender {
    key: Key,
    epoch: u64,
    next: u64,
}

#[derive(Debug)]
struct Receiver {
    key: Key,
    epoch: u64,
    previous: Option<Key>,
    window: ReplayWindow,
}

/// Refuse a plaintext larger than [`MAX_PAYLOAD_LEN`]: the one size check of every seal, also
/// for callers that must size an output buffer before sealing into it.
pub fn check_payload_len(len: usize) -> Result<()> {
    if len > MAX_PAYLOAD_LEN {
        return Err(Error::InvalidArgument(format!(
            "a channel message carries at most {MAX_PAYLOAD_LEN} bytes, got {len}; split bulk data"
        )));
    }
    Ok(())
}

/// The explicit-nonce transport cipher of a secure channel.
#[derive(Debug)]
pub struct ChannelCipher {
    alg: Algorithm,
    rekey_interval: u64,
    send: Sender,
    recv: Receiver,
    erased: bool,
}

impl ChannelCipher {
    pub fn from_split(split: &Split, rekey_interval: u64) -> Result<Self> {
        Self::new(
            split.suite,
            &split.send_key[..],
            &split.recv_key[..],
            rekey_interval,
        )
    }

    pub fn new(
        suite: Suite,
        send_key: &[u8],
        recv_key: &[u8],
        rekey_interval: u64,
    ) -> Result<Self> {
        if rekey_interval < WINDOW {
            return Err(Error::InvalidArgument(format!(
                "rekey_interval must be at least the replay window ({WINDOW} messages), got {rekey_interval}"
            )));
        }
        let alg = suite.cipher;
        Ok(Self {
            alg,
            rekey_interval,
            send: Sender {
                key: Key::new(alg, send_key)?,
                epoch: 0,
                next: 0,
            },
            recv: Receiver {
                key: Key::new(alg, recv_key)?,
                epoch: 0,
                previous: None,
                window: ReplayWindow::new(),
            },
            erased: false,
        })
    }

    /// Drop every key (the channel closed): the key objects are freed now, not when the
    /// channel object is, and every later seal or open fails with [`Error::Broken`].
    pub fn erase(&mut self) {
        if let Ok(zero) = Key::new(self.alg, &[0u8; 32]) {
            self.send.key = zero;
        }
        if let Ok(zero) = Key::new(self.alg, &[0u8; 32]) {
            self.recv.key = zero;
        }
        self.recv.previous = None;
        self.erased = true;
    }

    pub fn is_erased(&self) -> bool {
        self.erased
    }

    pub fn rekey_interval(&self) -> u64 {
        self.rekey_interval
    }

    /// The nonce the next sealed message will carry.
    pub fn sending_nonce(&self) -> u64 {
        self.send.next
    }

    /// Move the sending counter forward (never back): for tests of exhaustion and epochs. The
    /// jump may cross at most [`MAX_EPOCH_SKIP`] epochs (each costs a `REKEY`, and the receiver
    /// follows no further).
    pub fn skip_sending_nonce_to(&mut self, n: u64) -> Result<()> {
        if n < self.send.next {
            return Err(Error::InvalidArgument(
                "the sending nonce never moves back".into(),
            ));
        }
        if n / self.rekey_interval - self.send.epoch > MAX_EPOCH_SKIP {
            return Err(Error::InvalidArgument(format!(
                "skipping to nonce {n} crosses more than {MAX_EPOCH_SKIP} rekey epochs; \
                 use a larger rekey_interval"
            )));
        }
        self.send.next = n;
        Ok(())
    }

    /// The highest nonce received so far.
    pub fn highest_received(&self) -> Option<u64> {
        self.recv.window.highest()
    }

    pub fn sending_epoch(&self) -> u64 {
        self.send.epoch
    }

    pub fn receiving_epoch(&self) -> u64 {
        self.recv.epoch
    }

    /// Size of the sealed message for a payload of `len` bytes.
    pub fn sealed_len(len: usize) -> usize {
        len + OVERHEAD
    }

    /// Seal `payload` into `out` (exactly `payload.len() + OVERHEAD` bytes).
    pub fn seal_to(&mut self, payload: &[u8], out: &mut [u8]) -> Result<()> {
        self.seal_to_ad(&[], payload, out)
    }

    /// Seal with associated data `ad`: bytes sent beside the message (e.g. a message type) that
    /// the receiver must present identically for the message to open.
    pub fn seal_to_ad(&mut self, ad: &[u8], payload: &[u8], out: &mut [u8]) -> Result<()> {
        self.seal_parts_to_ad(ad, &[payload], out)
    }

    /// Seal the concatenation of `parts` as one message, written straight into `out` (exactly
    /// the parts' total length + `OVERHEAD` bytes): one copy of the plaintext, however many
    /// pieces it comes in.
    pub fn seal_parts_to_ad(&mut self, ad: &[u8], parts: &[&[u8]], out: &mut [u8]) -> Result<()> {
        if self.erased {
            return Err(Error::Broken);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        check_payload_len(len)?;
        if out.len() != len + OVERHEAD {
            return Err(Error::InvalidArgument(
                "output buffer has the wrong size".into(),
            ));
        }
        let n = self.send.next;
        if n == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        let epoch = n / self.rekey_interval;
        while self.send.epoch < epoch {
            self.send.key = self.send.key.rekey();
            self.send.epoch += 1;
        }
        out[..NONCE_LEN].copy_from_slice(&n.to_be_bytes());
        let mut pos = NONCE_LEN;
        for p in parts {
            out[pos..pos + p.len()].copy_from_slice(p);
            pos += p.len();
        }
        self.send
            .key
            .seal_in_place(&self.alg.noise_nonce(n), ad, &mut out[NONCE_LEN..])?;
        self.send.next = n + 1;
        Ok(())
    }

    /// Size of [`Self::seal_frames_to`]'s output for these payload lengths.
    pub fn sealed_frames_len<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> usize {
        payloads
            .into_iter()
            .map(|p| crate::frame::HEADER_LEN + p.len() + OVERHEAD)
            .sum()
    }

    /// Seal many payloads, each as one length-prefixed frame, into `out` (exactly
    /// `sealed_frames_len(payloads)` bytes): a stream ready to write to a socket. All sizes and
    /// the nonce budget are checked first, so either every payload is sealed or nothing changes.
    pub fn seal_frames_to(&mut self, payloads: &[&[u8]], out: &mut [u8]) -> Result<()> {
        for p in payloads {
            check_payload_len(p.len())?;
        }
        if out.len() != Self::sealed_frames_len(payloads.iter().copied()) {
            return Err(Error::InvalidArgument(
                "output buffer has the wrong size".into(),
            ));
        }
        let count = payloads.len() as u64;
        if u64::MAX - self.send.next < count {
            return Err(Error::NonceExhausted);
        }
        let mut pos = 0;
        for p in payloads {
            let sealed = p.len() + OVERHEAD;
            out[pos..pos + crate::frame::HEADER_LEN]
                .copy_from_slice(&crate::frame::header(sealed)?);
            pos += crate::frame::HEADER_LEN;
            self.seal_to(p, &mut out[pos..pos + sealed])?;
            pos += sealed;
        }
        Ok(())
    }

    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; payload.len() + OVERHEAD];
        self.seal_to(payload, &mut out)?;
        Ok(out)
    }

    /// The payload length of a sealed message, after checking its size.
    pub fn opened_len(message: &[u8]) -> Result<usize> {
        if message.len() < OVERHEAD || message.len() > MAX_MESSAGE {
            return Err(Error::Decrypt);
        }
        Ok(message.len() - OVERHEAD)
    }

    /// Open `message` into `out` (exactly `opened_len(message)` bytes). Returns the nonce. On
    /// any error nothing changes.
    pub fn open_to(&mut self, message: &[u8], out: &mut [u8]) -> Result<u64> {
        self.open_to_ad(&[], message, out)
    }

    /// Open a message sealed with associated data `ad` (see [`Self::seal_to_ad`]). A different
    /// `ad` fails authentication and, like any refused message, changes nothing.
    pub fn open_to_ad(&mut self, ad: &[u8], message: &[u8], out: &mut [u8]) -> Result<u64> {
        if self.erased {
            return Err(Error::Broken);
        }
        Self::opened_len(message)?;
        let mut nb = [0u8; NONCE_LEN];
        nb.copy_from_slice(&message[..NONCE_LEN]);
        let n = u64::from_be_bytes(nb);
        if n == u64::MAX {
            return Err(Error::Decrypt);
        }
        self.recv.window.check(n)?;
        let epoch = n / self.rekey_interval;
        let nonce = self.alg.noise_nonce(n);
        let body = &message[NONCE_LEN..];
        if epoch == self.recv.epoch {
            self.recv.key.open_to(&nonce, ad, body, out)?;
        } else if epoch + 1 == self.recv.epoch {
            let key = self.recv.previous.as_ref().ok_or(Error::Replay {
                nonce: n,
                reason: ReplayReason::TooOld,
            })?;
            key.open_to(&nonce, ad, body, out)?;
        } else if epoch < self.recv.epoch {
            return Err(Error::Replay {
                nonce: n,
                reason: ReplayReason::TooOld,
            });
        } else {
            if epoch - self.recv.epoch > MAX_EPOCH_SKIP {
                return Err(Error::Decrypt);
            }
            // Candidate keys for the later epoch; adopted only if the message authenticates.
            let mut previous = self.recv.key.rekey();
            for _ in self.recv.epoch + 1..epoch - 1 {
                previous = previous.rekey();
            }
            let (previous, current) = if epoch == self.recv.epoch + 1 {
                let next = self.recv.key.rekey();
                (None, next)
            } else {
                let next = previous.rekey();
                (Some(previous), next)
            };
            current.open_to(&nonce, ad, body, out)?;
            let old = std::mem::replace(&mut self.recv.key, current);
            self.recv.previous = Some(previous.unwrap_or(old));
            self.recv.epoch = epoch;
        }
        self.recv.window.commit(n);
        Ok(n)
    }

    pub fn open(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; Self::opened_len(message)?];
        self.open_to(message, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::Suite;

    fn pair(interval: u64) -> (ChannelCipher, ChannelCipher) {
        let s = Suite::ALL[0];
        (
            ChannelCipher::new(s, &[1; 32], &[2; 32], interval).unwrap(),
            ChannelCipher::new(s, &[2; 32], &[1; 32], interval).unwrap(),
        )
    }

    #[test]
    fn round_trip_and_replay() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let m = a.seal(b"hello").unwrap();
        assert_eq!(b.open(&m).unwrap(), b"hello");
        assert!(matches!(
            b.open(&m),
            Err(Error::Replay {
                reason: ReplayReason::Duplicate,
                ..
            })
        ));
    }

    #[test]
    fn reordered_messages_are_accepted_once() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let msgs: Vec<_> = (0..50u8).map(|i| a.seal(&[i]).unwrap()).collect();
        for m in msgs.iter().rev() {
            b.open(m).unwrap();
        }
        for m in &msgs {
            assert!(b.open(m).is_err());
        }
    }

    #[test]
    fn forged_message_changes_nothing() {
        let (mut a, mut b) = pair(WINDOW);
        let m = a.seal(b"x").unwrap();
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0x40;
            assert!(b.open(&bad).is_err());
            assert_eq!(b.highest_received(), None);
            assert_eq!(b.receiving_epoch(), 0);
        }
        assert!(b.open(&m[..m.len() - 1]).is_err());
        assert_eq!(b.open(&m).unwrap(), b"x");
    }

    #[test]
    fn forged_future_epoch_does_not_rekey() {
        let (mut a, mut b) = pair(WINDOW);
        a.skip_sending_nonce_to(3 * WINDOW).unwrap();
        let mut m = a.seal(b"x").unwrap();
        m[20] ^= 1;
        assert_eq!(b.open(&m), Err(Error::Decrypt));
        assert_eq!(b.receiving_epoch(), 0);
    }

    #[test]
    fn rekey_by_count_across_epochs_with_reordering() {
        let interval = WINDOW;
        let (mut a, mut b) = pair(interval);
        let msgs: Vec<_> = (0..3 * interval + 10)
            .map(|i| a.seal(&i.to_be_bytes()).unwrap())
            .collect();
        assert_eq!(a.sending_epoch(), 3);
        // Deliver in order, except hold back a few from before each epoch boundary.
        let mut held = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let i = i as u64;
            if i % interval >= interval - 3 {
                held.push((i, m));
                continue;
            }
            assert_eq!(b.open(m).unwrap(), i.to_be_bytes());
            // After crossing a boundary, the held-back messages of the previous epoch still open.
            if i % interval == 2 {
                for (j, hm) in held.drain(..) {
                    assert_eq!(b.open(hm).unwrap(), j.to_be_bytes());
                }
            }
        }
        assert_eq!(b.receiving_epoch(), 3);
    }

    #[test]
    fn skipping_epochs_and_the_limit() {
        let (mut a, mut b) = pair(WINDOW);
        a.skip_sending_nonce_to(5 * WINDOW + 1).unwrap();
        assert_eq!(b.open(&a.seal(b"far").unwrap()).unwrap(), b"far");
        assert_eq!(b.receiving_epoch(), 5);
        // The previous epoch's key is the one for epoch 4.
        let (mut a2, _) = pair(WINDOW);
        a2.skip_sending_nonce_to(5 * WINDOW - 1).unwrap();
        assert_eq!(b.open(&a2.seal(b"late").unwrap()).unwrap(), b"late");
        let (mut a3, mut b3) = pair(WINDOW);
        a3.skip_sending_nonce_to(MAX_EPOCH_SKIP * WINDOW).unwrap();
        a3.seal(b"sender now in epoch MAX_EPOCH_SKIP").unwrap();
        a3.skip_sending_nonce_to((MAX_EPOCH_SKIP + 1) * WINDOW)
            .unwrap();
        assert_eq!(b3.open(&a3.seal(b"too far").unwrap()), Err(Error::Decrypt));
        assert_eq!(b3.receiving_epoch(), 0);
    }

    #[test]
    fn seal_frames_is_a_decodable_stream_and_all_or_nothing() {
        let (mut a, mut b) = pair(1 << 62);
        let payloads: [&[u8]; 3] = [b"one", b"", &[7u8; 3000]];
        let mut out = vec![0u8; ChannelCipher::sealed_frames_len(payloads.iter().copied())];
        a.seal_frames_to(&payloads, &mut out).unwrap();
        let mut dec = crate::frame::FrameDecoder::new(1 << 16);
        let mut got = Vec::new();
        dec.feed(&out, |f| got.push(b.open(f).unwrap())).unwrap();
        assert_eq!(got, payloads.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
        let too_big = vec![0u8; MAX_PAYLOAD_LEN + 1];
        let bad: [&[u8]; 2] = [b"ok", &too_big];
        let mut out = vec![0u8; ChannelCipher::sealed_frames_len(bad.iter().copied())];
        assert!(a.seal_frames_to(&bad, &mut out).is_err());
        assert_eq!(a.sending_nonce(), 3);
        a.skip_sending_nonce_to(u64::MAX - 1).unwrap();
        let two: [&[u8]; 2] = [b"a", b"b"];
        let mut out = vec![0u8; ChannelCipher::sealed_frames_len(two.iter().copied())];
        assert_eq!(a.seal_frames_to(&two, &mut out), Err(Error::NonceExhausted));
        assert_eq!(a.sending_nonce(), u64::MAX - 1);
    }

    #[test]
    fn nonce_exhaustion() {
        let (mut a, _) = pair(1 << 62);
        a.skip_sending_nonce_to(u64::MAX - 1).unwrap();
        a.seal(b"last").unwrap();
        assert_eq!(a.seal(b"x"), Err(Error::NonceExhausted));
    }

    #[test]
    fn skipping_is_bounded_by_the_epoch_limit() {
        let (mut a, _) = pair(WINDOW);
        assert!(a
            .skip_sending_nonce_to((MAX_EPOCH_SKIP + 1) * WINDOW)
            .is_err());
        assert_eq!(a.sending_nonce(), 0);
        assert!(a.skip_sending_nonce_to(MAX_EPOCH_SKIP * WINDOW).is_ok());
        assert!(a.skip_sending_nonce_to(u64::MAX).is_err());
    }

    #[test]
    fn associated_data_must_match_and_a_mismatch_changes_nothing() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let mut m = vec![0u8; ChannelCipher::sealed_len(5)];
        a.seal_to_ad(b"\x04", b"hello", &mut m).unwrap();
        let mut out = vec![0u8; 5];
        assert_eq!(b.open_to_ad(b"\x05", &m, &mut out), Err(Error::Decrypt));
        assert_eq!(b.open_to(&m, &mut out), Err(Error::Decrypt));
        assert_eq!(b.highest_received(), None);
        assert_eq!(b.open_to_ad(b"\x04", &m, &mut out), Ok(0));
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn erased_ciphers_refuse_everything() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let m = a.seal(b"before").unwrap();
        b.erase();
        assert!(b.is_erased());
        assert_eq!(b.open(&m), Err(Error::Broken));
        a.erase();
        assert_eq!(a.seal(b"after"), Err(Error::Broken));
    }

    #[test]
    fn interval_must_cover_the_window() {
        assert!(ChannelCipher::new(Suite::ALL[0], &[1; 32], &[2; 32], WINDOW - 1).is_err());
    }
}
