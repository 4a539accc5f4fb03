//! Length-prefixed framing of a byte stream (wire format: `docs/wire-format.md`, "Frames").
//!
//! A frame is a 4-byte big-endian length followed by that many bytes. [`FrameDecoder`] is a
//! sans-IO streaming decoder: feed it the stream in chunks of any size and it hands back whole
//! frames, in order, whatever the split. Frames that lie wholly inside one fed chunk are handed out
//! as borrowed slices of that chunk (no copy); only a frame that straddles chunks is assembled in
//! the decoder's buffer.
//!
//! The announced length is compared with the decoder's limit as soon as the 4 header bytes are
//! known, before a single byte is reserved for the body, so a peer cannot make the decoder
//! allocate more than `4 + max_frame_len` bytes. A stream that breaks the limit is not
//! resynchronisable: the decoder becomes broken and refuses further input.

use crate::error::{Error, Result};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;
/// A straddling-frame buffer up to this size is kept for the next frame (one Noise message plus
/// headers fits); a larger one is freed once its frame is complete.
const KEEP_CAPACITY: usize = 128 << 10;
/// The largest frame the format can carry.
pub const MAX_FRAME_LEN: u32 = u32::MAX;

/// Streaming frame decoder. See the module documentation.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: u32,
    /// Bytes of a frame (header included) that straddles fed chunks.
    partial: Vec<u8>,
    broken: bool,
}

impl FrameDecoder {
    /// A decoder that refuses any frame longer than `max_frame_len` bytes.
    pub fn new(max_frame_len: u32) -> Self {
        Self {
            max_frame_len,
            partial: Vec::new(),
            broken: false,
        }
    }

    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Change the limit (for example, raise it once the peer has authenticated). A frame whose
    /// header was already accepted keeps the limit it was checked against.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }

    /// Bytes held back waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn check_len(&mut self, header: [u8; HEADER_LEN]) -> Result<usize> {
        let len = u32::from_be_bytes(header);
        if len > self.max_frame_len {
            self.broken = true;
            self.partial = Vec::new();
            return Err(Error::FrameTooLarge {
                len: u64::from(len),
                max: u64::from(self.max_frame_len),
            });
        }
        Ok(len as usize)
    }

    /// Feed the next chunk of the stream; `on_frame` is called once per completed frame, in
    /// order. Frames completed before an error have already been handed out when it is returned.
    pub fn feed(&mut self, mut data: &[u8], mut on_frame: impl FnMut(&[u8])) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        // 1. Finish a frame that straddles the previous chunk.
        if !self.partial.is_empty() {
            if self.partial.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < HEADER_LEN {
                    return Ok(());
                }
                let header = [
                    self.partial[0],
                    self.partial[1],
                    self.partial[2],
                    self.partial[3],
                ];
                let len = self.check_len(header)?;
                // The length is within the limit: reserving the body is now bounded.
                self.partial.reserve_exact(len);
            }
            let header = [
                self.partial[0],
                self.partial[1],
                self.partial[2],
                self.partial[3],
            ];
            let total = HEADER_LEN + u32::from_be_bytes(header) as usize;
            let take = (total - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < total {
                return Ok(());
            }
            on_frame(&self.partial[HEADER_LEN..]);
            self.partial.clear();
            if self.partial.capacity() > KEEP_CAPACITY {
                // Do not keep a large buffer alive for a connection that sent one big frame.
                self.partial.shrink_to(0);
            }
        }
        // 2. Whole frames inside this chunk: borrowed, no copy.
        while data.len() >= HEADER_LEN {
            let len = self.check_len([data[0], data[1], data[2], data[3]])?;
            if data.len() - HEADER_LEN < len {
                break;
            }
            on_frame(&data[HEADER_LEN..HEADER_LEN + len]);
            data = &data[HEADER_LEN + len..];
        }
        // 3. Keep the start of the next frame; what is kept is bounded by what was received. When
        // its header is complete (and was checked above), reserve the whole frame once.
        if data.len() >= HEADER_LEN {
            let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
            self.partial.reserve_exact(HEADER_LEN + len);
        }
        self.partial.extend_from_slice(data);
        Ok(())
    }
}

/// The encoded size of a frame carrying `payload_len` bytes.
pub fn encoded_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// The length prefix of a frame of `len` bytes, or an error if the format cannot carry it.
pub fn header(len: usize) -> Result<[u8; HEADER_LEN]> {
    u32::try_from(len).map(u32::to_be_bytes).map_err(|_| {
        Error::Frame(format!(
            "a frame carries at most {MAX_FRAME_LEN} bytes, got {len}"
        ))
    })
}

/// Append one frame to `out`.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let header = header(payload.len())?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// Write one frame into `out`, which must be exactly `encoded_len(payload.len())` bytes.
pub fn encode_to_slice(payload: &[u8], out: &mut [u8]) -> Result<()> {
    let header = header(payload.len())?;
    if out.len() != HEADER_LEN + payload.len() {
        return Err(Error::InvalidArgument(
            "output buffer has the wrong size".into(),
        ));
    }
    out[..HEADER_LEN].copy_from_slice(&header);
    out[HEADER_LEN..].copy_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut FrameDecoder, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for c in chunks {
            dec.feed(c, |f| out.push(f.to_vec()))?;
        }
        Ok(out)
    }

    fn stream(frames: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for f in frames {
            encode_into(f, &mut s).unwrap();
        }
        s
    }

    #[test]
    fn every_split_gives_the_same_frames() {
        let frames: Vec<&[u8]> = vec![b"", b"a", b"hello world", &[7u8; 300]];
        let s = stream(&frames);
        for cut1 in 0..=s.len() {
            for cut2 in cut1..=s.len() {
                let mut dec = FrameDecoder::new(1024);
                let got = decode_all(&mut dec, &[&s[..cut1], &s[cut1..cut2], &s[cut2..]]).unwrap();
                assert_eq!(got, frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>());
                assert_eq!(dec.buffered(), 0);
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let s = stream(&[b"abc", b"defg"]);
        let mut dec = FrameDecoder::new(16);
        let chunks: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(
            decode_all(&mut dec, &chunks).unwrap(),
            vec![b"abc".to_vec(), b"defg".to_vec()]
        );
    }

    #[test]
    fn oversized_header_is_refused_before_allocation_and_breaks_the_decoder() {
        let mut dec = FrameDecoder::new(10);
        let err = dec
            .feed(&u32::MAX.to_be_bytes(), |_| panic!("no frame"))
            .unwrap_err();
        assert_eq!(
            err,
            Error::FrameTooLarge {
                len: u64::from(u32::MAX),
                max: 10
            }
        );
        assert!(dec.is_broken());
        assert_eq!(dec.partial.capacity(), 0);
        assert_eq!(dec.feed(b"", |_| {}).unwrap_err(), Error::Broken);
    }

    #[test]
    fn oversized_header_split_across_chunks() {
        let mut dec = FrameDecoder::new(10);
        dec.feed(&[0, 0], |_| {}).unwrap();
        assert!(matches!(
            dec.feed(&[1, 0], |_| {}),
            Err(Error::FrameTooLarge { len: 256, .. })
        ));
    }

    #[test]
    fn frames_before_an_error_are_delivered() {
        let mut s = stream(&[b"ok"]);
        s.extend_from_slice(&1000u32.to_be_bytes());
        let mut dec = FrameDecoder::new(100);
        let mut got = Vec::new();
        assert!(dec.feed(&s, |f| got.push(f.to_vec())).is_err());
        assert_eq!(got, vec![b"ok".to_vec()]);
    }

    #[test]
    fn a_straddling_frame_is_reserved_once() {
        let s = stream(&[&[5u8; 1000], &[6u8; 1000]]);
        let mut dec = FrameDecoder::new(4096);
        let mut n = 0;
        dec.feed(&s[..1010], |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert_eq!(dec.partial.capacity(), 1004);
        dec.feed(&s[1010..], |_| n += 1).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn limit_is_inclusive() {
        let s = stream(&[&[1u8; 10]]);
        let mut dec = FrameDecoder::new(10);
        assert_eq!(decode_all(&mut dec, &[&s]).unwrap().len(), 1);
    }

    #[test]
    fn encode_to_slice_checks_size() {
        let mut out = [0u8; 6];
        encode_to_slice(b"hi", &mut out).unwrap();
        assert_eq!(&out, &[0, 0, 0, 2, b'h', b'i']);
        assert!(encode_to_slice(b"hi", &mut [0u8; 5]).is_err());
    }
}
