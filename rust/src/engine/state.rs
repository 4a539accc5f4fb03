//! The engine's state at rest: containing a failure to its link or session, the event queue
//! to Python, deferred work (`settle`), grants, the backlog counted against Python, refusals,
//! and the timers (`tick`).

use super::{event_charge, Event, State, INTERNAL_ERROR, READ_SIZE};
use crate::link::Verdict;
use std::io::Write;
use std::time::Instant;

impl State {
    /// Run `f` for the link or session `id`; if it panics (a bug), only that link or session
    /// fails (Python hears why and closes it) and the engine goes on serving the others. For
    /// work that belongs to no one object (`id` 0, the timers), every link fails instead of
    /// leaving the node silently deaf.
    pub(super) fn guard(&mut self, id: u64, f: impl FnOnce(&mut Self)) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if id != 0 && self.fault == Some(id) {
                self.fault = None;
                panic!("a fault injected for a test (Engine::inject_fault)");
            }
            f(self);
        }));
        if done.is_ok() {
            return;
        }
        let contained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.links.contains_key(&id) {
                self.fail_link(id, INTERNAL_ERROR.into());
            } else if self.sessions.contains_key(&id) {
                self.finish(id, INTERNAL_ERROR, true, true);
            } else if id == 0 {
                let ids: Vec<u64> = self.links.keys().copied().collect();
                for link in ids {
                    self.fail_link(link, INTERNAL_ERROR.into());
                }
            }
        }));
        if contained.is_err() {
            // Failing it failed too: at least never use the object again.
            self.links.remove(&id);
            self.sessions.remove(&id);
        }
    }

    /// The read buffer (a fresh one if it is out: reads never nest, but an empty buffer must
    /// never be read into, which would look like the end of the stream).
    pub(super) fn take_rbuf(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.rbuf);
        if buf.len() < READ_SIZE {
            vec![0u8; READ_SIZE]
        } else {
            buf
        }
    }

    pub(super) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn push(&mut self, ev: Event) {
        // Bookkeeping (a session the engine opened or ended) is not urgent: Python hears of it
        // with the next urgent event or tick, so it does not compete for the CPU with the
        // bytes of a connection that is opening.
        let lazy = matches!(
            ev,
            Event::InletSession { .. }
                | Event::OutletSession { .. }
                | Event::SessionOpened { .. }
                | Event::SessionClosed { .. }
        );
        self.events.push_back(ev);
        if !lazy {
            self.notify_python();
        }
    }

    pub(super) fn notify_python(&mut self) {
        if !self.notified {
            self.notified = true;
            let _ = self.notify.write(&[1]);
        }
    }

    /// Work that was deferred to a safe point: retries and closes. Returns whether the engine
    /// thread should look again (always fine to ignore on the engine thread itself).
    pub(super) fn settle(&mut self) -> bool {
        let mut any = false;
        for _ in 0..4 {
            let links = std::mem::take(&mut self.retry_links);
            let sessions = std::mem::take(&mut self.retry_sessions);
            let closes = std::mem::take(&mut self.to_close);
            if links.is_empty() && sessions.is_empty() && closes.is_empty() {
                break;
            }
            any = true;
            for (id, reason) in closes {
                self.guard(id, |st| st.close_link(id, &reason, true));
            }
            for id in links {
                self.guard(id, |st| {
                    st.flush_link(id);
                    st.read_link(id, true);
                });
            }
            for id in sessions {
                self.guard(id, |st| {
                    st.session_writable(id);
                    st.read_session(id, true);
                });
            }
        }
        any
    }

    pub(super) fn grant(&mut self, link: u64, channel: u64) {
        if let Some(l) = self.links.get_mut(&link) {
            if !l.grants.contains(&channel) {
                l.grants.push(channel);
            }
        }
    }

    pub(super) fn granted(&self, link: u64, channel: u64) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.grants.contains(&channel))
    }

    /// A message of `len` bytes of `link` now waits for Python.
    pub(super) fn up(&mut self, link: u64, len: usize) {
        if let Some(l) = self.links.get_mut(&link) {
            let n = event_charge(len);
            l.up += n;
            self.up_total += n;
        }
    }

    /// The first refusal of a tick is reported at once (in order with what follows it); the
    /// rest of a burst is counted and reported at the tick.
    pub(super) fn refuse(&mut self, channel: u64, reason: String) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.refusing {
            ch.refused += 1;
            ch.refused_reason = reason;
        } else {
            ch.refusing = true;
            self.push(Event::Refused {
                channel,
                count: 1,
                reason,
            });
        }
    }

    pub(super) fn tick(&mut self) {
        let now = self.epoch.elapsed();
        let mut failures = Vec::new();
        let mut keepalives = Vec::new();
        for (&id, l) in &self.links {
            if l.failed.is_some() {
                continue;
            }
            match l.timers.check(now, !l.out.is_empty()) {
                Verdict::Dead(reason) => failures.push((id, reason)),
                Verdict::Alive {
                    keepalive: true, ..
                } => keepalives.push(id),
                Verdict::Alive { .. } => {}
            }
        }
        for (id, reason) in failures {
            self.fail_link(id, reason);
        }
        for id in keepalives {
            self.link_send(id, vec![0, 0, 0, 0]);
            if let Some(l) = self.links.get_mut(&id) {
                l.timers.sent(now);
            }
        }
        let mut refusals: Vec<(u64, u64, String)> = Vec::new();
        for (&id, c) in &mut self.channels {
            let burst = std::mem::take(&mut c.refusing);
            if burst && c.refused > 0 {
                let n = std::mem::take(&mut c.refused);
                refusals.push((id, n, std::mem::take(&mut c.refused_reason)));
            }
        }
        for (channel, count, reason) in refusals {
            self.push(Event::Refused {
                channel,
                count,
                reason,
            });
        }
        let now = Instant::now();
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.connecting.is_some_and(|d| now >= d))
            .map(|(&id, _)| id)
            .collect();
        for sid in expired {
            let prefix = self
                .sessions
                .get(&sid)
                .map(|s| s.connect_prefix.clone())
                .unwrap_or_default();
            self.finish(sid, &format!("{prefix}: timed out"), true, true);
        }
        self.session_timers();
    }
}
