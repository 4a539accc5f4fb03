//! Reassembling a secure channel's fragmented messages, with no I/O.
//!
//! A channel message larger than one frame is sealed as fragments, each with a flag byte first
//! (`FIRST`, `LAST`, both for a message in one piece) and consecutive nonces. Both data planes
//! join them with this one [`Reassembler`]: the engine (`engine/channels.rs`) and the Python
//! driver (`tether` `SecureChannel`, through the binding).
//!
//! The rules: a continuation that continues nothing, or whose nonce is not the next one, means
//! its message lost a part: what was gathered is dropped, never delivered. A new first fragment
//! drops an unfinished message. A message over [`MAX_MESSAGE`] bytes is dropped before it is
//! gathered further. Flags other than those two bits make the fragment malformed.

use std::fmt;

/// The first fragment of a message.
pub const FIRST: u8 = 0b10;
/// The last fragment of a message.
pub const LAST: u8 = 0b01;
/// The largest message a channel reassembles.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Why a fragment was refused (what was gathered of its message is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReassemblyError {
    /// An empty fragment, or flags other than `FIRST` and `LAST`.
    MalformedFlags,
    /// A continuation that does not continue the message being gathered.
    LostPart,
    /// The message grew over [`MAX_MESSAGE`].
    TooLarge,
}

impl fmt::Display for ReassemblyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReassemblyError::MalformedFlags => f.write_str("malformed fragment flags"),
            ReassemblyError::LostPart => f.write_str("a fragmented message lost a part; dropped"),
            ReassemblyError::TooLarge => write!(f, "message over {MAX_MESSAGE} bytes dropped"),
        }
    }
}

impl std::error::Error for ReassemblyError {}

impl ReassemblyError {
    /// Whether the fragment counts as one refused message of the channel's peer (malformed
    /// flags, an oversized message). A lost part does not: its message was counted where
    /// the part was lost (a forged or replayed fragment is refused before reassembly), or
    /// the network lost it. Both drivers count by this one rule.
    pub fn refuses(&self) -> bool {
        !matches!(self, ReassemblyError::LostPart)
    }
}

/// What a fragment made of its message.
#[derive(Debug, PartialEq, Eq)]
pub enum Fragment<'a> {
    /// A message in one piece: the fragment's own bytes (after the flag byte), not copied.
    Whole(&'a [u8]),
    /// The last fragment completed a message: all of it.
    Joined(Vec<u8>),
    /// More fragments follow.
    More,
}

/// One channel's message being gathered.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Vec<u8>,
    gathering: bool,
    next_nonce: u64,
    /// An unfinished message was dropped by a new first fragment (the last time one came).
    pub dropped_unfinished: bool,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether part of a message has been gathered.
    pub fn gathering(&self) -> bool {
        self.gathering
    }

    /// Bytes gathered so far.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Add one opened fragment (`plain`: its flag byte first) sealed with `nonce`.
    pub fn push<'a>(
        &mut self,
        plain: &'a [u8],
        nonce: u64,
    ) -> Result<Fragment<'a>, ReassemblyError> {
        let Some((&flags, body)) = plain.split_first() else {
            return Err(ReassemblyError::MalformedFlags);
        };
        if flags > FIRST | LAST {
            return Err(ReassemblyError::MalformedFlags);
        }
        self.dropped_unfinished = false;
        if flags & FIRST != 0 {
            self.dropped_unfinished = self.gathering;
            self.drop_partial();
            if flags & LAST != 0 {
                return Ok(Fragment::Whole(body));
            }
            self.gathering = true;
        } else if !self.gathering || nonce != self.next_nonce {
            self.drop_partial();
            return Err(ReassemblyError::LostPart);
        }
        if self.partial.len() + body.len() > MAX_MESSAGE {
            self.drop_partial();
            return Err(ReassemblyError::TooLarge);
        }
        self.partial.extend_from_slice(body);
        self.next_nonce = nonce.wrapping_add(1);
        if flags & LAST == 0 {
            return Ok(Fragment::More);
        }
        self.gathering = false;
        Ok(Fragment::Joined(std::mem::take(&mut self.partial)))
    }

    /// Forget what was gathered (the channel closed).
    pub fn drop_partial(&mut self) {
        self.partial = Vec::new();
        self.gathering = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frag(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![flags];
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn one_piece_is_not_copied() {
        let mut r = Reassembler::new();
        let f = frag(FIRST | LAST, b"abc");
        match r.push(&f, 7).unwrap() {
            Fragment::Whole(b) => assert!(std::ptr::eq(b.as_ptr(), f[1..].as_ptr())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fragments_join_in_nonce_order() {
        let mut r = Reassembler::new();
        assert_eq!(r.push(&frag(FIRST, b"ab"), 10), Ok(Fragment::More));
        assert_eq!(r.push(&frag(0, b"cd"), 11), Ok(Fragment::More));
        assert_eq!(r.buffered(), 4);
        assert_eq!(
            r.push(&frag(LAST, b"e"), 12),
            Ok(Fragment::Joined(b"abcde".to_vec()))
        );
        assert!(!r.gathering());
    }

    #[test]
    fn a_lost_part_drops_the_message() {
        let mut r = Reassembler::new();
        r.push(&frag(FIRST, b"ab"), 1).unwrap();
        assert_eq!(r.push(&frag(LAST, b"z"), 3), Err(ReassemblyError::LostPart));
        assert_eq!(r.push(&frag(LAST, b"z"), 2), Err(ReassemblyError::LostPart));
        assert_eq!(r.push(&frag(0, b"z"), 0), Err(ReassemblyError::LostPart));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn only_what_the_peer_got_wrong_counts_as_refused() {
        assert!(ReassemblyError::MalformedFlags.refuses());
        assert!(ReassemblyError::TooLarge.refuses());
        assert!(!ReassemblyError::LostPart.refuses());
    }

    #[test]
    fn a_new_first_drops_the_unfinished() {
        let mut r = Reassembler::new();
        r.push(&frag(FIRST, b"old"), 1).unwrap();
        assert_eq!(
            r.push(&frag(FIRST | LAST, b"new"), 2),
            Ok(Fragment::Whole(b"new"))
        );
        assert!(r.dropped_unfinished);
        assert!(!r.gathering());
    }

    #[test]
    fn bad_flags_and_oversize_are_refused() {
        let mut r = Reassembler::new();
        assert_eq!(r.push(&[], 0), Err(ReassemblyError::MalformedFlags));
        assert_eq!(r.push(&[4, 1], 0), Err(ReassemblyError::MalformedFlags));
        let big = vec![0u8; 1 << 20];
        let mut f = frag(FIRST, &big);
        r.push(&f, 0).unwrap();
        f[0] = 0;
        for n in 1..16 {
            assert_eq!(r.push(&f, n), Ok(Fragment::More));
        }
        assert_eq!(r.push(&f, 16), Err(ReassemblyError::TooLarge));
        assert_eq!(r.buffered(), 0);
        assert_eq!(
            ReassemblyError::TooLarge.to_string(),
            "message over 16777216 bytes dropped"
        );
    }

    proptest! {
        /// A message cut anywhere into fragments with consecutive nonces comes back whole;
        /// any fragment lost from the middle makes it never delivered.
        #[test]
        fn split_and_join(msg in proptest::collection::vec(any::<u8>(), 0..5000),
                          cuts in proptest::collection::vec(1usize..700, 0..12),
                          start in any::<u64>(), lose in any::<proptest::sample::Index>()) {
            let mut parts = Vec::new();
            let mut rest = &msg[..];
            for c in cuts {
                if rest.len() <= c { break; }
                parts.push(&rest[..c]);
                rest = &rest[c..];
            }
            parts.push(rest);
            let n = parts.len();
            let frags: Vec<Vec<u8>> = parts.iter().enumerate().map(|(i, p)| {
                let mut f = 0;
                if i == 0 { f |= FIRST; }
                if i == n - 1 { f |= LAST; }
                frag(f, p)
            }).collect();
            let mut r = Reassembler::new();
            let mut got = None;
            for (i, f) in frags.iter().enumerate() {
                match r.push(f, start.wrapping_add(i as u64)).unwrap() {
                    Fragment::Whole(b) => got = Some(b.to_vec()),
                    Fragment::Joined(b) => got = Some(b),
                    Fragment::More => {}
                }
            }
            prop_assert_eq!(got.as_deref(), Some(&msg[..]));
            if n > 2 {
                let skip = 1 + lose.index(n - 2);
                let mut r = Reassembler::new();
                for (i, f) in frags.iter().enumerate() {
                    if i == skip { continue; }
                    let res = r.push(f, start.wrapping_add(i as u64));
                    prop_assert!(!matches!(res, Ok(Fragment::Joined(_) | Fragment::Whole(_))));
                }
            }
        }
    }
}
