//! A portal session's rules, with no I/O: flow control, half-close and how a session ends.
//!
//! Both data planes drive this one state machine: the Rust engine (`engine/sessions.rs`, with a
//! `mio` socket) and the Python driver (`tether.services.session.Session`, with an anyio stream, through the
//! `PortalSession` binding). A driver owns the socket and the channel; it tells the session what
//! happened (a message from the peer, bytes read, bytes written) and does what the session
//! answers, in order:
//!
//! | [`Action`]           | the driver… |
//! |----------------------|-------------|
//! | `Send(Control)`      | sends that message to the peer session (EOF, CREDIT, CLOSE) |
//! | `Write`              | writes [`Session::pending`] to the socket while it takes bytes, reporting [`Session::wrote`], then calls [`Session::flushed`] |
//! | `ShutWrite`          | shuts the socket's write half (the peer's EOF, after everything before it) |
//! | `ResumeRead`         | reads the socket again: credit came back for a reader that waited |
//! | `Closed{reason, abort}` | ends the session: resets the socket if `abort`; `reason` empty is an orderly end of both directions |
//!
//! The driver reads at most [`Session::read_allowance`] bytes at a time and reports them with
//! [`Session::on_read`] (then seals them as one DATA) or the end of the stream with
//! [`Session::on_read_eof`]. A DATA from the peer comes back from [`Session::on_peer`] as its
//! body: the driver may write it straight to the socket when [`Session::queue_empty`] (no copy),
//! and reports how much the socket took with [`Session::data`], which queues the rest.
//!
//! **Flow control**: each direction has a window of credit units; a DATA costs
//! `max(len, MIN_CHARGE)` units ([`charge`]). A reader with no credit stops reading (so a slow
//! writer slows the peer through TCP itself), and a session refuses a peer that overruns its
//! window: what it holds is bounded by the window, whatever the peer sends. Credit goes back in
//! steps of a quarter window.

use std::collections::VecDeque;

use super::{truncate_reason, PortalError, PortalMessage, MAX_DATA};

/// A DATA costs at least this many credit units (small messages cost memory too).
pub const MIN_CHARGE: u64 = 512;

/// The credit units a DATA body of `len` bytes costs.
pub fn charge(len: usize) -> u64 {
    (len as u64).max(MIN_CHARGE)
}

/// A control message for the peer session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// This side's socket reached the end of its stream.
    Eof,
    /// This many credit units were written out and may be sent again.
    Credit(u32),
    /// The session is over (at most `MAX_REASON` bytes of reason).
    Close(String),
}

/// What the driver must do, in order (see the module's table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send(Control),
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
    /// What this side may still send (negative: a read overdrew it by less than one read).
    credit: i64,
    /// Written to the socket, not yet credited back to the peer.
    consumed: u64,
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
    /// A session with a window of `window` credit units each way.
    pub fn new(window: u64) -> Self {
        let window = window.max(1);
        Session {
            window,
            grant: (window / 4).max(1),
            credit: i64::try_from(window).unwrap_or(i64::MAX),
            consumed: 0,
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
    /// waits: a CREDIT from the peer then answers [`Action::ResumeRead`].
    pub fn read_allowance(&mut self) -> usize {
        if self.closed || self.read_eof {
            return 0;
        }
        if self.credit <= 0 {
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

    /// `n` bytes (1 ..= the allowance) were read from the socket: the driver sends them as one
    /// DATA.
    pub fn on_read(&mut self, n: usize) {
        self.credit = self
            .credit
            .saturating_sub(i64::try_from(charge(n)).unwrap_or(i64::MAX));
        self.sent += n as u64;
    }

    /// The socket reached the end of its stream.
    pub fn on_read_eof(&mut self, out: &mut Vec<Action>) {
        if self.closed || self.read_eof {
            return;
        }
        self.read_eof = true;
        out.push(Action::Send(Control::Eof));
        self.check_done(out);
    }

    /// One message from the peer session (its payload: kind byte, type byte, body). A DATA
    /// comes back as its body: the driver writes what it can of it now (only if
    /// [`Self::queue_empty`]) and reports with [`Self::data`].
    pub fn on_peer<'p>(&mut self, payload: &'p [u8], out: &mut Vec<Action>) -> Option<&'p [u8]> {
        if self.closed {
            return None;
        }
        let message = match PortalMessage::decode(payload) {
            Ok(m) => m,
            // The session's state comes first: any DATA after EOF is that error, whatever its
            // size.
            Err(PortalError::DataTooLarge(_)) if self.peer_eof => {
                self.fail("protocol error: DATA after EOF", true, true, out);
                return None;
            }
            Err(e) => {
                self.fail(&e.to_string(), true, true, out);
                return None;
            }
        };
        match message {
            PortalMessage::Data(body) => {
                if self.peer_eof {
                    self.fail("protocol error: DATA after EOF", true, true, out);
                    return None;
                }
                self.received += body.len() as u64;
                return Some(body);
            }
            PortalMessage::Credit(n) => {
                self.credit = self.credit.saturating_add(i64::from(n));
                if self.want_read && self.credit > 0 {
                    self.want_read = false;
                    out.push(Action::ResumeRead);
                }
            }
            PortalMessage::Eof => {
                if !self.peer_eof {
                    self.peer_eof = true;
                    out.push(Action::Write);
                }
            }
            PortalMessage::Close(reason) => {
                let mut reason = String::from_utf8_lossy(reason).into_owned();
                if reason.is_empty() {
                    reason = "closed by the peer".into();
                }
                self.fail(&reason, true, false, out);
            }
            PortalMessage::PathFailed(reason) => {
                let reason = String::from_utf8_lossy(reason);
                self.fail(
                    &format!("the path to the peer failed: {reason}"),
                    true,
                    false,
                    out,
                );
            }
            PortalMessage::Open => {} // a repeated OPEN is harmless
        }
        None
    }

    /// Whether nothing of the peer's waits to be written (a DATA body may go to the socket at
    /// once).
    pub fn queue_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A DATA `body` from [`Self::on_peer`], of which the driver wrote `written` bytes to the
    /// socket at once (0 if it did not try): the rest is queued, within the window.
    pub fn data(&mut self, body: &[u8], written: usize, out: &mut Vec<Action>) {
        if self.closed {
            return;
        }
        let c = charge(body.len());
        let written = written.min(body.len());
        if written == body.len() && self.queue.is_empty() {
            self.consumed += c;
            self.maybe_credit(out);
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
        self.maybe_credit(out);
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

    fn maybe_credit(&mut self, out: &mut Vec<Action>) {
        if self.consumed < self.grant {
            return;
        }
        let n = u32::try_from(self.consumed).unwrap_or(u32::MAX);
        self.consumed -= u64::from(n);
        out.push(Action::Send(Control::Credit(n)));
    }

    fn check_done(&mut self, out: &mut Vec<Action>) {
        if self.read_eof && self.wrote_eof && !self.closed {
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
    /// DATA bytes received from the peer.
    pub fn received(&self) -> u64 {
        self.received
    }
    /// Bytes of the peer's held in memory, not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
    /// Credit units this side may still send.
    pub fn credit(&self) -> i64 {
        self.credit
    }
    /// The window, in credit units.
    pub fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
