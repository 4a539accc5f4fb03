//! Portal sessions in the data plane: the session protocol (`crate::portal` decodes its
//! messages), flow control, half-close, connecting an outlet's target, and the end of a session.

use super::{
    charge, reset, token, why, Event, Session, SessionSpec, State, SyncMode, ENDED_MEMORY,
    HIGH_WATER,
};
use crate::portal::{
    PortalError, PortalMessage, KIND_DATA, MAX_DATA, MAX_REASON, T_CLOSE, T_CREDIT, T_DATA, T_EOF,
    T_OPEN,
};
use mio::net::TcpStream;
use mio::Interest;
use std::collections::VecDeque;
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
        let window = spec.window.max(1);
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
                sock,
                connect_prefix: spec.connect_prefix,
                header: spec.header,
                key,
                window,
                grant: (window / 4).max(1),
                credit: i64::try_from(window).unwrap_or(i64::MAX),
                consumed: 0,
                queued: 0,
                queue: VecDeque::new(),
                queue_pos: 0,
                held: Vec::new(),
                held_bytes: 0,
                synced,
                peer_eof: false,
                wrote_eof: false,
                read_eof: false,
                want_read: false,
                sent: 0,
                received: 0,
            },
        );
        if let Some(ch) = st.channels.get_mut(&spec.channel) {
            ch.sessions.push(id);
        }
        if spec.open {
            if let Err(e) = st.send_portal(id, T_OPEN, &[]) {
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

    /// Seal a portal message of session `sid` into a routed frame on its channel's link.
    pub(super) fn send_portal(&mut self, sid: u64, t: u8, body: &[u8]) -> Result<(), String> {
        let n = 2 + body.len();
        let len_bytes = u32::try_from(n)
            .map_err(|_| "message too large")?
            .to_be_bytes();
        let head = [KIND_DATA, t];
        let s = self.sessions.get_mut(&sid).ok_or("the session ended")?;
        // Lent out for the call (no copy per message), then put back.
        let (cid, header) = (s.channel, std::mem::take(&mut s.header));
        let sent = self.send_sealed(cid, &[&header, &len_bytes, &head, body], 0);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.header = header;
        }
        sent
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

    #[allow(clippy::while_let_loop)]
    /// Read the session's socket while it has credit (`drain`: as in [`Self::read_link`]).
    pub(super) fn read_session(&mut self, sid: u64, drain: bool) {
        let mut rbuf = self.take_rbuf();
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                break;
            };
            if s.read_eof || s.connecting.is_some() || s.sock.is_none() {
                break;
            }
            if s.credit <= 0 {
                s.want_read = true;
                break;
            }
            if self.session_link_congested(sid) {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.want_read = true;
                }
                break;
            }
            let Some(s) = self.sessions.get_mut(&sid) else {
                break;
            };
            s.want_read = false;
            let Some(sock) = s.sock.as_mut() else {
                break;
            };
            match sock.read(&mut rbuf[..MAX_DATA]) {
                Ok(0) => {
                    s.read_eof = true;
                    if let Err(e) = self.send_portal(sid, T_EOF, &[]) {
                        self.finish(
                            sid,
                            &format!("could not send to the peer: {e}"),
                            true,
                            false,
                        );
                    } else {
                        self.check_done(sid);
                    }
                    break;
                }
                Ok(n) => {
                    s.credit -= i64::try_from(charge(n)).unwrap_or(i64::MAX);
                    s.sent += n as u64;
                    if let Err(e) = self.send_portal(sid, T_DATA, &rbuf[..n]) {
                        self.finish(
                            sid,
                            &format!("could not send to the peer: {e}"),
                            true,
                            false,
                        );
                        break;
                    }
                    if n < MAX_DATA && !drain {
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

    /// One message from the peer session (payload: kind byte, type byte, body).
    pub(super) fn deliver(&mut self, sid: u64, payload: &[u8]) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let message = match PortalMessage::decode(payload) {
            Ok(m) => m,
            // The session's state comes first: any DATA after EOF is that error, whatever
            // its size (as tether.portal.Session decides).
            Err(PortalError::DataTooLarge(_)) if s.peer_eof => {
                self.finish(sid, "protocol error: DATA after EOF", true, true);
                return;
            }
            Err(e) => {
                self.finish(sid, &e.to_string(), true, true);
                return;
            }
        };
        match message {
            PortalMessage::PathFailed(reason) => {
                let reason = String::from_utf8_lossy(reason).into_owned();
                self.finish(
                    sid,
                    &format!("the path to the peer failed: {reason}"),
                    true,
                    false,
                );
            }
            PortalMessage::Data(mut body) => {
                if s.peer_eof {
                    self.finish(sid, "protocol error: DATA after EOF", true, true);
                    return;
                }
                let c = charge(body.len());
                s.received += body.len() as u64;
                if s.queue.is_empty() && s.connecting.is_none() {
                    if let Some(sock) = s.sock.as_mut() {
                        match sock.write(body) {
                            Ok(n) => body = &body[n..],
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                                ) => {}
                            Err(e) => {
                                let reason = format!("the local connection failed: {}", why(&e));
                                self.finish(sid, &reason, true, true);
                                return;
                            }
                        }
                        if body.is_empty() {
                            s.consumed += c;
                            self.maybe_credit(sid);
                            return;
                        }
                    }
                }
                s.queued += c;
                if s.queued > s.window + charge(MAX_DATA) {
                    self.finish(
                        sid,
                        "protocol error: the peer overran its flow-control window",
                        true,
                        true,
                    );
                    return;
                }
                s.queue.push_back((body.to_vec(), c));
            }
            PortalMessage::Credit(n) => {
                s.credit = s.credit.saturating_add(i64::from(n));
                if s.want_read {
                    self.retry_sessions.push(sid);
                }
            }
            PortalMessage::Eof => {
                s.peer_eof = true;
                self.session_writable(sid);
            }
            PortalMessage::Close(reason) => {
                let mut reason = String::from_utf8_lossy(reason).into_owned();
                if reason.is_empty() {
                    reason = "closed by the peer".into();
                }
                self.finish(sid, &reason, true, false);
            }
            PortalMessage::Open => {} // a repeated OPEN is harmless
        }
    }

    pub(super) fn maybe_credit(&mut self, sid: u64) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.consumed < s.grant {
            return;
        }
        let n = u32::try_from(s.consumed).unwrap_or(u32::MAX);
        s.consumed -= u64::from(n);
        if let Err(e) = self.send_portal(sid, T_CREDIT, &n.to_be_bytes()) {
            self.finish(
                sid,
                &format!("could not send to the peer: {e}"),
                true,
                false,
            );
        }
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
                    self.retry_sessions.push(sid);
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
        while let Some((front, c)) = s.queue.front() {
            match sock.write(&front[s.queue_pos..]) {
                Ok(n) => {
                    s.queue_pos += n;
                    if s.queue_pos >= front.len() {
                        let c = *c;
                        s.queue.pop_front();
                        s.queue_pos = 0;
                        s.queued -= c;
                        s.consumed += c;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("the local connection failed: {}", why(&e));
                    self.finish(sid, &reason, true, true);
                    return;
                }
            }
        }
        let done_writing = s.queue.is_empty() && s.peer_eof && !s.wrote_eof;
        if done_writing {
            s.wrote_eof = true;
            let _ = sock.shutdown(Shutdown::Write);
        }
        self.maybe_credit(sid);
        if done_writing {
            self.check_done(sid);
        }
    }

    pub(super) fn check_done(&mut self, sid: u64) {
        if let Some(s) = self.sessions.get(&sid) {
            if s.read_eof && s.wrote_eof {
                self.finish(sid, "", false, false);
            }
        }
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

    /// End a session: `abort` resets its socket (else an orderly close), `notify` tells the
    /// peer why. Python learns through [`Event::SessionClosed`].
    pub(super) fn finish(&mut self, sid: u64, reason: &str, abort: bool, notify: bool) {
        if notify && self.sessions.contains_key(&sid) {
            let end = reason.len().min(MAX_REASON);
            let mut cut = end;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            let _ = self.send_portal(sid, T_CLOSE, &reason.as_bytes()[..cut]);
        }
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
            sent: s.sent,
            received: s.received,
        });
    }
}
