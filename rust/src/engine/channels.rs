//! Secure channels in the data plane: opening DATA (with reassembly and nesting), routing what
//! comes out, and sealing whole messages onto a channel's link or into its outer channel.

use super::{lock, Event, State, LOCAL, MAX_NESTING, STEP_DATA};
use crate::channel::ChannelCipher;
use crate::frame;
use crate::portal::{charge, KIND_DATA, MAX_DATA, T_OPEN};
use crate::reassembly::{Fragment, FIRST, LAST};
use crate::route;
use std::time::Instant;

impl State {
    pub(super) fn decrypt(&mut self, link: u64, cid: u64, body: &[u8], depth: usize) {
        let Some(ch) = self.channels.get_mut(&cid) else {
            return;
        };
        let len = match ChannelCipher::opened_len(body) {
            Ok(n) => n,
            Err(e) => return self.refuse(cid, e.to_string()),
        };
        let mut plain = std::mem::take(&mut self.plain_buf);
        plain.clear();
        plain.resize(len, 0);
        let opened = lock(&ch.cipher).open_to_ad(&[STEP_DATA], body, &mut plain);
        let nonce = match opened {
            Ok(n) => n,
            Err(e) => {
                self.plain_buf = plain;
                return self.refuse(cid, e.to_string());
            }
        };
        ch.last_activity = Instant::now();
        ch.last_rx_link = Some(link);
        if plain.first().is_some_and(|f| f & FIRST == 0 && *f <= LAST)
            && !ch.reassembler.gathering()
        {
            // A continuation of a message whose start Python opened (the channel was
            // registered while it arrived): Python joins it.
            self.up(link, plain.len());
            self.push(Event::Plain {
                link,
                channel: cid,
                plain: plain.clone(),
                nonce,
            });
            self.plain_buf = plain;
            return;
        }
        match ch.reassembler.push(&plain, nonce) {
            Ok(Fragment::Whole(whole)) => self.inner(link, cid, whole, depth),
            Ok(Fragment::Joined(whole)) => self.inner(link, cid, &whole, depth),
            Err(e) if e.refuses() => self.refuse(cid, e.to_string()),
            // More to come; or a lost part (its message was counted where the part was lost).
            Ok(Fragment::More) | Err(_) => {}
        }
        self.plain_buf = plain;
    }

    /// A whole inner message from channel `cid`.
    pub(super) fn inner(&mut self, link: u64, cid: u64, whole: &[u8], depth: usize) {
        let m = match route::decode(whole) {
            Ok(m) => m,
            Err(e) => return self.refuse(cid, format!("malformed inner message: {e}")),
        };
        if let Some(a) = m.onward.first() {
            if a.transport == LOCAL && depth < MAX_NESTING {
                // A channel inside this one: open it here too.
                if m.payload.len() >= 2 && m.payload[..2] == [KIND_DATA, STEP_DATA] {
                    if let Some(&inner_cid) = self.decryptors.get(a.value) {
                        self.decrypt(link, inner_cid, &m.payload[2..], depth + 1);
                        return;
                    }
                }
                // Back out by one of the engine's links (a relay's claimer answering a client
                // whose messages it forwarded: only links granted to this channel).
                if let Some(&out) = self.link_names.get(a.value) {
                    if self.granted(out, cid) && self.deliver_to_link(cid, out, &m) {
                        return;
                    }
                }
            }
        }
        if m.onward.len() == 1 && m.onward[0].transport == LOCAL {
            let addr = m.onward[0].value.to_vec();
            let mut key = (cid, addr, None);
            let mut sid = self.keys.get(&key).copied();
            if sid.is_none() {
                let onward_len: usize =
                    1 + m.onward.iter().map(|a| 3 + a.value.len()).sum::<usize>();
                let start = 1 + onward_len;
                let end = whole.len() - 4 - m.payload.len();
                key.2 = Some(whole[start..end].to_vec());
                sid = self.keys.get(&key).copied();
            }
            if sid.is_none()
                && m.payload.len() >= 2
                && m.payload[0] == KIND_DATA
                && m.payload[1] == T_OPEN
            {
                if let Some(&oid) = self.outlet_names.get(&key.1) {
                    if let Some(ret) = key.2.clone() {
                        if self.outlet_open(oid, cid, ret) {
                            return;
                        }
                    }
                }
            }
            if let Some(sid) = sid {
                let payload = m.payload;
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if !s.synced {
                        s.held_bytes += payload.len();
                        if s.held_bytes as u64 > s.flow.window() + 2 * charge(MAX_DATA) {
                            self.finish(
                                sid,
                                "protocol error: the peer overran its flow-control window",
                                true,
                                true,
                            );
                        } else {
                            s.held.push(payload.to_vec());
                        }
                        return;
                    }
                }
                self.deliver(sid, payload);
                return;
            }
        }
        self.up(link, whole.len());
        self.push(Event::Inner {
            link,
            channel: cid,
            message: whole.to_vec(),
        });
    }

    /// The link a channel's messages leave by: its own first hop, or its outer channel's.
    pub(super) fn channel_link(&self, cid: u64) -> Option<u64> {
        let mut cid = cid;
        for _ in 0..=MAX_NESTING {
            let ch = self.channels.get(&cid)?;
            match (ch.link, ch.via) {
                (Some(link), _) => return Some(link),
                (None, Some(outer)) => cid = outer,
                (None, None) => return None,
            }
        }
        None
    }

    /// Seal the inner message `parts` (concatenated) as one whole DATA message of channel
    /// `cid` and send it: as a frame on the channel's link, or inside its outer channel.
    pub(super) fn send_sealed(
        &mut self,
        cid: u64,
        parts: &[&[u8]],
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err("channels nested too deeply".into());
        }
        let ch = self.channels.get(&cid).ok_or("the secure channel closed")?;
        let flag = [FIRST | LAST];
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&flag);
        all.extend_from_slice(parts);
        let plain: usize = all.iter().map(|p| p.len()).sum();
        let payload_len = 2 + ChannelCipher::sealed_len(plain);
        let message_len = ch.frame_header.len() + 4 + payload_len;
        let payload_hdr = frame::header(payload_len).map_err(|e| e.to_string())?;
        let (link, via) = (ch.link, ch.via);
        // A frame for the link (its 4-byte length first), or the inner message for the outer
        // channel.
        let lead = if link.is_some() { 4 } else { 0 };
        let mut buf = Vec::with_capacity(lead + message_len);
        if link.is_some() {
            let frame_hdr = frame::header(message_len).map_err(|e| e.to_string())?;
            buf.extend_from_slice(&frame_hdr);
        }
        buf.extend_from_slice(&ch.frame_header);
        buf.extend_from_slice(&payload_hdr);
        buf.extend_from_slice(&[KIND_DATA, STEP_DATA]);
        let pos = buf.len();
        buf.resize(lead + message_len, 0);
        lock(&ch.cipher)
            .seal_parts_to_ad(&[STEP_DATA], &all, &mut buf[pos..])
            .map_err(|e| e.to_string())?;
        match (link, via) {
            (Some(link), _) => {
                if !matches!(self.links.get(&link), Some(l) if l.failed.is_none()) {
                    return Err("the secure channel's connection closed".into());
                }
                self.link_send(link, buf);
                Ok(())
            }
            (None, Some(outer)) => self.send_sealed(outer, &[&buf], depth + 1),
            (None, None) => Err("the secure channel has no connection".into()),
        }
    }
}
