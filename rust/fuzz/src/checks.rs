//! One check per fuzz target: decode arbitrary bytes with tether-core and assert the decoder's
//! invariants. A check returns normally for any input the decoder handles correctly (accepted or
//! refused) and panics on a violated invariant.
//!
//! This file is the only copy: the cargo-fuzz targets (`rust/fuzz/fuzz_targets/`) call it through
//! the `tether_core_fuzz` library, and `rust/tests/fuzz_corpus.rs` includes it with `#[path]` to
//! run the committed corpus (`rust/fuzz/corpus/<target>/`) under the stable toolchain. Inputs are
//! plain bytes (a selector byte or two, then the bytes to decode), so corpus files can be written
//! by hand; `rust/tests/fuzz_corpus.rs` also writes the seed corpus (`seeds`).

use std::sync::OnceLock;

use tether_core::channel::{ChannelCipher, MAX_MESSAGE, OVERHEAD};
use tether_core::error::{Error, ReplayReason};
use tether_core::frame::{self, FrameDecoder, HEADER_LEN};
use tether_core::nats::{self, ServerOp};
use tether_core::noise::{public_key, Handshake, Suite};
use tether_core::portal::{self, PortalError, PortalMessage, KIND_DATA, KIND_ERROR, MAX_REASON};
use tether_core::records::{self, RecordError, RecordOpener, RecordSealer};
use tether_core::replay::WINDOW;
use tether_core::route;

/// A target's check.
pub type Check = fn(&[u8]);

/// The targets, by name: the fuzz target and the corpus directory of each.
pub const TARGETS: [(&str, Check); 7] = [
    ("frame", frame),
    ("routed_message", routed_message),
    ("noise_handshake", noise_handshake),
    ("channel_open", channel_open),
    ("portal_message", portal_message),
    ("records_open", records_open),
    ("nats_decode", nats_decode),
];

// --- frame ------------------------------------------------------------------------------------

/// The decoder's limit selected by the first input byte: 0..=127 as is, then steps of 64 up
/// to 8128 (never near `u32::MAX`: a limit that large is the caller's promise to allocate it).
pub fn frame_limit(selector: u8) -> u32 {
    match selector {
        0..=127 => u32::from(selector),
        _ => u32::from(selector - 128) * 64,
    }
}

/// Input: `limit selector, cut count (mod 8), cuts..., stream`. Feeds the stream in chunks cut
/// at the chosen points (each cut byte is a position scaled to the stream's length) and whole,
/// and checks that both give the same frames and outcome, that every frame respects the limit,
/// that the frames are exactly the stream's prefix, and that a failed decoder stays broken.
///
/// # Panics
///
/// On a violated invariant.
pub fn frame(data: &[u8]) {
    let [limit, cuts, rest @ ..] = data else {
        return;
    };
    let max = frame_limit(*limit);
    let (cuts, stream) = rest.split_at(usize::from(cuts % 8).min(rest.len()));
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * stream.len() / 255)
        .collect();
    points.sort_unstable();
    points.push(stream.len());

    let mut whole = FrameDecoder::new(max);
    let mut want: Vec<Vec<u8>> = Vec::new();
    let whole_result = whole.feed(stream, |f| want.push(f.to_vec()));

    let mut split = FrameDecoder::new(max);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut result = Ok(());
    let mut start = 0;
    for &end in &points {
        result = split.feed(&stream[start..end], |f| {
            assert!(f.len() <= max as usize, "a frame of {} > {max}", f.len());
            got.push(f.to_vec());
        });
        start = end;
        if result.is_err() {
            break;
        }
    }
    assert_eq!(got, want, "splitting the stream changed the frames");
    assert_eq!(
        result, whole_result,
        "splitting the stream changed the outcome"
    );

    // The frames are the stream's prefix, and what is left is not a whole frame.
    let mut prefix = Vec::new();
    for f in &got {
        frame::encode_into(f, &mut prefix).expect("a small frame encodes");
    }
    assert!(
        stream.starts_with(&prefix),
        "frames that are not the stream"
    );
    let tail = &stream[prefix.len()..];
    let announced = tail
        .get(..HEADER_LEN)
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
    match result {
        Ok(()) => {
            for dec in [&whole, &split] {
                assert!(!dec.is_broken());
                assert_eq!(dec.buffered(), tail.len(), "buffered bytes are the tail");
            }
            if let Some(len) = announced {
                assert!(len <= max, "a header over the limit was accepted");
                assert!(
                    HEADER_LEN + len as usize > tail.len(),
                    "a whole frame was held back"
                );
            }
        }
        Err(Error::FrameTooLarge { len, max: m }) => {
            assert_eq!(m, u64::from(max));
            assert_eq!(announced.map(u64::from), Some(len), "the refused header");
            assert!(len > m);
            for dec in [&mut whole, &mut split] {
                assert!(dec.is_broken());
                let r = dec.feed(tail, |_| panic!("a broken decoder delivered a frame"));
                assert_eq!(r, Err(Error::Broken));
                assert!(dec.is_broken());
            }
        }
        Err(e) => panic!("unexpected frame error {e:?}"),
    }
}

// --- routed message ---------------------------------------------------------------------------

/// Input: one routed message. A decoded message must re-encode to exactly the input (the
/// encoding is canonical), with `encoded_len` agreeing; a refused one is an `Error::Route`.
///
/// # Panics
///
/// On a violated invariant.
pub fn routed_message(data: &[u8]) {
    let m = match route::decode(data) {
        Ok(m) => m,
        Err(Error::Route(_)) => return,
        Err(e) => panic!("route::decode failed with {e:?}, not Error::Route"),
    };
    assert!(m.onward.len() <= route::MAX_HOPS && m.return_route.len() <= route::MAX_HOPS);
    let len = route::encoded_len(&m.onward, &m.return_route, m.payload.len())
        .expect("a decoded message is within the limits");
    assert_eq!(len, data.len(), "encoded_len disagrees with the input");
    let enc = route::encode(&m.onward, &m.return_route, m.payload).expect("encodes");
    assert_eq!(enc, data, "the encoding is not canonical");
    assert_eq!(route::decode(&enc).as_ref(), Ok(&m));
    // Zero-copy: the payload is the input's tail.
    assert_eq!(m.payload.as_ptr_range().end, data.as_ptr_range().end);
    // One byte less or more is refused.
    assert!(route::decode(&data[..data.len() - 1]).is_err());
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(route::decode(&longer).is_err());
    assert!(route::encode_to_slice(&m.onward, &m.return_route, m.payload, &mut longer).is_err());
}

// --- Noise handshake --------------------------------------------------------------------------

const PROLOGUE: &[u8] = b"tether fuzz";
const INITIATOR_STATIC: [u8; 32] = [0x11; 32];
const RESPONDER_STATIC: [u8; 32] = [0x22; 32];
const INITIATOR_EPHEMERAL: [u8; 32] = [0x33; 32];
const RESPONDER_EPHEMERAL: [u8; 32] = [0x44; 32];

/// A handshake with fixed keys (static and ephemeral), so the genuine messages are the same
/// bytes every run and can be seeds.
pub fn fixed_handshake(suite: Suite, initiator: bool) -> Handshake {
    let (s, e) = if initiator {
        (&INITIATOR_STATIC, &INITIATOR_EPHEMERAL)
    } else {
        (&RESPONDER_STATIC, &RESPONDER_EPHEMERAL)
    };
    Handshake::new(&suite.protocol_name(), initiator, s, PROLOGUE, Some(e))
        .expect("fixed keys make a handshake")
}

/// The three genuine messages of the fixed handshake, with payloads "one", "two", "three".
pub fn genuine_handshake(suite: Suite) -> [Vec<u8>; 3] {
    let mut i = fixed_handshake(suite, true);
    let mut r = fixed_handshake(suite, false);
    let m1 = i.write_message(b"one").expect("message 1");
    r.read_message(&m1).expect("read 1");
    let m2 = r.write_message(b"two").expect("message 2");
    i.read_message(&m2).expect("read 2");
    let m3 = i.write_message(b"three").expect("message 3");
    [m1, m2, m3]
}

/// [`genuine_handshake`] of `Suite::ALL[suite]`, computed once (it costs eight DH operations).
fn genuine_cached(suite: usize) -> &'static [Vec<u8>; 3] {
    static GENUINE: OnceLock<[[Vec<u8>; 3]; 4]> = OnceLock::new();
    &GENUINE.get_or_init(|| Suite::ALL.map(genuine_handshake))[suite]
}

/// After a refused handshake message: terminal, as documented.
fn assert_broken(h: &mut Handshake, e: &Error, genuine: Option<&[u8]>) {
    assert!(
        matches!(e, Error::Handshake(_)),
        "a refused read gave {e:?}"
    );
    assert!(h.is_broken() && !h.is_finished());
    assert_eq!(h.remote_static(), None);
    assert_eq!(
        h.read_message(genuine.unwrap_or(&[0; 96])),
        Err(Error::Broken)
    );
    assert_eq!(h.write_message(b""), Err(Error::Broken));
}

/// Both sides finished with the same transcript and matching keys.
fn assert_finished(i: Handshake, r: Handshake) {
    assert!(i.is_finished() && r.is_finished());
    assert_eq!(i.handshake_hash(), r.handshake_hash());
    let pub_i = public_key(&INITIATOR_STATIC).expect("public key");
    let pub_r = public_key(&RESPONDER_STATIC).expect("public key");
    assert_eq!(i.remote_static(), Some(&pub_r[..]));
    assert_eq!(r.remote_static(), Some(&pub_i[..]));
    let (si, sr) = (i.split().expect("split"), r.split().expect("split"));
    assert_eq!(*si.send_key, *sr.recv_key);
    assert_eq!(*si.recv_key, *sr.send_key);
}

/// Input: `selector, message`. Selector bits 0-1 pick the suite; `(selector >> 2) % 3` the
/// stage: 0, a fresh responder reads message 1; 1, an initiator that wrote message 1 reads
/// message 2; 2, a responder after a genuine message 1 and 2 reads message 3. A refused message
/// must leave the reader broken for good (never a panic, never a half-usable state); an
/// accepted one must be the genuine message (or, for message 1, any well-formed one) and the
/// handshake must then complete.
///
/// # Panics
///
/// On a violated invariant.
pub fn noise_handshake(data: &[u8]) {
    let [selector, msg @ ..] = data else {
        return;
    };
    let suite = Suite::ALL[usize::from(selector & 3)];
    let [m1, m2, m3] = genuine_cached(usize::from(selector & 3)).clone();
    let mut i = fixed_handshake(suite, true);
    let mut r = fixed_handshake(suite, false);
    match (selector >> 2) % 3 {
        0 => {
            // Message 1 is `e` and a plaintext payload: any 32..=65535 bytes are well formed.
            let well_formed = (32..=tether_core::noise::MAX_MESSAGE_LEN).contains(&msg.len());
            match r.read_message(msg) {
                Ok(payload) => {
                    assert!(well_formed, "message 1 of {} bytes accepted", msg.len());
                    assert_eq!(payload, &msg[32..]);
                    assert!(!r.is_broken() && r.is_my_turn() && r.remote_static().is_none());
                    // The responder answers (or, for a low-order `e`, fails for good), and
                    // only the initiator that wrote exactly this message 1 accepts the answer.
                    match r.write_message(b"two") {
                        Ok(reply) => {
                            assert_eq!(i.write_message(b"one").as_ref(), Ok(&m1));
                            assert_eq!(i.read_message(&reply).is_ok(), msg == m1);
                        }
                        Err(e) => assert_broken(&mut r, &e, None),
                    }
                }
                Err(e) => {
                    assert!(!well_formed, "well-formed message 1 refused: {e:?}");
                    assert_broken(&mut r, &e, Some(&m1));
                }
            }
        }
        1 => {
            assert_eq!(i.write_message(b"one").as_ref(), Ok(&m1));
            match i.read_message(msg) {
                Ok(payload) => {
                    assert_eq!(msg, m2, "a forged message 2 was accepted");
                    assert_eq!(payload, b"two");
                    r.read_message(&m1).expect("read 1");
                    r.write_message(b"two").expect("message 2");
                    let m3 = i.write_message(b"three").expect("message 3");
                    assert_eq!(r.read_message(&m3).expect("read 3"), b"three");
                    assert_finished(i, r);
                }
                Err(e) => assert_broken(&mut i, &e, Some(&m2)),
            }
        }
        _ => {
            r.read_message(&m1).expect("read 1");
            assert_eq!(r.write_message(b"two").as_ref(), Ok(&m2));
            match r.read_message(msg) {
                Ok(payload) => {
                    assert_eq!(msg, m3, "a forged message 3 was accepted");
                    assert_eq!(payload, b"three");
                    assert_eq!(i.write_message(b"one").as_ref(), Ok(&m1));
                    i.read_message(&m2).expect("read 2");
                    assert_eq!(i.write_message(b"three").as_ref(), Ok(&m3));
                    assert_finished(i, r);
                }
                Err(e) => assert_broken(&mut r, &e, Some(&m3)),
            }
        }
    }
}

// --- channel open -----------------------------------------------------------------------------

const CHANNEL_KEY_A: [u8; 32] = [0x5a; 32];
const CHANNEL_KEY_B: [u8; 32] = [0xa5; 32];
/// The shortest rekey interval the channel allows, so a few thousand nonces cross epochs.
pub const CHANNEL_REKEY_INTERVAL: u64 = WINDOW;
/// The associated data of channel inputs whose selector has bit 2 set.
pub const CHANNEL_AD: &[u8] = b"portal";

/// A message sealed by the sender, not yet delivered.
struct Sealed {
    nonce: u64,
    message: Vec<u8>,
    payload: Vec<u8>,
}

fn seal(tx: &mut ChannelCipher, ad: &[u8], payload: &[u8]) -> Sealed {
    let nonce = tx.sending_nonce();
    let mut message = vec![0; ChannelCipher::sealed_len(payload.len())];
    tx.seal_to_ad(ad, payload, &mut message).expect("seal");
    Sealed {
        nonce,
        message,
        payload: payload.to_vec(),
    }
}

fn open(rx: &mut ChannelCipher, ad: &[u8], message: &[u8]) -> Result<(u64, Vec<u8>), Error> {
    let mut out = vec![0; ChannelCipher::opened_len(message)?];
    let n = rx.open_to_ad(ad, message, &mut out)?;
    Ok((n, out))
}

/// The channel pair and the pre-state that a channel input's selector sets up: the sender at
/// the nonce `(pre & 15) * WINDOW / 2` (up to 7 epochs in), one message delivered and, when
/// `pre & 16`, the message before it still undelivered (in the previous epoch when the nonce
/// starts one).
pub struct ChannelSetup {
    /// The sender, after the messages below.
    pub tx: ChannelCipher,
    /// The message the receiver has opened.
    pub delivered: Vec<u8>,
    /// The message held back, if any.
    pub pending: Option<Vec<u8>>,
}

/// The pre-state of a channel input (see [`ChannelSetup`]).
pub fn channel_setup(selector: u8) -> ChannelSetup {
    let (tx, _, first, pending) = setup(selector);
    ChannelSetup {
        tx,
        delivered: first.message,
        pending: pending.map(|p| p.message),
    }
}

fn setup(selector: u8) -> (ChannelCipher, ChannelCipher, Sealed, Option<Sealed>) {
    let suite = Suite::ALL[usize::from(selector & 3)];
    let ad = channel_ad(selector);
    let pre = selector >> 3;
    let new = |send: &[u8; 32], recv: &[u8; 32]| {
        ChannelCipher::new(suite, send, recv, CHANNEL_REKEY_INTERVAL).expect("cipher")
    };
    let mut tx = new(&CHANNEL_KEY_A, &CHANNEL_KEY_B);
    let mut rx = new(&CHANNEL_KEY_B, &CHANNEL_KEY_A);
    let start = u64::from(pre & 15) * (WINDOW / 2);
    let mut pending = None;
    if pre & 16 != 0 {
        tx.skip_sending_nonce_to(start.saturating_sub(1))
            .expect("skip");
        pending = Some(seal(&mut tx, ad, b"held back"));
    }
    tx.skip_sending_nonce_to(start.max(tx.sending_nonce()))
        .expect("skip");
    let first = seal(&mut tx, ad, b"first");
    assert_eq!(
        open(&mut rx, ad, &first.message),
        Ok((first.nonce, first.payload.clone()))
    );
    (tx, rx, first, pending)
}

/// The associated data a channel selector picks.
pub fn channel_ad(selector: u8) -> &'static [u8] {
    if selector & 4 == 0 {
        b""
    } else {
        CHANNEL_AD
    }
}

/// Input: `selector, message`. Selector bits 0-1 pick the suite, bit 2 the associated data,
/// bits 3-7 the receiver's pre-state (see [`ChannelSetup`]). The message is opened by the
/// receiver. A refused message must change nothing: the window and epoch are as before, and a
/// held-back genuine message and a fresh one both still open. An accepted one must be recorded
/// (its replay is refused) and leave the channel working.
///
/// # Panics
///
/// On a violated invariant.
pub fn channel_open(data: &[u8]) {
    let [selector, msg @ ..] = data else {
        return;
    };
    let ad = channel_ad(*selector);
    let (mut tx, mut rx, _, pending) = setup(*selector);
    let before = (rx.highest_received(), rx.receiving_epoch());
    let opened = match open(&mut rx, ad, msg) {
        Ok((n, _)) => {
            assert_eq!(
                msg[..8],
                n.to_be_bytes(),
                "the nonce is the message's first 8 bytes"
            );
            assert!(before.0 != Some(n), "a replay was accepted");
            assert_eq!(rx.highest_received(), before.0.max(Some(n)));
            assert_eq!(
                rx.receiving_epoch(),
                before.1.max(n / CHANNEL_REKEY_INTERVAL)
            );
            assert!(matches!(
                open(&mut rx, ad, msg),
                Err(Error::Replay {
                    reason: ReplayReason::Duplicate,
                    ..
                })
            ));
            Some(n)
        }
        Err(e) => {
            assert!(
                matches!(e, Error::Decrypt | Error::Replay { .. }),
                "a refused message gave {e:?}"
            );
            if msg.len() < OVERHEAD || msg.len() > MAX_MESSAGE {
                assert_eq!(e, Error::Decrypt);
            }
            assert_eq!(
                (rx.highest_received(), rx.receiving_epoch()),
                before,
                "a refused message changed the receiver"
            );
            None
        }
    };
    if let Some(p) = pending {
        let r = open(&mut rx, ad, &p.message);
        if opened.is_none() {
            assert_eq!(
                r,
                Ok((p.nonce, p.payload)),
                "a refused message broke the channel"
            );
        } else {
            assert!(matches!(r, Ok(_) | Err(Error::Replay { .. })), "{r:?}");
        }
    }
    if let Some(n) = opened {
        if tx.sending_nonce() <= n && tx.skip_sending_nonce_to(n + 1).is_err() {
            return; // accepted a genuine message epochs ahead of the sender: nothing to send
        }
    }
    let fresh = seal(&mut tx, ad, b"fresh");
    assert_eq!(
        open(&mut rx, ad, &fresh.message),
        Ok((fresh.nonce, fresh.payload)),
        "the channel stopped working"
    );
}

// --- portal message ---------------------------------------------------------------------------

/// What `PortalMessage::decode` must say about `data`, from `docs/portals.md` and the engine
/// (the reference model): `Ok(())` or the error.
fn portal_expected(data: &[u8]) -> Result<(), PortalError> {
    if data.first() == Some(&KIND_ERROR) {
        return Ok(());
    }
    let (Some(&t), Some(body)) = (data.get(1), data.get(2..)) else {
        return Err(PortalError::Empty);
    };
    match t {
        portal::T_DATA if body.len() < 8 => Err(PortalError::Malformed(t, body.len())),
        portal::T_DATA if body.len() - 8 > portal::MAX_DATA => {
            Err(PortalError::DataTooLarge(body.len() - 8))
        }
        portal::T_EOF if body.len() != 8 => Err(PortalError::Malformed(t, body.len())),
        portal::T_ACK if body.len() != 17 || body[16] > 3 => {
            Err(PortalError::Malformed(t, body.len()))
        }
        portal::T_OPEN | portal::T_CLOSE | portal::T_DATA | portal::T_EOF | portal::T_ACK => Ok(()),
        2 | 3 | 5 => Err(PortalError::Retired(t)),
        _ => Err(PortalError::UnknownType(t)),
    }
}

/// Input: one portal payload. The outcome must match the reference model; a decoded message
/// must borrow from the input, encode to what decodes to it again, and encode to exactly the
/// input where the encoding is canonical (kind byte 0, no ignored or cut bytes).
///
/// # Panics
///
/// On a violated invariant.
pub fn portal_message(data: &[u8]) {
    let decoded = PortalMessage::decode(data);
    assert_eq!(decoded.map(|_| ()), portal_expected(data), "{data:?}");
    let m = match decoded {
        Ok(m) => m,
        Err(e) => {
            assert!(e.to_string().starts_with("protocol error: "), "{e}");
            return;
        }
    };
    let enc = m.encode().expect("a decoded message encodes");
    assert_eq!(enc.len(), m.encoded_len());
    assert_eq!(PortalMessage::decode(&enc), Ok(m), "decode(encode(m)) != m");
    let input = data.as_ptr_range();
    let borrowed = |b: &[u8]| {
        let r = b.as_ptr_range();
        assert!(input.start <= r.start && r.end <= input.end, "not borrowed");
    };
    let canonical = match m {
        PortalMessage::Data { bytes, .. } => {
            borrowed(bytes);
            assert!(bytes.len() <= portal::MAX_DATA);
            data[0] == KIND_DATA
        }
        PortalMessage::Close(b) => {
            borrowed(b);
            assert!(b.len() <= MAX_REASON);
            data[0] == KIND_DATA && data.len() <= 2 + MAX_REASON
        }
        PortalMessage::PathFailed(b) => {
            borrowed(b);
            assert!(b.len() <= MAX_REASON);
            data.len() <= 1 + MAX_REASON
        }
        PortalMessage::Ack { .. } | PortalMessage::Eof { .. } => data[0] == KIND_DATA,
        PortalMessage::Open => data[0] == KIND_DATA && data.len() == 2,
    };
    if canonical {
        assert_eq!(enc, data, "a canonical payload re-encoded differently");
    }
}

// --- sealed records ---------------------------------------------------------------------------

/// The data key of the records target, its id, the stream and the producer.
pub const RECORD_KEY: [u8; 32] = [0x3c; 32];
pub const RECORD_KEY_ID: records::KeyId = [0xd4; records::KEY_ID_LEN];
pub const RECORD_STREAM: &str = "fuzz.stream";
pub const RECORD_PRODUCER: &str = "Ifuzz";
/// The position the producer of a records input has reached when its selector has bit 1 set.
pub const RECORD_OPENED: u64 = 5;

/// The algorithm a records selector picks (bit 0).
pub fn record_algorithm(selector: u8) -> tether_core::aead::Algorithm {
    if selector & 1 == 0 {
        tether_core::aead::Algorithm::Aes256Gcm
    } else {
        tether_core::aead::Algorithm::ChaCha20Poly1305
    }
}

/// The producer's sealer for a records selector, at `next`.
pub fn record_sealer(selector: u8, next: u64) -> RecordSealer {
    RecordSealer::new(
        record_algorithm(selector),
        &RECORD_KEY,
        RECORD_KEY_ID,
        RECORD_STREAM,
        RECORD_PRODUCER,
        next,
    )
    .expect("sealer")
}

/// Input: `selector, record`. Selector bit 0 picks the algorithm; bit 1, whether the opener has
/// already opened the producer's record at [`RECORD_OPENED`]. The record is opened. A refused
/// record must change nothing (the next genuine record still opens, with the right gap) and be
/// refused for the reason its bytes give; an accepted one must be exactly what the producer's
/// sealer makes of its headers and body at its position (nothing else authenticates), be
/// recorded (its replay is refused) and report the right gap.
///
/// # Panics
///
/// On a violated invariant.
pub fn records_open(data: &[u8]) {
    let [selector, record @ ..] = data else {
        return;
    };
    let mut o = RecordOpener::new(RECORD_STREAM).expect("opener");
    o.add_key(
        RECORD_KEY_ID,
        record_algorithm(*selector),
        &RECORD_KEY,
        RECORD_PRODUCER,
    )
    .expect("key");
    let before = if selector & 2 == 0 {
        None
    } else {
        let first = record_sealer(*selector, RECORD_OPENED)
            .seal(&[], b"first")
            .expect("seal");
        o.open(&first).expect("the genuine record opens");
        Some(RECORD_OPENED)
    };
    assert_eq!(o.last_position(RECORD_PRODUCER), before);
    match o.open(record) {
        Ok(r) => {
            let header = records::peek(record).expect("an opened record has a header");
            assert_eq!((r.key_id, r.position), (header.key_id, header.position));
            assert!(
                !matches!(before, Some(b) if r.position <= b),
                "a replay was accepted"
            );
            assert_eq!(r.gap, before.map_or(0, |b| r.position - b - 1));
            let headers: Vec<_> = r.headers().collect();
            assert!(headers.len() <= records::MAX_HEADERS);
            let again = record_sealer(*selector, r.position)
                .seal(&headers, r.body())
                .expect("what opened can be sealed");
            assert_eq!(
                again, record,
                "an accepted record the producer did not seal"
            );
            assert_eq!(o.last_position(RECORD_PRODUCER), Some(r.position));
            assert!(matches!(o.open(record), Err(RecordError::Replayed { .. })));
        }
        Err(e) => {
            assert_eq!(
                o.last_position(RECORD_PRODUCER),
                before,
                "a refusal changed state"
            );
            match records::peek(record) {
                Err(p) => assert_eq!(e, p),
                Ok(h) if h.key_id != RECORD_KEY_ID => {
                    assert_eq!(e, RecordError::UnknownKey { key_id: h.key_id });
                }
                Ok(_) => assert!(
                    matches!(
                        e,
                        RecordError::Forged { .. }
                            | RecordError::BadEnvelope { .. }
                            | RecordError::Replayed { .. }
                    ),
                    "{e:?}"
                ),
            }
            assert!(!e.to_string().is_empty());
            let next = before.map_or(0, |b| b + 1);
            let fresh = record_sealer(*selector, next)
                .seal(&[("h", &b"v"[..])], b"fresh")
                .expect("seal");
            let opened = o.open(&fresh).expect("the opener stopped working");
            assert_eq!((opened.position, opened.gap), (next, 0));
        }
    }
}

// --- nats_decode -------------------------------------------------------------------------------

/// The NATS decoder's `max_payload` selected by the first input byte (0 to 255 bytes).
pub fn nats_max_payload(selector: u8) -> usize {
    usize::from(selector)
}

/// Decode a server's stream (after a selector byte: `max_payload`; the second: the chunk size
/// it is fed in, 1 to 256): fed whole or in chunks, the same operations come out, in order, and
/// the same refusal if any; no message is over `max_payload`; the decoder never holds more
/// than it was fed.
///
/// # Panics
///
/// On a violated invariant.
pub fn nats_decode(data: &[u8]) {
    let [max, chunk, stream @ ..] = data else {
        return;
    };
    let max = nats_max_payload(*max);
    let chunk = usize::from(*chunk) + 1;
    let run = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut d = nats::Decoder::new(max);
        let mut ops = Vec::new();
        let mut fed = 0;
        for piece in pieces {
            d.feed(piece);
            fed += piece.len();
            loop {
                match d.next_op() {
                    Ok(Some(op)) => {
                        if let ServerOp::Msg { payload, .. } = &op {
                            assert!(payload.len() <= max, "a payload over max_payload");
                        }
                        ops.push(op);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        assert_eq!(d.next_op(), Err(e.clone()), "a broken decoder recovered");
                        return (ops, Some(e));
                    }
                }
            }
            assert!(d.buffered() <= fed);
        }
        (ops, None)
    };
    let whole = run(&mut std::iter::once(stream));
    let chunked = run(&mut stream.chunks(chunk));
    // A stream cut short of a long line's end may be refused in chunks only after more bytes;
    // both agree on every operation before a refusal, and on whether one came.
    assert_eq!(whole, chunked, "chunking changed what was decoded");
}
