//! Sealed records: end-to-end encrypted messages for brokers (NATS JetStream, Redis Streams,
//! MQTT) that store and forward them but read nothing (issue 17).
//!
//! A producer seals each record with a data key it alone uses; consumers that hold the key open
//! them. The broker sees the key id and the position, nothing else: the application's headers
//! travel inside the ciphertext.
//!
//! ```text
//! sealed record, version 1:
//!   offset 0   1 byte   version = 0x01
//!          1   16 bytes key id (random; names the data key)
//!         17   8 bytes  position, u64 BE: the producer's sequence number in the stream
//!         25   ...      AEAD ciphertext of the envelope, then the 16-byte tag
//!
//! nonce    = 4 zero bytes ‖ position BE                    (both algorithms)
//! AAD      = "tether-record/1" ‖ u16 BE len(stream) ‖ stream ‖ u8 len(producer) ‖ producer
//!            ‖ the 25-byte header
//! envelope = u16 BE header count (≤ 64)
//!            ‖ per header: u16 BE name length (1..=255) ‖ name (UTF-8) ‖ u32 BE value length ‖ value
//!            ‖ body (the rest)
//! ```
//!
//! Why it is safe. A key is used by one producer only, and the [`RecordSealer`] hands out
//! strictly increasing positions (never `u64::MAX`), so no nonce repeats under a key. The AAD
//! binds the stream, the producer and the whole header, so a broker that moves a record to
//! another stream, claims another producer, or changes the position or key id makes it fail
//! authentication.
//!
//! The [`RecordOpener`] keeps, per producer, the last position it opened: a record at or before
//! it is refused (replayed or reordered); one further ahead than the next opens and reports the
//! positions skipped (`gap`), so a consumer can count what a broker dropped. The first record
//! seen from a producer sets the baseline. Positions are tracked per producer, not per key, so
//! a producer's positions go on increasing across its key rotations.
//!
//! Order of checks when opening (house rule: authenticate first, then change state): sizes and
//! version; the key id; AEAD open; the envelope; the replay check; and only then the producer's
//! last position moves. Any refusal changes nothing. A "replayed" refusal is therefore only
//! ever given for a record that authenticated: a forged record is always "forged".
//!
//! Pure: no I/O, no clock, no randomness (the caller picks the key id and the key).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::aead::{Algorithm, Key, NONCE_LEN, TAG_LEN};
use crate::error::Error;

/// The format version, the record's first byte.
pub const VERSION: u8 = 1;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 16;
/// Bytes of the cleartext header: version, key id, position.
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + 8;
/// What sealing adds to an envelope: the header and the AEAD tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest envelope (headers and body, before encryption).
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;
/// The largest sealed record.
pub const MAX_RECORD: usize = MAX_ENVELOPE + OVERHEAD;
/// The most headers an envelope carries.
pub const MAX_HEADERS: usize = 64;
/// The longest header name, in bytes.
pub const MAX_HEADER_NAME: usize = 255;
/// The longest stream name, in bytes (UTF-8).
pub const MAX_STREAM: usize = 255;
/// The longest producer identifier, in bytes (ASCII).
pub const MAX_PRODUCER: usize = 255;
/// The first bytes of the AAD: the format's domain separation.
pub const AAD_LABEL: &[u8] = b"tether-record/1";

/// A key id: random bytes chosen by whoever makes the data key.
pub type KeyId = [u8; KEY_ID_LEN];

/// A header as the application gives it: a name and a value.
pub type Header<'a> = (&'a str, &'a [u8]);

#[path = "records_envelope.rs"]
mod envelope;
pub use envelope::{decode_envelope, encode_envelope, envelope_len, Envelope};
use envelope::{layout, name_at, write_envelope, Layout};

// --- errors ------------------------------------------------------------------------------------

/// Why a record was refused. The coarse class is [`RecordError::reason`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than the header and tag.
    TooShort { len: usize },
    /// Longer than [`MAX_RECORD`].
    TooLarge { len: usize },
    /// An unknown format version.
    BadVersion { version: u8 },
    /// The record authenticated but its envelope is not well formed (the producer is broken).
    BadEnvelope {
        key_id: KeyId,
        position: u64,
        what: &'static str,
    },
    /// No key with this id: fetch it and open the record again.
    UnknownKey { key_id: KeyId },
    /// Authentication failed: forged, altered, moved to another stream, or not this producer's.
    /// Carries no more detail than the key tried.
    Forged { key_id: KeyId },
    /// Authentic, but at or before the last position opened for its producer.
    Replayed {
        key_id: KeyId,
        producer: Arc<str>,
        position: u64,
        last: u64,
    },
}

/// The four classes of refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Malformed,
    UnknownKey,
    Forged,
    Replayed,
}

impl Reason {
    /// The name Python sees (`RecordRefused.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownKey => "unknown-key",
            Reason::Forged => "forged",
            Reason::Replayed => "replayed",
        }
    }
}

impl RecordError {
    pub fn reason(&self) -> Reason {
        match self {
            RecordError::TooShort { .. }
            | RecordError::TooLarge { .. }
            | RecordError::BadVersion { .. }
            | RecordError::BadEnvelope { .. } => Reason::Malformed,
            RecordError::UnknownKey { .. } => Reason::UnknownKey,
            RecordError::Forged { .. } => Reason::Forged,
            RecordError::Replayed { .. } => Reason::Replayed,
        }
    }

    /// The record's key id, where the refusal knows it.
    pub fn key_id(&self) -> Option<&KeyId> {
        match self {
            RecordError::BadEnvelope { key_id, .. }
            | RecordError::UnknownKey { key_id }
            | RecordError::Forged { key_id }
            | RecordError::Replayed { key_id, .. } => Some(key_id),
            _ => None,
        }
    }

    /// The record's position, where it is authentic (never for a forged record).
    pub fn position(&self) -> Option<u64> {
        match self {
            RecordError::BadEnvelope { position, .. } | RecordError::Replayed { position, .. } => {
                Some(*position)
            }
            _ => None,
        }
    }

    /// The last position opened for the producer (replayed records only).
    pub fn last(&self) -> Option<u64> {
        match self {
            RecordError::Replayed { last, .. } => Some(*last),
            _ => None,
        }
    }
}

/// A key id in hex, as messages and reprs show it.
pub fn key_id_hex(id: &KeyId) -> String {
    use std::fmt::Write;
    id.iter()
        .fold(String::with_capacity(2 * KEY_ID_LEN), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::TooShort { len } => write!(
                f,
                "malformed record: {len} bytes, a sealed record has at least {OVERHEAD}; it is \
                 not a tether record or was cut short"
            ),
            RecordError::TooLarge { len } => write!(
                f,
                "malformed record: {len} bytes, the limit is {MAX_RECORD}; drop it"
            ),
            RecordError::BadVersion { version } => write!(
                f,
                "malformed record: unknown format version {version} (this build reads version \
                 {VERSION}); upgrade tether if producers use a newer format"
            ),
            RecordError::BadEnvelope { what, position, .. } => write!(
                f,
                "malformed record: position {position} authenticated but its envelope is \
                 invalid ({what}); the producer is faulty"
            ),
            RecordError::UnknownKey { key_id } => write!(
                f,
                "no key with id {}: fetch that key, add it with add_key and open the record again",
                key_id_hex(key_id)
            ),
            RecordError::Forged { key_id } => write!(
                f,
                "record authentication failed under key {} (forged, altered, from another \
                 stream or not this key's producer); drop it",
                key_id_hex(key_id)
            ),
            RecordError::Replayed {
                producer,
                position,
                last,
                ..
            } => write!(
                f,
                "replayed or reordered record: position {position} of producer {producer} is \
                 not after the last one opened ({last}); drop it"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

// --- the cleartext header and the envelope ------------------------------------------------------

/// The cleartext part of a record, as read without any key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub key_id: KeyId,
    pub position: u64,
}

/// Read a record's cleartext header, checking its size and version (no key needed: this is
/// how a consumer learns which key to fetch). Nothing is authenticated yet.
pub fn peek(record: &[u8]) -> Result<RecordHeader, RecordError> {
    if record.len() < OVERHEAD {
        return Err(RecordError::TooShort { len: record.len() });
    }
    if record.len() > MAX_RECORD {
        return Err(RecordError::TooLarge { len: record.len() });
    }
    if record[0] != VERSION {
        return Err(RecordError::BadVersion { version: record[0] });
    }
    let mut key_id = [0u8; KEY_ID_LEN];
    key_id.copy_from_slice(&record[1..=KEY_ID_LEN]);
    let mut pos = [0u8; 8];
    pos.copy_from_slice(&record[1 + KEY_ID_LEN..HEADER_LEN]);
    Ok(RecordHeader {
        key_id,
        position: u64::from_be_bytes(pos),
    })
}

fn header_bytes(key_id: &KeyId, position: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = VERSION;
    h[1..=KEY_ID_LEN].copy_from_slice(key_id);
    h[1 + KEY_ID_LEN..].copy_from_slice(&position.to_be_bytes());
    h
}

fn nonce(position: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&position.to_be_bytes());
    n
}

fn check_stream(stream: &str) -> Result<(), Error> {
    if stream.is_empty() || stream.len() > MAX_STREAM {
        return Err(Error::InvalidArgument(format!(
            "a stream name is 1 to {MAX_STREAM} bytes of UTF-8, got {}",
            stream.len()
        )));
    }
    Ok(())
}

fn check_producer(producer: &str) -> Result<(), Error> {
    if producer.is_empty()
        || producer.len() > MAX_PRODUCER
        || !producer.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::InvalidArgument(format!(
            "a producer identifier is 1 to {MAX_PRODUCER} printable ASCII characters \
             (for example an identity identifier), got {producer:?}"
        )));
    }
    Ok(())
}

/// The AAD up to (not including) the record header: label, stream, producer.
fn aad_prefix(stream: &str, producer: &str) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(AAD_LABEL.len() + 2 + stream.len() + 1 + producer.len() + HEADER_LEN);
    aad.extend_from_slice(AAD_LABEL);
    // Both lengths were checked (≤ 255) by check_stream and check_producer.
    aad.extend_from_slice(
        &u16::try_from(stream.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    aad.extend_from_slice(stream.as_bytes());
    aad.push(u8::try_from(producer.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(producer.as_bytes());
    aad
}

// --- sealing -----------------------------------------------------------------------------------

/// A producer's sealer for one stream under one data key.
///
/// Holds the next position and advances it by one per record; it never seals at `u64::MAX`.
/// A refused call (bad header, too large, positions exhausted) seals nothing and consumes no
/// position. The key's bytes are not kept (`ring` expands them; see `aead`).
#[derive(Debug)]
pub struct RecordSealer {
    key: Key,
    key_id: KeyId,
    stream: String,
    producer: String,
    /// The AAD with room for the header at the end, rewritten per record.
    aad: Vec<u8>,
    next_position: u64,
}

impl RecordSealer {
    pub fn new(
        alg: Algorithm,
        key: &[u8],
        key_id: KeyId,
        stream: &str,
        producer: &str,
        next_position: u64,
    ) -> Result<Self, Error> {
        check_stream(stream)?;
        check_producer(producer)?;
        let key = Key::new(alg, key)?;
        let mut aad = aad_prefix(stream, producer);
        aad.extend_from_slice(&header_bytes(&key_id, next_position));
        Ok(Self {
            key,
            key_id,
            stream: stream.to_owned(),
            producer: producer.to_owned(),
            aad,
            next_position,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    pub fn stream(&self) -> &str {
        &self.stream
    }
    pub fn producer(&self) -> &str {
        &self.producer
    }
    /// The position the next record gets.
    pub fn next_position(&self) -> u64 {
        self.next_position
    }

    /// The size of the sealed record for these headers and body, or why they cannot be sealed.
    pub fn sealed_len(headers: &[Header<'_>], body_len: usize) -> Result<usize, Error> {
        Ok(envelope_len(headers, body_len)? + OVERHEAD)
    }

    /// Positions left for `n` more records?
    fn reserve(&self, n: usize) -> Result<(), Error> {
        // The last position, u64::MAX, is never used, so `next_position` can always advance.
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if n > u64::MAX - self.next_position {
            return Err(Error::NonceExhausted);
        }
        Ok(())
    }

    /// Seal one record (sizes and positions already checked) at the next position over `out`,
    /// which is exactly its sealed length. Every byte of `out` is written before any is read
    /// (the Python binding hands over a `bytes` object's fresh, unwritten storage).
    fn seal_checked(&mut self, headers: &[Header<'_>], body: &[u8], out: &mut [u8]) {
        let position = self.next_position;
        let header = header_bytes(&self.key_id, position);
        let (head, sealed) = out.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&header);
        let tag_at = sealed.len() - TAG_LEN;
        write_envelope(headers, body, &mut sealed[..tag_at]);
        sealed[tag_at..].fill(0);
        let at = self.aad.len() - HEADER_LEN;
        self.aad[at..].copy_from_slice(&header);
        let done = self.key.seal_in_place(&nonce(position), &self.aad, sealed);
        // Infallible: the buffer holds at least the tag, and the envelope is at most 16 MiB.
        debug_assert!(done.is_ok());
        self.next_position = position + 1;
    }

    /// The sealed length of each record of a batch, or why the batch cannot be sealed (a
    /// header, a size, or too few positions left): everything [`Self::seal_batch_to`] checks.
    pub fn batch_lens<'h, H: AsRef<[Header<'h>]>, B: AsRef<[u8]>>(
        &self,
        records: &[(H, B)],
    ) -> Result<Vec<usize>, Error> {
        let lens = records
            .iter()
            .map(|(h, b)| Self::sealed_len(h.as_ref(), b.as_ref().len()))
            .collect::<Result<Vec<_>, _>>()?;
        self.reserve(records.len())?;
        Ok(lens)
    }

    /// Seal a batch at consecutive positions, each record over its own buffer of exactly its
    /// [`Self::batch_lens`] length (for example fresh `bytes` objects: no copy afterwards).
    /// All or nothing: everything is checked before the first record is sealed.
    pub fn seal_batch_to<'h, H: AsRef<[Header<'h>]>, B: AsRef<[u8]>>(
        &mut self,
        records: &[(H, B)],
        outs: &mut [&mut [u8]],
    ) -> Result<(), Error> {
        let lens = self.batch_lens(records)?;
        if outs.len() != lens.len() || outs.iter().zip(&lens).any(|(o, &n)| o.len() != n) {
            return Err(Error::InvalidArgument(
                "one output buffer per record, each of its sealed length".into(),
            ));
        }
        for ((headers, body), out) in records.iter().zip(outs.iter_mut()) {
            self.seal_checked(headers.as_ref(), body.as_ref(), out);
        }
        Ok(())
    }

    /// Seal one record at the next position.
    pub fn seal(&mut self, headers: &[Header<'_>], body: &[u8]) -> Result<Vec<u8>, Error> {
        let mut sealed = self.seal_batch(&[(headers, body)])?;
        Ok(sealed.pop().unwrap_or_default())
    }

    /// Seal a batch at consecutive positions, one `Vec` per record (all or nothing).
    pub fn seal_batch<'h, H: AsRef<[Header<'h>]>, B: AsRef<[u8]>>(
        &mut self,
        records: &[(H, B)],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut out: Vec<Vec<u8>> = self
            .batch_lens(records)?
            .into_iter()
            .map(|n| vec![0u8; n])
            .collect();
        let mut slices: Vec<&mut [u8]> = out.iter_mut().map(Vec::as_mut_slice).collect();
        self.seal_batch_to(records, &mut slices)?;
        Ok(out)
    }
}

// --- opening -----------------------------------------------------------------------------------

struct KeyEntry {
    key: Key,
    producer: Arc<str>,
    /// The AAD up to the record header, for this key's producer.
    aad_prefix: Vec<u8>,
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Key`'s Debug shows only its algorithm.
        f.debug_struct("KeyEntry")
            .field("key", &self.key)
            .field("producer", &self.producer)
            .finish_non_exhaustive()
    }
}

/// A record opened into a caller's buffer ([`RecordOpener::open_batch_into`]): who sealed it,
/// where, and where its envelope lies in that buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub key_id: KeyId,
    pub producer: Arc<str>,
    pub position: u64,
    /// Positions skipped since the last record opened from this producer (0 for the first).
    pub gap: u64,
    /// The envelope's place in the buffer.
    plain: Range<usize>,
    /// Offsets within the envelope.
    layout: Layout,
}

impl Opened {
    fn envelope<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.plain.clone()]
    }
    /// The headers, in order (names may repeat); `buf` is the buffer it was opened into.
    pub fn headers<'a>(&'a self, buf: &'a [u8]) -> impl ExactSizeIterator<Item = Header<'a>> + 'a {
        let plain = self.envelope(buf);
        self.layout
            .headers
            .iter()
            .map(move |(n, v)| (name_at(plain, n), &plain[v.clone()]))
    }
    /// The body; `buf` is the buffer it was opened into.
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &self.envelope(buf)[self.layout.body..]
    }
}

/// An opened record with its own envelope (from [`RecordOpener::open`]): an [`Opened`] (whose
/// fields it derefs to) and the buffer it points into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedRecord {
    opened: Opened,
    plain: Vec<u8>,
}

impl std::ops::Deref for OpenedRecord {
    type Target = Opened;
    fn deref(&self) -> &Opened {
        &self.opened
    }
}

impl OpenedRecord {
    /// The headers, in order (names may repeat).
    pub fn headers(&self) -> impl ExactSizeIterator<Item = Header<'_>> + '_ {
        self.opened.headers(&self.plain)
    }
    pub fn body(&self) -> &[u8] {
        self.opened.body(&self.plain)
    }
    /// The decrypted envelope, whole.
    pub fn envelope_bytes(&self) -> &[u8] {
        &self.plain
    }
}

/// A consumer's opener for one stream: the keys it holds (each bound to its producer) and, per
/// producer, the last position opened.
#[derive(Debug)]
pub struct RecordOpener {
    stream: String,
    keys: HashMap<KeyId, KeyEntry>,
    last: HashMap<Arc<str>, u64>,
    /// Scratch space for the AAD (so opening allocates only the plaintext).
    aad: Vec<u8>,
}

impl RecordOpener {
    pub fn new(stream: &str) -> Result<Self, Error> {
        check_stream(stream)?;
        Ok(Self {
            stream: stream.to_owned(),
            keys: HashMap::new(),
            last: HashMap::new(),
            aad: Vec::new(),
        })
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Add (or replace) the key `key_id`, used by `producer` alone.
    pub fn add_key(
        &mut self,
        key_id: KeyId,
        alg: Algorithm,
        key: &[u8],
        producer: &str,
    ) -> Result<(), Error> {
        check_producer(producer)?;
        let key = Key::new(alg, key)?;
        // Share the producer's name with its replay state, if it has any.
        let producer: Arc<str> = match self.last.get_key_value(producer) {
            Some((p, _)) => Arc::clone(p),
            None => Arc::from(producer),
        };
        let aad_prefix = aad_prefix(&self.stream, &producer);
        self.keys.insert(
            key_id,
            KeyEntry {
                key,
                producer,
                aad_prefix,
            },
        );
        Ok(())
    }

    /// Forget a key (its producer's last position is kept, so its records stay refused as
    /// replays if the key comes back). True if it was there.
    pub fn remove_key(&mut self, key_id: &KeyId) -> bool {
        self.keys.remove(key_id).is_some()
    }

    pub fn has_key(&self, key_id: &KeyId) -> bool {
        self.keys.contains_key(key_id)
    }

    /// The last position opened from `producer`.
    pub fn last_position(&self, producer: &str) -> Option<u64> {
        self.last.get(producer).copied()
    }

    /// Open one record. A refusal changes nothing.
    pub fn open(&mut self, record: &[u8]) -> Result<OpenedRecord, RecordError> {
        let mut plain = Vec::new();
        let opened = self.open_append(record, &mut plain)?;
        Ok(OpenedRecord { opened, plain })
    }

    /// Open one record, appending its envelope to `out` (one copy of the ciphertext, then
    /// decrypted in place). A refusal changes nothing, `out` included.
    pub fn open_append(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<Opened, RecordError> {
        let RecordHeader { key_id, position } = peek(record)?;
        let entry = self
            .keys
            .get(&key_id)
            .ok_or(RecordError::UnknownKey { key_id })?;
        self.aad.clear();
        self.aad.extend_from_slice(&entry.aad_prefix);
        self.aad.extend_from_slice(&record[..HEADER_LEN]);
        let start = out.len();
        // Bounded by MAX_RECORD (checked by `peek`), and already in memory as `record`.
        let (ciphertext, tag) = record[HEADER_LEN..].split_at(record.len() - OVERHEAD);
        out.extend_from_slice(ciphertext);
        let refuse = |out: &mut Vec<u8>, e: RecordError| {
            out.truncate(start);
            Err(e)
        };
        if entry
            .key
            .open_in_place(&nonce(position), &self.aad, &mut out[start..], tag)
            .is_err()
        {
            return refuse(out, RecordError::Forged { key_id });
        }
        let layout = match layout(&out[start..]) {
            Ok(l) => l,
            Err(what) => {
                return refuse(
                    out,
                    RecordError::BadEnvelope {
                        key_id,
                        position,
                        what,
                    },
                )
            }
        };
        let last = self.last.get(&entry.producer).copied();
        let gap = match last {
            Some(last) if position <= last => {
                let e = RecordError::Replayed {
                    key_id,
                    producer: Arc::clone(&entry.producer),
                    position,
                    last,
                };
                return refuse(out, e);
            }
            Some(last) => position - last - 1,
            None => 0,
        };
        let producer = Arc::clone(&entry.producer);
        self.last.insert(Arc::clone(&producer), position);
        Ok(Opened {
            key_id,
            producer,
            position,
            gap,
            plain: start..out.len(),
            layout,
        })
    }

    /// Open a batch, in order, each envelope appended to `out` (a buffer reused from batch to
    /// batch: no allocation per record): one outcome per record.
    pub fn open_batch_into<R: AsRef<[u8]>>(
        &mut self,
        records: &[R],
        out: &mut Vec<u8>,
    ) -> Vec<Result<Opened, RecordError>> {
        records
            .iter()
            .map(|r| self.open_append(r.as_ref(), out))
            .collect()
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
