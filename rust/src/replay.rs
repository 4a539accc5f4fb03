//! A sliding anti-replay window over 64-bit message nonces (the bitmap scheme of RFC 6479, as
//! WireGuard/boringtun use it).
//!
//! The window remembers which of the last [`WINDOW`] nonces below the highest accepted one have
//! been seen. [`ReplayWindow::check`] only reads; [`ReplayWindow::commit`] records a nonce and
//! must be called only after the message authenticated, so a forged message never moves the
//! window.
//!
//! The bitmap is a ring of `WORDS` 64-bit words indexed by `nonce / 64`; when the highest nonce
//! advances, the words it skips are cleared. One word is always "in transit" between old and
//! new, which is why the usable window is `WORDS * 64 - 64` nonces.

use crate::error::{Error, ReplayReason, Result};

const WORDS: usize = 32;
const BITS: u64 = (WORDS as u64) * 64;
/// How far below the highest accepted nonce a message may still arrive.
pub const WINDOW: u64 = BITS - 64;

#[derive(Clone, Debug)]
pub struct ReplayWindow {
    bitmap: [u64; WORDS],
    /// The highest accepted nonce, if any.
    highest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self {
            bitmap: [0; WORDS],
            highest: None,
        }
    }

    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn slot(n: u64) -> (usize, u64) {
        #[allow(clippy::cast_possible_truncation)] // reduced modulo WORDS first
        let word = ((n >> 6) % WORDS as u64) as usize;
        (word, 1u64 << (n & 63))
    }

    /// Would `n` be accepted? Reads only.
    pub fn check(&self, n: u64) -> Result<()> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if n > highest {
            return Ok(());
        }
        if highest - n >= WINDOW {
            return Err(Error::Replay {
                nonce: n,
                reason: ReplayReason::TooOld,
            });
        }
        let (w, bit) = Self::slot(n);
        if self.bitmap[w] & bit != 0 {
            return Err(Error::Replay {
                nonce: n,
                reason: ReplayReason::Duplicate,
            });
        }
        Ok(())
    }

    /// Record `n` as delivered. Call only after `check(n)` succeeded and the message authenticated.
    pub fn commit(&mut self, n: u64) {
        match self.highest {
            Some(h) if n <= h => {}
            _ => {
                let new_index = n >> 6;
                match self.highest {
                    None => self.bitmap = [0; WORDS],
                    Some(h) => {
                        let cur_index = h >> 6;
                        let skipped = (new_index - cur_index).min(WORDS as u64);
                        for i in 1..=skipped {
                            let (w, _) = Self::slot((cur_index + i) << 6);
                            self.bitmap[w] = 0;
                        }
                    }
                }
                self.highest = Some(n);
            }
        }
        let (w, bit) = Self::slot(n);
        self.bitmap[w] |= bit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, n: u64) -> Result<()> {
        w.check(n)?;
        w.commit(n);
        Ok(())
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for n in 0..5000 {
            accept(&mut w, n).unwrap();
            assert!(matches!(
                w.check(n),
                Err(Error::Replay {
                    reason: ReplayReason::Duplicate,
                    ..
                })
            ));
        }
    }

    #[test]
    fn reordering_inside_the_window() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 2000).unwrap();
        for n in (2000 - WINDOW + 1..2000).rev() {
            accept(&mut w, n).unwrap();
        }
        assert!(matches!(
            w.check(2000 - WINDOW),
            Err(Error::Replay {
                reason: ReplayReason::TooOld,
                ..
            })
        ));
        for n in 2000 - WINDOW + 1..=2000 {
            assert!(w.check(n).is_err());
        }
    }

    #[test]
    fn big_jump_clears_everything() {
        let mut w = ReplayWindow::new();
        for n in 0..100 {
            accept(&mut w, n).unwrap();
        }
        accept(&mut w, 1_000_000).unwrap();
        for n in 1_000_000 - WINDOW + 1..1_000_000 {
            w.check(n).unwrap();
        }
    }

    #[test]
    fn check_does_not_change_state() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 10).unwrap();
        w.check(11).unwrap();
        w.check(11).unwrap();
        assert_eq!(w.highest(), Some(10));
    }

    #[test]
    fn matches_a_set_model() {
        // Deterministic pseudo-random sequence against a HashSet model.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::HashSet::new();
        let mut highest: Option<u64> = None;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = highest.unwrap_or(0);
            let n = (base + 200).saturating_sub(x % 2500);
            let model_ok = !seen.contains(&n) && highest.map_or(true, |h| n > h || h - n < WINDOW);
            assert_eq!(
                w.check(n).is_ok(),
                model_ok,
                "nonce {n}, highest {highest:?}"
            );
            if model_ok {
                w.commit(n);
                seen.insert(n);
                highest = Some(highest.map_or(n, |h| h.max(n)));
            }
        }
    }
}
