//! Portal sessions in the data plane: the driver of `crate::portal::Session` (the rules of
//! flow control, half-close and the end of a session) over a `mio` socket, connecting an
//! outlet's target, and the end of a session.

use super::{reset, token, why, Event, Session, SessionSpec, State, SyncMode, HIGH_WATER};
use crate::portal::{
    data_header, Action, Control, Session as Flow, ENDED_MEMORY, KIND_DATA, KIND_ERROR, T_OPEN,
};
use mio::net::TcpStream;
use mio::Interest;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

impl State {
    pub(super) fn new_session(&mut self, spec: SessionSpec) -> Result<u64, String> {
        let st = self;
        let Some(ch) = st.channels.get(&spec.channel) else {
            return Err("the secure channel is not in the data plane".into());
        };
        let link = ch.link;
        let last_rx_link = ch.last_rx_link;
        let key = (spec.channel, spec.address, spec.match_return);
        if st.keys.contains_key(&key) {
            return Err("a session with this address exists".into());
        }
        let id = st.new_id();
        let mut sock = match spec.sock {
            Some(fd) => {
                let s = std::net::TcpStream::from(fd);
                s.set_nonblocking(true).map_err(|e| why(&e))?;
                let _ = s.set_nodelay(true);
                Some(TcpStream::from_std(s))
            }
            None => None,
        };
        if let Some(s) = sock.as_mut() {
            st.registry
                .register(s, token(id), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| why(&e))?;
        }
        let window = spec.window;
        let sync_link = last_rx_link.or(link);
        let synced = match spec.sync {
            SyncMode::Synced => true,
            SyncMode::Always => false,
            SyncMode::IfQueued => !st.events.iter().any(|e| match e {
                Event::Message { link, .. }
                | Event::Inner { link, .. }
                | Event::Plain { link, .. } => Some(*link) == sync_link,
                _ => false,
            }),
        };
        st.keys.insert(key.clone(), id);
        st.sessions.insert(
            id,
            Session {
                channel: spec.channel,
                owner: None,
                // Without a socket the target is not connected yet: its timeout runs from now.
                connecting: sock
                    .is_none()
                    .then(|| Instant::now() + spec.connect_timeout),
                // Open when the outlet answers OPEN (inlet side) or the target is connected
                // (outlet side): a session registered with a socket and no OPEN to send has
                // nothing to wait for.
                opening: (spec.open || sock.is_none()).then(Instant::now),
                inlet_side: spec.open,
                sock,
                connect_prefix: spec.connect_prefix,
                header: spec.header,
                key,
                // An outlet's session answers an OPEN: its peer is there from the start.
                flow: Flow::new(window, spec.resume_timeout.as_secs_f64(), !spec.open),
                held: Vec::new(),
                held_bytes: 0,
                synced,
            },
        );
        if let Some(ch) = st.channels.get_mut(&spec.channel) {
            ch.sessions.push(id);
        }
        if spec.open {
            if let Err(e) = st.send_portal(id, &[KIND_DATA, T_OPEN], &[]) {
                st.finish(id, &format!("could not open the session: {e}"), true, false);
                return Ok(id);
            }
        }
        if !synced {
            st.push(Event::Sync {
                link: sync_link,
                session: id,
            });
        }
        st.retry_sessions.push(id);
        Ok(id)
    }

    /// Seconds on the engine's clock (what a session's timers count in).
    pub(super) fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Seal a portal message of session `sid` (its payload: `head`, then `body`) into a routed
    /// frame on its channel's link.
    pub(super) fn send_portal(&mut self, sid: u64, head: &[u8], body: &[u8]) -> Result<(), String> {
        let n = head.len() + body.len();
        let len_bytes = u32::try_from(n)
            .map_err(|_| "message too large")?
            .to_be_bytes();
        let s = self.sessions.get_mut(&sid).ok_or("the session ended")?;
        // Lent out for the call (no copy per message), then put back.
        let (cid, header) = (s.channel, std::mem::take(&mut s.header));
        let sent = self.send_sealed(cid, &[&header, &len_bytes, head, body], 0);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.header = header;
        }
        sent
    }

    /// Do what session `sid`'s state machine answered, in order (`write`: an
    /// [`Action::Write`] flushes at once; after a DATA that the socket did not take whole, the
    /// socket's next writable event does).
    fn apply(&mut self, sid: u64, out: &mut Vec<Action>, write: bool) {
        let mut failure = None;
        for action in out.drain(..) {
            match action {
                Action::Send(control) => {
                    let sent = self.send_portal(sid, &control.encode(), &[]);
                    if let (Err(e), false) = (sent, matches!(control, Control::Close(_))) {
                        failure.get_or_insert(format!("could not send to the peer: {e}"));
                    }
                }
                Action::Resend => {
                    if let Err(e) = self.resend(sid) {
                        failure.get_or_insert(format!("could not send to the peer: {e}"));
                    }
                }
                Action::Write if write => self.retry_sessions.push(sid),
                Action::Write => {}
                Action::ShutWrite => {
                    if let Some(sock) = self.sessions.get(&sid).and_then(|s| s.sock.as_ref()) {
                        let _ = sock.shutdown(Shutdown::Write);
                    }
                }
                Action::ResumeRead => self.retry_sessions.push(sid),
                Action::Closed { reason, abort } => self.end_session(sid, &reason, abort),
            }
        }
        if let Some(reason) = failure {
            self.finish(sid, &reason, true, false);
        }
    }

    /// Send again what session `sid` sent and the peer did not acknowledge.
    fn resend(&mut self, sid: u64) -> Result<(), String> {
        let Some(s) = self.sessions.get(&sid) else {
            return Ok(());
        };
        let again: Vec<(u64, Option<Vec<u8>>)> = s
            .flow
            .retained()
            .map(|(seq, b)| (seq, b.map(<[u8]>::to_vec)))
            .collect();
        for (seq, bytes) in again {
            match bytes {
                Some(b) => self.send_portal(sid, &data_header(seq), &b)?,
                None => self.send_portal(sid, &Control::Eof(seq).encode(), &[])?,
            }
        }
        Ok(())
    }

    /// Session timers due (delayed ACKs, retransmissions, giving up).
    pub(super) fn session_timers(&mut self) {
        let now = self.now();
        let due: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.flow.deadline().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        for sid in due {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.flow.on_tick(now, &mut out);
                self.apply(sid, &mut out, true);
            }
        }
    }

    pub(super) fn session_link_congested(&mut self, sid: u64) -> bool {
        let Some(s) = self.sessions.get(&sid) else {
            return false;
        };
        let link = self.channel_link(s.channel);
        match link.and_then(|l| self.links.get_mut(&l)) {
            Some(l) if l.out_bytes > HIGH_WATER => {
                l.waiting.push(sid);
                true
            }
            _ => false,
        }
    }

    #[allow(clippy::while_let_loop)] // the loop also ends on a read result
    /// Read the session's socket within its allowance (`drain`: as in [`Self::read_link`]).
    pub(super) fn read_session(&mut self, sid: u64, drain: bool) {
        let mut rbuf = self.take_rbuf();
        let now = self.now();
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                break;
            };
            if s.connecting.is_some() || s.sock.is_none() {
                break;
            }
            let waited = s.flow.wants_read();
            let allowed = s.flow.read_allowance().min(rbuf.len());
            if allowed == 0 {
                if !waited && s.flow.wants_read() {
                    self.pressure.session_credit += 1; // the peer's window is used up
                }
                break;
            }
            if self.session_link_congested(sid) {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.flow.wait_read();
                    if !waited {
                        self.pressure.session_congested += 1; // the way on is congested
                    }
                }
                break;
            }
            let Some(s) = self.sessions.get_mut(&sid) else {
                break;
            };
            let Some(sock) = s.sock.as_mut() else {
                break;
            };
            match sock.read(&mut rbuf[..allowed]) {
                Ok(0) => {
                    let mut out = Vec::new();
                    s.flow.on_read_eof(now, &mut out);
                    self.apply(sid, &mut out, true);
                    break;
                }
                Ok(n) => {
                    let seq = s.flow.on_read(&rbuf[..n], now);
                    if let Err(e) = self.send_portal(sid, &data_header(seq), &rbuf[..n]) {
                        let reason = format!("could not send to the peer: {e}");
                        self.finish(sid, &reason, true, false);
                        break;
                    }
                    if n < allowed && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("the local connection failed: {}", why(&e));
                    self.finish(sid, &reason, true, true);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
    }

    /// One message from the peer session (payload: kind byte, type byte, body). A DATA body
    /// goes straight to the socket when nothing waits before it.
    pub(super) fn deliver(&mut self, sid: u64, payload: &[u8]) {
        let now = self.now();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.inlet_side && payload.get(1) == Some(&T_OPEN) && payload.first() != Some(&KIND_ERROR) {
            // The outlet's answer: its target is connected (once; a repeat changes nothing).
            s.flow.on_peer(payload, now, &mut Vec::new()); // the peer is there
            if let Some(since) = s.opening.take() {
                let seconds = since.elapsed().as_secs_f64();
                self.push(Event::SessionOpened {
                    session: sid,
                    seconds,
                });
            }
            return;
        }
        let mut out = std::mem::take(&mut self.actions);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(body) = s.flow.on_peer(payload, now, &mut out) else {
            self.apply(sid, &mut out, true);
            self.actions = out;
            return;
        };
        let mut written = 0;
        if s.flow.queue_empty() && s.connecting.is_none() {
            if let Some(sock) = s.sock.as_mut() {
                match sock.write(body) {
                    Ok(n) => written = n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => {
                        let reason = format!("the local connection failed: {}", why(&e));
                        s.flow.fail(&reason, true, true, &mut out);
                    }
                }
            }
        }
        s.flow.data(body, written, &mut out);
        self.apply(sid, &mut out, false);
        self.actions = out;
    }

    pub(super) fn session_writable(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.connecting.is_some() {
            let Some(sock) = s.sock.as_ref() else {
                return; // not connecting yet: Python resolves the address first
            };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => {
                    let reason = format!("{}: {}", s.connect_prefix, why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => {
                    s.connecting = None;
                    let _ = sock.set_nodelay(true);
                    let since = s.opening.take();
                    self.retry_sessions.push(sid);
                    if let Some(since) = since {
                        self.session_opened(sid, since);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let reason = format!("{}: {}", s.connect_prefix, why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(sock) = s.sock.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(pending) = s.flow.pending() {
            match sock.write(pending) {
                Ok(n) => s.flow.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("the local connection failed: {}", why(&e));
                    s.flow.fail(&reason, true, true, &mut out);
                    break;
                }
            }
        }
        s.flow.flushed(&mut out);
        self.apply(sid, &mut out, false);
    }

    /// The outlet side's target is connected: the inlet is told (OPEN in answer, before any
    /// DATA from the target) and Python learns how long it took.
    fn session_opened(&mut self, sid: u64, since: Instant) {
        if let Err(e) = self.send_portal(sid, &[KIND_DATA, T_OPEN], &[]) {
            self.finish(
                sid,
                &format!("could not send to the peer: {e}"),
                true,
                false,
            );
            return;
        }
        self.push(Event::SessionOpened {
            session: sid,
            seconds: since.elapsed().as_secs_f64(),
        });
    }

    pub(super) fn connect(&mut self, sid: u64, addr: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.sock.is_some() {
            return;
        }
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                if let Err(e) = self.registry.register(
                    &mut sock,
                    token(sid),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    let reason = format!("{}: {}", s.connect_prefix, why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
                s.sock = Some(sock);
            }
            Err(e) => {
                let reason = format!("{}: {}", s.connect_prefix, why(&e));
                self.finish(sid, &reason, true, true);
            }
        }
    }

    /// End a session for the driver's own reason: `abort` resets its socket (else an orderly
    /// close), `notify` tells the peer why. Python learns through [`Event::SessionClosed`].
    pub(super) fn finish(&mut self, sid: u64, reason: &str, abort: bool, notify: bool) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut out = Vec::new();
        s.flow.fail(reason, abort, notify, &mut out);
        self.apply(sid, &mut out, false);
    }

    /// The session's state machine said it ended: leave every table, close the socket.
    fn end_session(&mut self, sid: u64, reason: &str, abort: bool) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.keys.remove(&s.key);
        if s.key.2.is_some() {
            // An outlet's session: what its inlet still sends is dropped from now on.
            if let Some(o) = self
                .outlet_names
                .get(&s.key.1)
                .and_then(|oid| self.outlets.get_mut(oid))
            {
                if o.ended_set.insert(s.key.clone()) {
                    o.ended.push_back(s.key.clone());
                    if o.ended.len() > ENDED_MEMORY {
                        if let Some(old) = o.ended.pop_front() {
                            o.ended_set.remove(&old);
                        }
                    }
                }
            }
        }
        if let Some(owner) = s.owner {
            if let Some(i) = self.inlets.get_mut(&owner) {
                i.sessions.retain(|&x| x != sid);
            } else if let Some(o) = self.outlets.get_mut(&owner) {
                o.sessions.retain(|&x| x != sid);
            }
        }
        if let Some(ch) = self.channels.get_mut(&s.channel) {
            ch.sessions.retain(|&x| x != sid);
        }
        if let Some(mut sock) = s.sock.take() {
            let _ = self.registry.deregister(&mut sock);
            if abort {
                reset(&sock);
            }
        }
        self.push(Event::SessionClosed {
            session: sid,
            reason: reason.to_string(),
            sent: s.flow.sent(),
            received: s.flow.received(),
        });
    }
}
