//! Inlets and outlets in the data plane: accepting connections (and refusing when out of
//! descriptors), and opening an outlet's session for an authorized channel.

use super::{
    mio_into_std, out_of_descriptors, reset, session_header, spare_descriptor, Event, SessionSpec,
    State, SyncMode,
};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

impl State {
    pub(super) fn accept(&mut self, iid: u64) {
        loop {
            let Some(inlet) = self.inlets.get_mut(&iid) else {
                return;
            };
            let sock = match inlet.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if out_of_descriptors(&e) => {
                    // Refuse a waiting connection (reset) with the descriptor kept in reserve,
                    // so it does not wait in the backlog with no new readiness to retry it.
                    // (accept says EMFILE even with nothing waiting: then stop here.)
                    if self.spare.take().is_none() {
                        return;
                    }
                    let refused = match self.inlets.get_mut(&iid) {
                        Some(inlet) => inlet.listener.accept().ok(),
                        None => None,
                    };
                    self.spare = spare_descriptor();
                    match refused {
                        Some((sock, _)) => {
                            reset(&sock);
                            continue;
                        }
                        None => return,
                    }
                }
                Err(_) => return,
            };
            let binding = inlet.binding.clone();
            let full = inlet.sessions.len() >= inlet.max_sessions;
            let (prefix, window, resume_timeout) =
                (inlet.prefix.clone(), inlet.window, inlet.resume_timeout);
            let usable = binding
                .as_ref()
                .filter(|_| !full)
                .filter(|(c, _)| {
                    let link = self.channels.get(c).and_then(|ch| ch.link);
                    matches!(link.and_then(|l| self.links.get(&l)), Some(l) if l.failed.is_none())
                })
                .cloned();
            let Some((cid, onward)) = usable else {
                let std_sock: std::net::TcpStream = mio_into_std(sock);
                let _ = std_sock.set_nonblocking(false);
                self.push(Event::InletAccepted {
                    inlet: iid,
                    fd: OwnedFd::from(std_sock),
                });
                continue;
            };
            let sid = self.next_id;
            let mut address = prefix;
            address.extend_from_slice(sid.to_string().as_bytes());
            let header = session_header(&onward, &address);
            let std_sock = mio_into_std(sock);
            let spec = SessionSpec {
                channel: cid,
                sock: Some(OwnedFd::from(std_sock)),
                header,
                address: address.clone(),
                match_return: None,
                window,
                open: true,
                sync: SyncMode::Synced,
                connect_timeout: Duration::ZERO,
                resume_timeout,
                connect_prefix: String::new(),
            };
            // On failure the socket was dropped: the client sees the connection close.
            if let Ok(sid) = self.new_session(spec) {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.owner = Some(iid);
                    if let Some(i) = self.inlets.get_mut(&iid) {
                        i.sessions.push(sid);
                    }
                }
                self.push(Event::InletSession {
                    inlet: iid,
                    session: sid,
                    channel: cid,
                    address,
                });
            }
        }
    }

    /// An OPEN to outlet `oid` through channel `cid`: a session here if the channel is
    /// authorized (true), else Python decides (false).
    pub(super) fn outlet_open(&mut self, oid: u64, cid: u64, ret: Vec<u8>) -> bool {
        let Some(o) = self.outlets.get(&oid) else {
            return false;
        };
        let Some(target) = o.target else {
            return false;
        };
        let key = (cid, o.name.clone(), Some(ret.clone()));
        if o.ended_set.contains(&key) {
            return true; // a late OPEN of a session that ended: dropped, quietly
        }
        if !o.allowed.contains(&cid) || o.sessions.len() >= o.max_sessions {
            return false;
        }
        let sid = self.next_id;
        let mut address = b"outlet#e".to_vec();
        address.extend_from_slice(sid.to_string().as_bytes());
        // The session answers the inlet session at the head of the return route.
        let header = session_header(&ret, &address);
        let spec = SessionSpec {
            channel: cid,
            sock: None,
            header,
            address: o.name.clone(),
            match_return: Some(ret.clone()),
            window: o.window,
            open: false,
            sync: SyncMode::Synced,
            connect_timeout: o.connect_timeout,
            resume_timeout: o.resume_timeout,
            connect_prefix: o.connect_prefix.clone(),
        };
        let Ok(sid) = self.new_session(spec) else {
            return false;
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.owner = Some(oid);
        }
        if let Some(o) = self.outlets.get_mut(&oid) {
            o.sessions.push(sid);
        }
        self.push(Event::OutletSession {
            outlet: oid,
            session: sid,
            channel: cid,
            return_route: ret,
        });
        self.connect(sid, target);
        true
    }
}
