//! Links: writing queued frames, reading and decoding frames, and what a frame from a link may
//! reach here (a decryptor, a relay forwarder, a granted encryptor) or hand to Python.

use super::{
    why, Event, State, FORWARD_MARGIN, HIGH_WATER, LOCAL, LOW_WATER, STEP_DATA, UP_LIMIT,
    UP_TOTAL_LIMIT,
};
use crate::frame::{self, FrameDecoder};
use crate::portal::KIND_DATA;
use crate::relay;
use crate::route;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

impl State {
    pub(super) fn fail_link(&mut self, id: u64, reason: String) {
        if let Some(l) = self.links.get_mut(&id) {
            if l.failed.is_none() {
                l.failed = Some(reason.clone());
                self.to_close.push((id, reason));
            }
        }
    }

    pub(super) fn close_link(&mut self, id: u64, reason: &str, report: bool) {
        let Some(mut l) = self.links.remove(&id) else {
            return;
        };
        self.up_total = self.up_total.saturating_sub(l.up);
        self.link_names.remove(&l.name);
        let _ = self.registry.deregister(&mut l.sock);
        let _ = l.sock.shutdown(Shutdown::Both);
        let mut unsent: Vec<Vec<u8>> = l.out.into_iter().collect();
        if l.out_pos > 0 && !unsent.is_empty() {
            unsent.remove(0); // partly written: neither sent nor safe to report as unsent
        }
        if report {
            self.push(Event::LinkClosed {
                link: id,
                reason: reason.to_string(),
                unsent,
            });
        }
        for sid in l.waiting {
            self.retry_sessions.push(sid);
        }
    }

    pub(super) fn link_send(&mut self, id: u64, data: Vec<u8>) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        if l.failed.is_some() || data.is_empty() {
            return;
        }
        l.out_bytes += data.len();
        l.out.push_back(data);
        if l.out.len() == 1 {
            self.flush_link(id);
        }
    }

    pub(super) fn flush_link(&mut self, id: u64) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        while !l.out.is_empty() && l.failed.is_none() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(l.out.len().min(64));
            for (i, b) in l.out.iter().take(64).enumerate() {
                slices.push(IoSlice::new(if i == 0 { &b[l.out_pos..] } else { b }));
            }
            match l.sock.write_vectored(&slices) {
                Ok(0) => {
                    let reason = "send failed: the connection is closed".to_string();
                    l.failed = Some(reason.clone());
                    self.to_close.push((id, reason));
                    return;
                }
                Ok(mut n) => {
                    l.timers.sent(self.epoch.elapsed());
                    l.out_bytes -= n;
                    while n > 0 {
                        let front = l.out[0].len() - l.out_pos;
                        if n >= front {
                            n -= front;
                            l.out.pop_front();
                            l.out_pos = 0;
                            l.sent += 1;
                        } else {
                            l.out_pos += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.timers.send_blocked(self.epoch.elapsed());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("send failed: {}", why(&e));
                    l.failed = Some(reason.clone());
                    self.to_close.push((id, reason));
                    return;
                }
            }
        }
        if l.out_bytes <= LOW_WATER {
            if l.congested {
                l.congested = false;
                self.push(Event::Drained { link: id });
            }
            if let Some(l) = self.links.get_mut(&id) {
                let waiting = std::mem::take(&mut l.waiting);
                self.retry_sessions.extend(waiting);
            }
        }
    }

    #[allow(clippy::while_let_loop)] // the loop also ends on a read result
    /// Read what the link has. A short read means the socket was drained (the next data makes
    /// a new edge), so it stops there unless `drain` (the peer's FIN is in the same event, or
    /// this is a retry): then it reads until the socket would block.
    pub(super) fn read_link(&mut self, id: u64, drain: bool) {
        let mut rbuf = self.take_rbuf();
        loop {
            let Some(l) = self.links.get_mut(&id) else {
                break;
            };
            if l.failed.is_some() {
                break;
            }
            if l.up >= UP_LIMIT || self.up_total >= UP_TOTAL_LIMIT {
                if !l.read_blocked {
                    self.pressure.link_up_limit += 1;
                    l.read_blocked = true;
                    l.timers.delivering(true, self.epoch.elapsed());
                    self.blocked.push(id);
                }
                break;
            }
            match l.sock.read(&mut rbuf) {
                Ok(0) => {
                    self.fail_link(id, "closed by peer".into());
                    break;
                }
                Ok(n) => {
                    self.feed_link(id, &rbuf[..n]);
                    if n < rbuf.len() && !drain {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = if e.kind() == io::ErrorKind::ConnectionReset {
                        "closed by peer".to_string()
                    } else {
                        format!("socket error: {}", why(&e))
                    };
                    self.fail_link(id, reason);
                    break;
                }
            }
        }
        self.rbuf = rbuf;
    }

    pub(super) fn feed_link(&mut self, id: u64, data: &[u8]) {
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        let now = self.epoch.elapsed();
        let mut decoder = std::mem::replace(&mut l.decoder, FrameDecoder::new(0));
        let mut failure: Option<String> = None;
        let res = decoder.feed(data, |f| {
            if failure.is_none() {
                if let Err(e) = self.handle_frame(id, f) {
                    failure = Some(e);
                }
            }
        });
        if let Err(e) = res {
            failure.get_or_insert(format!("bad framing: {e}"));
        }
        let buffered = decoder.buffered();
        if let Some(l) = self.links.get_mut(&id) {
            l.decoder = decoder;
            l.timers.received(now, buffered > 0);
        }
        if let Some(reason) = failure {
            self.fail_link(id, reason);
        }
    }

    pub(super) fn handle_frame(&mut self, link: u64, f: &[u8]) -> Result<(), String> {
        if f.is_empty() {
            return Ok(()); // keepalive: not a message
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.received += 1;
        }
        let m = route::decode(f).map_err(|e| format!("malformed message from the peer: {e}"))?;
        if let Some(a) = m.onward.first() {
            if a.transport == LOCAL
                && m.payload.len() >= 2
                && m.payload[0] == KIND_DATA
                && m.payload[1] == STEP_DATA
            {
                if let Some(&cid) = self.decryptors.get(a.value) {
                    self.decrypt(link, cid, &m.payload[2..], 0);
                    return Ok(());
                }
            }
            // A relay forwarder: into its claimer's channel; or that channel's encryptor
            // itself, which a link may use only once it was granted the channel (it sent
            // through the forwarder, and goes on along the return route it got back). Any
            // other channel's encryptor is for local callers only: Python refuses it.
            if a.transport == LOCAL {
                if let Some(&cid) = self.encryptors.get(a.value) {
                    if self.granted(link, cid) && self.seal_forward(link, cid, &[], &m) {
                        return Ok(());
                    }
                } else if let Some(f) = self.forwards.get(a.value) {
                    let (cid, prefix) = (f.channel, f.route.clone());
                    if self.seal_forward(link, cid, &prefix, &m) {
                        if let Some(f) = self.forwards.get_mut(a.value) {
                            f.forwarded += 1;
                            f.forwarded_bytes += m.payload.len() as u64;
                        }
                        self.grant(link, cid);
                        return Ok(());
                    }
                }
            }
        }
        self.up(link, f.len());
        self.push(Event::Message {
            link,
            frame: f.to_vec(),
        });
        Ok(())
    }

    /// A message from `link` for channel `cid` (to its encryptor, or to a relay forwarder
    /// into it): sealed into the channel here, onward by the relay rule
    /// ([`relay::forward_onward`]: `prefix`, then the rest of its onward route), with the link
    /// pushed onto its return route. False: Python handles it (it fragments
    /// what is too large, and reports what cannot go on).
    pub(super) fn seal_forward(
        &mut self,
        link: u64,
        cid: u64,
        prefix: &[(u16, Vec<u8>)],
        m: &route::RoutedMessage<'_>,
    ) -> bool {
        let Some(l) = self.links.get(&link) else {
            return false;
        };
        let prefix = prefix.iter().map(|(t, v)| route::Address {
            transport: *t,
            value: v,
        });
        let Ok(onward) = relay::forward_onward(prefix, &m.onward) else {
            return false; // Python refuses it, saying why
        };
        let mut ret = Vec::with_capacity(m.return_route.len() + 1);
        ret.push(route::Address {
            transport: LOCAL,
            value: &l.name,
        });
        ret.extend_from_slice(&m.return_route);
        let Ok(inner) = route::encode(&onward, &ret, m.payload) else {
            return false;
        };
        let Some(out) = self.channel_link(cid).and_then(|o| self.links.get(&o)) else {
            return false;
        };
        // Too large (Python fragments it), or the way on is congested: Python waits for it to
        // drain, and this link stops being read while Python's queue is full (back-pressure).
        if inner.len() + FORWARD_MARGIN > out.opts.max_frame_len as usize
            || out.out_bytes > HIGH_WATER
        {
            return false;
        }
        if let Some(ch) = self.channels.get_mut(&cid) {
            ch.last_activity = Instant::now();
        }
        self.send_sealed(cid, &[&inner], 0).is_ok()
    }

    /// An inner message of channel `cid` addressed to link `out`: sent on it, the channel
    /// pushed onto its return route (as Python routes it).
    pub(super) fn deliver_to_link(
        &mut self,
        cid: u64,
        out: u64,
        m: &route::RoutedMessage<'_>,
    ) -> bool {
        let Some(ch) = self.channels.get(&cid) else {
            return false;
        };
        let Some(l) = self.links.get(&out) else {
            return false;
        };
        if l.failed.is_some() || l.out_bytes > HIGH_WATER {
            return false; // Python waits for the link to drain (back-pressure)
        }
        let mut ret = Vec::with_capacity(m.return_route.len() + 1);
        ret.push(route::Address {
            transport: LOCAL,
            value: &ch.address,
        });
        ret.extend_from_slice(&m.return_route);
        let Ok(len) = route::encoded_len(&m.onward[1..], &ret, m.payload.len()) else {
            return false;
        };
        if len > l.opts.max_frame_len as usize {
            return false;
        }
        let Ok(header) = frame::header(len) else {
            return false;
        };
        let mut buf = vec![0u8; 4 + len];
        buf[..4].copy_from_slice(&header);
        if route::encode_to_slice(&m.onward[1..], &ret, m.payload, &mut buf[4..]).is_err() {
            return false;
        }
        self.link_send(out, buf);
        true
    }
}
