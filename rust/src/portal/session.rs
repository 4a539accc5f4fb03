//! A portal session's rules, with no I/O: flow control, half-close, retransmission and how a
//! session ends.
//!
//! Both data planes drive this one state machine: the Rust engine (`engine/sessions.rs`, with a
//! `mio` socket) and the Python driver (`tether.services.session.Session`, with an anyio stream,
//! through the `PortalSession` binding). A driver owns the socket and the channel; it tells the
//! session what happened (a message from the peer, bytes read, bytes written, the time) and does
//! what the session answers, in order:
//!
//! | [`Action`]           | the driver… |
//! |----------------------|-------------|
//! | `Send(Control)`      | sends that message to the peer session (EOF, ACK, CLOSE) |
//! | `Resend`             | sends again every DATA and EOF of [`Session::retained`], in order |
//! | `Write`              | writes [`Session::pending`] to the socket while it takes bytes, reporting [`Session::wrote`], then calls [`Session::flushed`] |
//! | `ShutWrite`          | shuts the socket's write half (the peer's EOF, after everything before it) |
//! | `ResumeRead`         | reads the socket again: credit came back for a reader that waited |
//! | `Closed{reason, abort}` | ends the session: resets the socket if `abort`; `reason` empty is an orderly end of both directions |
//!
//! The driver reads at most [`Session::read_allowance`] bytes at a time and reports them with
//! [`Session::on_read`], which numbers them and keeps a copy (then it sends them as one DATA
//! behind [`super::data_header`]), or the end of the stream with [`Session::on_read_eof`]. A
//! DATA from the peer comes back from [`Session::on_peer`] as its bytes: the driver may write
//! them straight to the socket when [`Session::queue_empty`] (no copy), and reports how much
//! the socket took with [`Session::data`], which queues the rest. It calls [`Session::on_tick`]
//! by [`Session::deadline`].
//!
//! **Flow control**: each direction has a window of credit units; a DATA costs
//! `max(len, MIN_CHARGE)` units ([`charge`]). A reader with no credit stops reading (so a slow
//! writer slows the peer through TCP itself), and a session refuses a peer that overruns its
//! window: what it holds is bounded by the window, whatever the peer sends. The receiver's ACK
//! says how many units it has written in all; it goes out each quarter window, and
//! [`ACK_DELAY`] after anything arrived.
//!
//! **Nothing is lost**: DATA and EOF are numbered. The receiver takes them in order only, drops
//! what it already has (and says again what it has) and what comes after a gap (and asks for a
//! resend from the gap, once per gap). The sender keeps what was not acknowledged (bounded by
//! the window) and sends it all again when asked, or when no ACK came for the retransmission
//! timeout ([`RTO_MIN`], doubling to [`RTO_MAX`]). An error report from the path (a hop down
//! for now) does not end a session that the peer has answered: it goes on resending until the
//! path is back, or ends after `resume_timeout` seconds without an acknowledgement. A sender
//! out of credit with nothing to resend asks for an ACK (a probe) at the same timeouts, so a
//! lost ACK cannot stall it.
//!
//! **The end**: a session ends in order only when both EOFs were acknowledged. If the very
//! last ACK is lost (the peer that sent it has ended), the side left waiting for it ends in
//! order too, at `resume_timeout`: everything else of both directions was acknowledged.

use std::collections::VecDeque;

use super::{truncate_reason, PortalMessage, ACK_PROBE, ACK_RESEND, MAX_DATA};

/// A DATA costs at least this many credit units (small messages cost memory too).
pub const MIN_CHARGE: u64 = 512;
/// How long the receiver waits, after a message arrived, before it acknowledges (seconds).
pub const ACK_DELAY: f64 = 0.02;
/// The first retransmission timeout (seconds) after a send with no ACK since.
pub const RTO_MIN: f64 = 1.0;
/// The longest retransmission timeout (it doubles per retransmission without progress).
pub const RTO_MAX: f64 = 4.0;
/// How many buffers of acknowledged DATA a session keeps for its next reads while data is in
/// flight (none once everything is acknowledged).
const SPARE_BUFFERS: usize = 4;
/// The least time between two resends that the receiver asked for, and between two answers
/// to duplicates (seconds).
pub const RESEND_GAP: f64 = 0.1;

/// The credit units a DATA body of `len` bytes costs.
pub fn charge(len: usize) -> u64 {
    (len as u64).max(MIN_CHARGE)
}

/// A control message for the peer session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// This side's socket reached the end of its stream (number `seq` of its direction).
    Eof(u64),
    /// Everything before `next` arrived; `consumed` units were written in all; `flags`:
    /// `ACK_*`.
    Ack { next: u64, consumed: u64, flags: u8 },
    /// The session is over (at most `MAX_REASON` bytes of reason).
    Close(String),
}

impl Control {
    /// The message's payload (kind and type bytes, then its body).
    pub fn encode(&self) -> Vec<u8> {
        let m = match self {
            Control::Eof(seq) => PortalMessage::Eof { seq: *seq },
            Control::Ack {
                next,
                consumed,
                flags,
            } => PortalMessage::Ack {
                next: *next,
                consumed: *consumed,
                flags: *flags,
            },
            Control::Close(r) => PortalMessage::Close(truncate_reason(r).as_bytes()),
        };
        m.encode().unwrap_or_default() // within its limits: the reason is cut
    }
}

/// What the driver must do, in order (see the module's table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send(Control),
    Resend,
    Write,
    ShutWrite,
    ResumeRead,
    Closed { reason: String, abort: bool },
}

/// One portal session's state (either end: inlet or outlet side).
#[allow(clippy::struct_excessive_bools)] // each flag is one end of the half-close state
#[derive(Debug)]
pub struct Session {
    window: u64,
    grant: u64,
    resume_timeout: f64,
    /// The peer was heard from: from then on a failed path pauses the session.
    established: bool,
    // --- sending ---
    /// The number of the next DATA or EOF this side sends.
    next_seq: u64,
    /// Credit units of every DATA sent, and of those the peer wrote out (its ACK).
    units_sent: u64,
    units_acked: u64,
    /// Sent and not acknowledged: (number, bytes; None for EOF).
    retained: VecDeque<(u64, Option<Vec<u8>>)>,
    retained_bytes: usize,
    /// Buffers of acknowledged DATA, reused for the next reads (no allocation per read).
    spare: Vec<Vec<u8>>,
    rto: f64,
    /// When to resend if no ACK comes (None: nothing waits for one).
    rto_at: Option<f64>,
    /// The last ACK that took something off `retained` (or the send that started the wait).
    progress_at: f64,
    last_resend: f64,
    /// The numbers below this were all sent again at `last_resend`.
    resent_upto: u64,
    /// A resend the peer asked for within RESEND_GAP of the last: due then.
    resend_at: Option<f64>,
    path_error: Option<String>,
    // --- receiving ---
    /// The number of the peer's next DATA or EOF.
    expect: u64,
    /// Credit units of the peer's DATA written to the socket, in all.
    consumed: u64,
    /// What the last ACK said.
    acked_expect: u64,
    acked_consumed: u64,
    ack_at: Option<f64>,
    gap_reported: bool,
    dup_acked_at: f64,
    /// Credit units of the peer's DATA waiting in `queue`.
    queued: u64,
    queue: VecDeque<(Vec<u8>, u64)>,
    queue_pos: usize,
    queued_bytes: usize,
    peer_eof: bool,
    wrote_eof: bool,
    read_eof: bool,
    want_read: bool,
    closed: bool,
    sent: u64,
    received: u64,
}

impl Session {
    /// A session with a window of `window` credit units each way, that ends when the path to
    /// an `established` peer (an outlet's session: it answers an OPEN) has acknowledged nothing
    /// for `resume_timeout` seconds.
    pub fn new(window: u64, resume_timeout: f64, established: bool) -> Self {
        let window = window.max(1);
        Session {
            window,
            grant: (window / 4).max(1),
            resume_timeout,
            established,
            next_seq: 0,
            units_sent: 0,
            units_acked: 0,
            retained: VecDeque::new(),
            retained_bytes: 0,
            spare: Vec::new(),
            rto: RTO_MIN,
            rto_at: None,
            progress_at: 0.0,
            last_resend: f64::NEG_INFINITY,
            resent_upto: 0,
            resend_at: None,
            path_error: None,
            expect: 0,
            consumed: 0,
            acked_expect: 0,
            acked_consumed: 0,
            ack_at: None,
            gap_reported: false,
            dup_acked_at: f64::NEG_INFINITY,
            queued: 0,
            queue: VecDeque::new(),
            queue_pos: 0,
            queued_bytes: 0,
            peer_eof: false,
            wrote_eof: false,
            read_eof: false,
            want_read: false,
            closed: false,
            sent: 0,
            received: 0,
        }
    }

    /// The most bytes to read from the socket now (0: do not read). Out of credit, the reader
    /// waits: an ACK from the peer then answers [`Action::ResumeRead`].
    pub fn read_allowance(&mut self) -> usize {
        if self.closed || self.read_eof {
            return 0;
        }
        if self.credit() <= 0 {
            self.want_read = true;
            return 0;
        }
        self.want_read = false;
        MAX_DATA
    }

    /// The driver does not read for a reason of its own (the way on is congested); it reads
    /// again when it says so, or at the next [`Action::ResumeRead`].
    pub fn wait_read(&mut self) {
        self.want_read = true;
    }

    /// Whether the reader waits (for credit, or for the driver).
    pub fn wants_read(&self) -> bool {
        self.want_read
    }

    /// `bytes` (1 ..= the allowance) were read from the socket at time `now`: the driver sends
    /// them as one DATA with the number returned (the session keeps a copy until the peer
    /// acknowledges it).
    pub fn on_read(&mut self, bytes: &[u8], now: f64) -> u64 {
        self.units_sent += charge(bytes.len());
        self.sent += bytes.len() as u64;
        self.retained_bytes += bytes.len();
        let mut copy = self.spare.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(bytes);
        self.retain(Some(copy), now)
    }

    fn retain(&mut self, bytes: Option<Vec<u8>>, now: f64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.retained.is_empty() || self.rto_at.is_none() {
            self.progress_at = now;
            self.rto_at = Some(now + self.rto);
        }
        self.retained.push_back((seq, bytes));
        seq
    }

    /// The socket reached the end of its stream.
    pub fn on_read_eof(&mut self, now: f64, out: &mut Vec<Action>) {
        if self.closed || self.read_eof {
            return;
        }
        self.read_eof = true;
        let seq = self.retain(None, now);
        out.push(Action::Send(Control::Eof(seq)));
    }

    /// One message from the peer session (its payload: kind byte, type byte, body) at time
    /// `now`. A DATA comes back as its bytes: the driver writes what it can of them now (only
    /// if [`Self::queue_empty`]) and reports with [`Self::data`].
    pub fn on_peer<'p>(
        &mut self,
        payload: &'p [u8],
        now: f64,
        out: &mut Vec<Action>,
    ) -> Option<&'p [u8]> {
        if self.closed {
            return None;
        }
        let message = match PortalMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.fail(&e.to_string(), true, true, out);
                return None;
            }
        };
        match message {
            PortalMessage::Data { seq, bytes } => {
                if self.in_order(seq, now, out) {
                    self.received += bytes.len() as u64;
                    return Some(bytes);
                }
            }
            PortalMessage::Eof { seq } => {
                if self.in_order(seq, now, out) {
                    self.peer_eof = true;
                    self.send_ack(0, out); // at once: the peer's end may wait on it
                    out.push(Action::Write);
                }
            }
            PortalMessage::Ack {
                next,
                consumed,
                flags,
            } => self.on_ack(next, consumed, flags, now, out),
            PortalMessage::Close(reason) => {
                let mut reason = String::from_utf8_lossy(reason).into_owned();
                if reason.is_empty() {
                    reason = "closed by the peer".into();
                }
                self.fail(&reason, true, false, out);
            }
            PortalMessage::PathFailed(reason) => {
                let reason = format!(
                    "the path to the peer failed: {}",
                    String::from_utf8_lossy(reason)
                );
                if self.established {
                    self.path_error = Some(reason); // paused: the retransmissions go on
                } else {
                    self.fail(&reason, true, false, out);
                }
            }
            PortalMessage::Open => self.established = true, // the outlet's answer, or a repeat
        }
        None
    }

    /// Whether the peer's DATA or EOF number `seq` is the next one; if not it is dropped, and
    /// the peer hears what this side has (a duplicate: once per run of them) or that a gap
    /// needs a resend (once per gap).
    fn in_order(&mut self, seq: u64, now: f64, out: &mut Vec<Action>) -> bool {
        self.established = true;
        if seq < self.expect {
            if now - self.dup_acked_at >= RESEND_GAP {
                self.dup_acked_at = now;
                self.send_ack(0, out);
            }
            return false;
        }
        if self.peer_eof {
            self.fail("protocol error: DATA after EOF", true, true, out);
            return false;
        }
        if seq > self.expect {
            if !self.gap_reported {
                self.gap_reported = true;
                self.send_ack(ACK_RESEND, out);
            }
            return false;
        }
        self.expect += 1;
        self.gap_reported = false;
        self.ack_at.get_or_insert(now + ACK_DELAY);
        true
    }

    fn on_ack(&mut self, next: u64, consumed: u64, flags: u8, now: f64, out: &mut Vec<Action>) {
        if next > self.next_seq || consumed > self.units_sent {
            self.fail("protocol error: an ACK of data never sent", true, true, out);
            return;
        }
        self.established = true;
        if flags & ACK_PROBE != 0 {
            self.send_ack(0, out);
        }
        if consumed > self.units_acked {
            self.units_acked = consumed;
            if self.want_read && self.credit() > 0 {
                self.want_read = false;
                out.push(Action::ResumeRead);
            }
        }
        let mut progress = false;
        while let Some((seq, bytes)) = self.retained.front() {
            if *seq >= next {
                break;
            }
            self.retained_bytes -= bytes.as_ref().map_or(0, Vec::len);
            if let Some((_, Some(buf))) = self.retained.pop_front() {
                if self.spare.len() < SPARE_BUFFERS {
                    self.spare.push(buf);
                }
            }
            progress = true;
        }
        if self.retained.is_empty() {
            self.spare = Vec::new(); // idle now: a quiet session holds no spare memory
        }
        if progress {
            self.rto = RTO_MIN;
            self.progress_at = now;
            self.path_error = None;
            self.rto_at = (!self.retained.is_empty() || self.starved()).then_some(now + self.rto);
        }
        if self.retained.is_empty() {
            self.rto_at = if self.starved() {
                self.rto_at.or(Some(now + self.rto))
            } else {
                None
            };
        }
        // A gap below what the last resend covered, reported soon after it, is that resend
        // still on its way (new DATA overtook it): the timeout covers it if it was lost.
        let covered = next < self.resent_upto && now - self.last_resend < RTO_MIN;
        if flags & ACK_RESEND != 0 && !self.retained.is_empty() && !covered {
            if now - self.last_resend >= RESEND_GAP {
                self.resend(now, out);
            } else {
                // Asked again right after a resend (what was in flight behind it): once more
                // when the gap has passed, not at the timeout.
                self.resend_at = Some(self.last_resend + RESEND_GAP);
            }
        }
        self.check_done(out);
    }

    /// Out of credit, with more to read and nothing to resend: an ACK that gave credit back
    /// may have been lost.
    fn starved(&self) -> bool {
        self.retained.is_empty() && !self.read_eof && self.credit() <= 0
    }

    fn resend(&mut self, now: f64, out: &mut Vec<Action>) {
        self.last_resend = now;
        self.resent_upto = self.next_seq;
        self.resend_at = None;
        self.rto_at = Some(now + self.rto);
        out.push(Action::Resend);
    }

    /// The time has come (see [`Self::deadline`]): a delayed ACK goes out, and what waits for
    /// an ACK past its timeout is sent again, or, past `resume_timeout` with no progress, the
    /// session ends.
    pub fn on_tick(&mut self, now: f64, out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        if self.ack_at.is_some_and(|t| now >= t) {
            self.ack_at = None;
            if self.expect != self.acked_expect || self.consumed != self.acked_consumed {
                self.send_ack(0, out);
            }
        }
        if self.resend_at.is_some_and(|t| now >= t) {
            if self.retained.is_empty() {
                self.resend_at = None;
            } else {
                self.resend(now, out);
            }
        }
        if !self.rto_at.is_some_and(|t| now >= t) {
            return;
        }
        if self.retained.is_empty() {
            self.rto_at = None;
            if self.starved() {
                self.rto = (self.rto * 2.0).min(RTO_MAX);
                self.rto_at = Some(now + self.rto);
                self.send_ack(ACK_PROBE, out);
            }
            return;
        }
        if now - self.progress_at >= self.resume_timeout {
            if self.peer_eof && self.wrote_eof && self.retained.iter().all(|(_, b)| b.is_none()) {
                // Every byte both ways arrived; only the ACK of our EOF did not (the peer
                // ended, and that last ACK was lost): an orderly end.
                self.drop_retained();
                self.closed = true;
                out.push(Action::Closed {
                    reason: String::new(),
                    abort: false,
                });
                return;
            }
            let why = self
                .path_error
                .take()
                .unwrap_or_else(|| "the peer acknowledged nothing".into());
            let reason = format!(
                "{why} (for {:.0} s: the session gave up resending)",
                now - self.progress_at
            );
            self.fail(&reason, true, true, out);
            return;
        }
        self.rto = (self.rto * 2.0).min(RTO_MAX);
        self.resend(now, out);
    }

    /// A path of this side's came back after a loss (its node is connected again): what the
    /// peer did not acknowledge goes again now, and the peer is asked to resend what it sent
    /// since the last in-order arrival, instead of both waiting for their timeouts.
    pub fn path_restored(&mut self, now: f64, out: &mut Vec<Action>) {
        if self.closed || !self.established {
            return;
        }
        self.path_error = None;
        self.rto = RTO_MIN;
        if !self.retained.is_empty() {
            self.resend(now, out);
        }
        if !self.peer_eof {
            self.send_ack(ACK_RESEND, out);
        }
    }

    /// When [`Self::on_tick`] has work next (None: not until something else happens).
    pub fn deadline(&self) -> Option<f64> {
        if self.closed {
            return None;
        }
        [self.ack_at, self.rto_at, self.resend_at]
            .into_iter()
            .flatten()
            .reduce(f64::min)
    }

    /// What was sent and not acknowledged, in order: (number, bytes; None for EOF).
    pub fn retained(&self) -> impl Iterator<Item = (u64, Option<&[u8]>)> {
        self.retained.iter().map(|(s, b)| (*s, b.as_deref()))
    }

    /// Whether nothing of the peer's waits to be written (a DATA body may go to the socket at
    /// once).
    pub fn queue_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A DATA body from [`Self::on_peer`], of which the driver wrote `written` bytes to the
    /// socket at once (0 if it did not try): the rest is queued, within the window.
    pub fn data(&mut self, body: &[u8], written: usize, out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        let c = charge(body.len());
        let written = written.min(body.len());
        if written == body.len() && self.queue.is_empty() {
            self.consumed += c;
            self.maybe_ack(out);
            return;
        }
        // Checked before it is counted: a refused DATA changes nothing it holds.
        if self.queued + c > self.window + charge(MAX_DATA) {
            self.fail(
                "protocol error: the peer overran its flow-control window",
                true,
                true,
                out,
            );
            return;
        }
        self.queued += c;
        let rest = &body[written..];
        self.queued_bytes += rest.len();
        self.queue.push_back((rest.to_vec(), c));
        out.push(Action::Write);
    }

    /// The queued bytes to write next (None: nothing waits).
    pub fn pending(&self) -> Option<&[u8]> {
        self.queue.front().map(|(b, _)| &b[self.queue_pos..])
    }

    /// The socket took `n` bytes of [`Self::pending`] (more than it offered counts as all).
    pub fn wrote(&mut self, n: usize) {
        let Some((front, c)) = self.queue.front() else {
            return;
        };
        let left = front.len() - self.queue_pos;
        let n = n.min(left);
        self.queued_bytes -= n;
        if n < left {
            self.queue_pos += n;
            return;
        }
        let c = *c;
        self.queue.pop_front();
        self.queue_pos = 0;
        self.queued -= c;
        self.consumed += c;
    }

    /// The driver wrote what the socket would take: credit goes back, and after the peer's EOF
    /// with nothing left to write the socket's write half is shut.
    pub fn flushed(&mut self, out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        let done_writing = self.queue.is_empty() && self.peer_eof && !self.wrote_eof;
        if done_writing {
            self.wrote_eof = true;
            out.push(Action::ShutWrite);
        }
        self.maybe_ack(out);
        if done_writing {
            self.check_done(out);
        }
    }

    /// End the session (a socket error, a refusal, a policy, the driver's own end): `abort`
    /// resets the socket, `notify` tells the peer why. Nothing happens if it ended already.
    pub fn fail(&mut self, reason: &str, abort: bool, notify: bool, out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.drop_retained();
        if notify {
            out.push(Action::Send(Control::Close(
                truncate_reason(reason).to_string(),
            )));
        }
        out.push(Action::Closed {
            reason: reason.to_string(),
            abort,
        });
    }

    fn drop_retained(&mut self) {
        self.retained = VecDeque::new();
        self.retained_bytes = 0;
        self.spare = Vec::new();
        self.queue = VecDeque::new();
        self.queue_pos = 0;
        self.queued = 0;
        self.queued_bytes = 0;
    }

    fn maybe_ack(&mut self, out: &mut Vec<Action>) {
        if self.consumed - self.acked_consumed >= self.grant {
            self.send_ack(0, out);
        }
    }

    fn send_ack(&mut self, flags: u8, out: &mut Vec<Action>) {
        self.acked_expect = self.expect;
        self.acked_consumed = self.consumed;
        self.ack_at = None;
        out.push(Action::Send(Control::Ack {
            next: self.expect,
            consumed: self.consumed,
            flags,
        }));
    }

    fn check_done(&mut self, out: &mut Vec<Action>) {
        if self.read_eof && self.wrote_eof && self.retained.is_empty() && !self.closed {
            self.closed = true;
            out.push(Action::Closed {
                reason: String::new(),
                abort: false,
            });
        }
    }

    /// Whether the session ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    /// Bytes read from the socket (sent to the peer).
    pub fn sent(&self) -> u64 {
        self.sent
    }
    /// DATA bytes received from the peer (in order, once each).
    pub fn received(&self) -> u64 {
        self.received
    }
    /// Bytes of the peer's held in memory, not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
    /// Bytes sent and kept until the peer acknowledges them.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }
    /// Credit units this side may still send.
    pub fn credit(&self) -> i64 {
        let out = i64::try_from(self.units_sent - self.units_acked).unwrap_or(i64::MAX);
        i64::try_from(self.window).unwrap_or(i64::MAX) - out
    }
    /// The window, in credit units.
    pub fn window(&self) -> u64 {
        self.window
    }
    /// Why the path to the peer failed, while the session waits for it to come back.
    pub fn path_error(&self) -> Option<&str> {
        self.path_error.as_deref()
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
