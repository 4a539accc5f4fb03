//! A link's timers, with no clock of its own: keepalives, dead peers, slow frames and stuck
//! peers. The caller passes `now` (any monotonic clock, as a [`Duration`] since its origin).
//!
//! Both data planes keep their links' time with this one [`LinkTimers`]: the engine
//! (`engine/links.rs`, `engine/state.rs`'s tick) and the Python TCP transport (its watchdog and
//! writer, through the binding). The rules:
//!
//! * a link that sent nothing for `keepalive` sends an empty frame;
//! * a peer silent for `dead_after` (keepalives count) is dead;
//! * a frame that began must be complete within `frame_timeout` (a slow-drip peer cannot hold
//!   a link open forever);
//! * a peer that takes none of the bytes waiting for it for `drain_timeout` is stuck;
//! * time the reader spends handing frames on (it waits for the node: back-pressure) is neither
//!   silence nor a slow frame.

use std::time::Duration;

/// A link's timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub keepalive: Duration,
    pub dead_after: Duration,
    pub frame_timeout: Duration,
    pub drain_timeout: Duration,
}

/// What the timers say at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The link is well; look again within `next` (and send a keepalive first if `keepalive`).
    Alive { keepalive: bool, next: Duration },
    /// Close the link, for this reason.
    Dead(String),
}

/// One link's times.
#[derive(Clone, Debug)]
pub struct LinkTimers {
    pub timeouts: Timeouts,
    last_rx: Duration,
    last_tx: Duration,
    tx_stalled: Option<Duration>,
    frame_started: Option<Duration>,
    delivering: bool,
}

/// `10` for 10 s, `0.5` for 500 ms (as `%g` writes seconds).
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

impl LinkTimers {
    pub fn new(timeouts: Timeouts, now: Duration) -> Self {
        LinkTimers {
            timeouts,
            last_rx: now,
            last_tx: now,
            tx_stalled: None,
            frame_started: None,
            delivering: false,
        }
    }

    /// Bytes arrived; `partial`: part of a frame waits for the rest.
    pub fn received(&mut self, now: Duration, partial: bool) {
        self.last_rx = now;
        if !partial {
            self.frame_started = None;
        } else if self.frame_started.is_none() {
            self.frame_started = Some(now);
        }
    }

    /// The socket took bytes (a keepalive among them).
    pub fn sent(&mut self, now: Duration) {
        self.last_tx = now;
        self.tx_stalled = None;
    }

    /// Bytes wait and the socket would take none.
    pub fn send_blocked(&mut self, now: Duration) {
        self.tx_stalled.get_or_insert(now);
    }

    /// Nothing waits to be sent any more.
    pub fn send_idle(&mut self) {
        self.tx_stalled = None;
    }

    /// The reader waits for the node to take what it read (or stops waiting): that time is
    /// neither peer silence nor a slow frame.
    pub fn delivering(&mut self, on: bool, now: Duration) {
        if self.delivering && !on {
            self.last_rx = now;
            if self.frame_started.is_some() {
                self.frame_started = Some(now);
            }
        }
        self.delivering = on;
    }

    /// When the next keepalive is due, from `now` (zero: now).
    pub fn keepalive_in(&self, now: Duration) -> Duration {
        (self.last_tx + self.timeouts.keepalive).saturating_sub(now)
    }

    /// Judge the link at `now`; `queued`: bytes wait to be sent (no keepalive then).
    pub fn check(&self, now: Duration, queued: bool) -> Verdict {
        let t = &self.timeouts;
        let elapsed = |since: Duration| now.saturating_sub(since);
        if let Some(stalled) = self.tx_stalled.filter(|_| queued) {
            if elapsed(stalled) >= t.drain_timeout {
                return Verdict::Dead(format!(
                    "the peer read nothing for {} s: presumed stuck",
                    secs(t.drain_timeout)
                ));
            }
        }
        let mut next = t.keepalive.min(t.dead_after).min(t.frame_timeout) / 4;
        if !self.delivering {
            if let Some(started) = self.frame_started {
                if elapsed(started) >= t.frame_timeout {
                    return Verdict::Dead(format!(
                        "a frame was not completed within {} s (slow peer)",
                        secs(t.frame_timeout)
                    ));
                }
                next = next.min(t.frame_timeout.saturating_sub(elapsed(started)));
            }
            if elapsed(self.last_rx) >= t.dead_after {
                return Verdict::Dead(format!(
                    "peer silent for {} s: presumed dead",
                    secs(t.dead_after)
                ));
            }
            next = next.min(t.dead_after.saturating_sub(elapsed(self.last_rx)));
        }
        let keepalive = !queued && elapsed(self.last_tx) >= t.keepalive;
        if !keepalive {
            next = next.min(self.keepalive_in(now));
        }
        if let Some(stalled) = self.tx_stalled.filter(|_| queued) {
            next = next.min(t.drain_timeout.saturating_sub(elapsed(stalled)));
        }
        Verdict::Alive { keepalive, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn timers() -> LinkTimers {
        LinkTimers::new(
            Timeouts {
                keepalive: 10 * S,
                dead_after: 35 * S,
                frame_timeout: 30 * S,
                drain_timeout: 60 * S,
            },
            Duration::ZERO,
        )
    }

    fn alive(v: &Verdict) -> bool {
        matches!(v, Verdict::Alive { .. })
    }

    #[test]
    fn keepalive_when_idle_and_nothing_queued() {
        let mut t = timers();
        assert_eq!(
            t.check(9 * S, false),
            Verdict::Alive {
                keepalive: false,
                next: S
            }
        );
        assert!(matches!(
            t.check(10 * S, false),
            Verdict::Alive {
                keepalive: true,
                ..
            }
        ));
        assert!(matches!(
            t.check(10 * S, true),
            Verdict::Alive {
                keepalive: false,
                ..
            }
        ));
        t.sent(10 * S);
        assert_eq!(t.keepalive_in(12 * S), 8 * S);
    }

    #[test]
    fn a_silent_peer_is_dead_unless_the_reader_waits_for_the_node() {
        let mut t = timers();
        t.received(5 * S, false);
        assert!(alive(&t.check(39 * S, false)));
        assert_eq!(
            t.check(40 * S, false),
            Verdict::Dead("peer silent for 35 s: presumed dead".into())
        );
        t.delivering(true, 40 * S);
        assert!(alive(&t.check(100 * S, false)));
        t.delivering(false, 100 * S);
        assert!(
            alive(&t.check(134 * S, false)),
            "silence counts from the end of the wait"
        );
    }

    #[test]
    fn a_frame_must_complete_in_time() {
        let mut t = timers();
        t.received(S, true);
        t.received(20 * S, true); // still the same frame: its start stands
        assert_eq!(
            t.check(31 * S, false),
            Verdict::Dead("a frame was not completed within 30 s (slow peer)".into())
        );
        t.received(31 * S, false);
        assert!(alive(&t.check(31 * S, false)));
    }

    #[test]
    fn a_peer_that_reads_nothing_is_stuck() {
        let mut t = timers();
        t.send_blocked(S);
        t.send_blocked(30 * S);
        t.received(60 * S, false);
        assert_eq!(
            t.check(61 * S, true),
            Verdict::Dead("the peer read nothing for 60 s: presumed stuck".into())
        );
        assert!(alive(&t.check(61 * S, false)), "nothing queued: not stuck");
        t.sent(61 * S);
        assert!(alive(&t.check(62 * S, true)));
        assert_eq!(secs(Duration::from_millis(500)), "0.5");
    }

    proptest! {
        /// The link is judged dead only when one of the three limits is really over, and never
        /// asks to be looked at later than its first deadline.
        #[test]
        fn dead_only_past_a_limit(events in proptest::collection::vec((0u8..6, 0u64..20_000), 0..40)) {
            let mut t = timers();
            let mut now = Duration::ZERO;
            let (mut rx, mut started, mut stalled, mut deliv) = (now, None::<Duration>, None::<Duration>, false);
            for (kind, dt) in events {
                now += Duration::from_millis(dt);
                match kind {
                    0 => { let partial = dt % 2 == 0; t.received(now, partial); rx = now;
                           if !partial { started = None } else if started.is_none() { started = Some(now) } }
                    1 => { t.sent(now); stalled = None; }
                    2 => { t.send_blocked(now); stalled.get_or_insert(now); }
                    3 => { t.delivering(true, now); deliv = true; }
                    4 => { if deliv { rx = now; if started.is_some() { started = Some(now) } } t.delivering(false, now); deliv = false; }
                    _ => {}
                }
                let queued = dt % 3 == 0;
                let since = |t: Duration| now.saturating_sub(t);
                let over = (queued && stalled.is_some_and(|s| since(s) >= 60 * S))
                    || (!deliv && (since(rx) >= 35 * S || started.is_some_and(|s| since(s) >= 30 * S)));
                match t.check(now, queued) {
                    Verdict::Dead(_) => prop_assert!(over),
                    Verdict::Alive { next, .. } => {
                        prop_assert!(!over);
                        prop_assert!(next <= 10 * S / 4 + Duration::from_millis(1) || next <= 35 * S);
                    }
                }
            }
        }
    }
}
