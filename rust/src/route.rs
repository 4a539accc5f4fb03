//! The routed-message encoding, version 1 (wire format: `docs/wire-format.md`, "Routed messages").
//!
//! ```text
//! message = version:u8(=1) onward:route return:route payload_len:u32be payload
//! route   = count:u8 (0..=MAX_HOPS) address{count}
//! address = transport:u16be len:u8 (1..=255) value:len bytes
//! ```
//!
//! Decoding borrows: addresses and payload are slices of the input. Every count and length is
//! checked against what remains before it is used, and the message must end exactly where the
//! payload ends — truncated and trailing bytes are both errors.

use crate::error::{Error, Result};

pub const VERSION: u8 = 1;
/// Most addresses in one route. Source routes are short; this bounds what a peer can make a
/// node allocate when it decodes one.
pub const MAX_HOPS: usize = 64;
pub const MAX_ADDRESS_LEN: usize = 255;

/// An address: a transport type (0 = local worker, 1 = TCP, …; see the docs) and opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Address<'a> {
    pub transport: u16,
    pub value: &'a [u8],
}

/// A decoded message, borrowing from the bytes it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedMessage<'a> {
    pub onward: Vec<Address<'a>>,
    pub return_route: Vec<Address<'a>>,
    pub payload: &'a [u8],
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(Error::Route(format!(
                "truncated: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn route(&mut self, which: &str) -> Result<Vec<Address<'a>>> {
        let count = self.take(1, which)?[0] as usize;
        if count > MAX_HOPS {
            return Err(Error::Route(format!(
                "{which} has {count} addresses, the limit is {MAX_HOPS}"
            )));
        }
        let mut route = Vec::with_capacity(count);
        for _ in 0..count {
            let t = self.take(2, "address type")?;
            let transport = u16::from_be_bytes([t[0], t[1]]);
            let len = self.take(1, "address length")?[0] as usize;
            if len == 0 {
                return Err(Error::Route(format!(
                    "empty address in {which} at offset {}",
                    self.pos - 1
                )));
            }
            let value = self.take(len, "address")?;
            route.push(Address { transport, value });
        }
        Ok(route)
    }
}

/// Decode one routed message. The whole of `buf` must be exactly one message.
pub fn decode(buf: &[u8]) -> Result<RoutedMessage<'_>> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.take(1, "version")?[0];
    if version != VERSION {
        return Err(Error::Route(format!(
            "unsupported version {version} (this node speaks version {VERSION}); upgrade the older side"
        )));
    }
    let onward = r.route("onward route")?;
    let return_route = r.route("return route")?;
    let l = r.take(4, "payload length")?;
    let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
    let payload = r.take(len, "payload")?;
    if r.pos != buf.len() {
        return Err(Error::Route(format!(
            "{} trailing bytes after the payload",
            buf.len() - r.pos
        )));
    }
    Ok(RoutedMessage {
        onward,
        return_route,
        payload,
    })
}

fn check_route(route: &[Address<'_>], which: &str) -> Result<usize> {
    if route.len() > MAX_HOPS {
        return Err(Error::Route(format!(
            "{which} has {} addresses, the limit is {MAX_HOPS}",
            route.len()
        )));
    }
    let mut len = 1;
    for a in route {
        if a.value.is_empty() || a.value.len() > MAX_ADDRESS_LEN {
            return Err(Error::Route(format!(
                "an address in the {which} is {} bytes; it must be 1..={MAX_ADDRESS_LEN}",
                a.value.len()
            )));
        }
        len += 3 + a.value.len();
    }
    Ok(len)
}

/// The exact encoded size, after checking every limit.
pub fn encoded_len(
    onward: &[Address<'_>],
    return_route: &[Address<'_>],
    payload_len: usize,
) -> Result<usize> {
    if u32::try_from(payload_len).is_err() {
        return Err(Error::Route(format!(
            "payload of {payload_len} bytes is too large to encode"
        )));
    }
    Ok(1 + check_route(onward, "onward route")?
        + check_route(return_route, "return route")?
        + 4
        + payload_len)
}

fn put_route(route: &[Address<'_>], out: &mut [u8], mut pos: usize) -> usize {
    // Counts and lengths were checked by `encoded_len`.
    out[pos] = u8::try_from(route.len()).unwrap_or(u8::MAX);
    pos += 1;
    for a in route {
        out[pos..pos + 2].copy_from_slice(&a.transport.to_be_bytes());
        out[pos + 2] = u8::try_from(a.value.len()).unwrap_or(u8::MAX);
        out[pos + 3..pos + 3 + a.value.len()].copy_from_slice(a.value);
        pos += 3 + a.value.len();
    }
    pos
}

/// Encode into `out`, which must be exactly `encoded_len(..)` bytes.
pub fn encode_to_slice(
    onward: &[Address<'_>],
    return_route: &[Address<'_>],
    payload: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let len = encoded_len(onward, return_route, payload.len())?;
    if out.len() != len {
        return Err(Error::InvalidArgument(
            "output buffer has the wrong size".into(),
        ));
    }
    out[0] = VERSION;
    let pos = put_route(onward, out, 1);
    let pos = put_route(return_route, out, pos);
    // encoded_len checked that the payload length fits in u32.
    out[pos..pos + 4].copy_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out[pos + 4..].copy_from_slice(payload);
    Ok(())
}

/// Encode into a new vector.
pub fn encode(
    onward: &[Address<'_>],
    return_route: &[Address<'_>],
    payload: &[u8],
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; encoded_len(onward, return_route, payload.len())?];
    encode_to_slice(onward, return_route, payload, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(t: u16, v: &[u8]) -> Address<'_> {
        Address {
            transport: t,
            value: v,
        }
    }

    #[test]
    fn round_trip() {
        let onward = [a(1, b"127.0.0.1:4000"), a(0, b"echo")];
        let ret = [a(0, b"app")];
        let enc = encode(&onward, &ret, b"hello").unwrap();
        let m = decode(&enc).unwrap();
        assert_eq!(m.onward, onward);
        assert_eq!(m.return_route, ret);
        assert_eq!(m.payload, b"hello");
        // Zero-copy: the payload is a slice of the input.
        assert_eq!(m.payload.as_ptr(), enc[enc.len() - 5..].as_ptr());
    }

    #[test]
    fn known_encoding() {
        let enc = encode(&[a(0, b"e")], &[], b"hi").unwrap();
        assert_eq!(enc, vec![1, 1, 0, 0, 1, b'e', 0, 0, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn every_truncation_and_any_extension_is_rejected() {
        let enc = encode(&[a(1, b"x:1"), a(0, b"echo")], &[a(0, b"r")], b"payload").unwrap();
        for n in 0..enc.len() {
            assert!(
                matches!(decode(&enc[..n]), Err(Error::Route(_))),
                "prefix {n} accepted"
            );
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(Error::Route(m)) if m.contains("trailing")));
    }

    #[test]
    fn bad_version_count_and_empty_address() {
        assert!(
            matches!(decode(&[2, 0, 0, 0, 0, 0, 0]), Err(Error::Route(m)) if m.contains("version"))
        );
        assert!(matches!(decode(&[1, 65]), Err(Error::Route(m)) if m.contains("limit")));
        assert!(matches!(decode(&[1, 1, 0, 0, 0]), Err(Error::Route(m)) if m.contains("empty")));
    }

    #[test]
    fn encode_checks_limits() {
        let big = [0u8; 256];
        assert!(encode(&[a(0, &big)], &[], b"").is_err());
        assert!(encode(&[a(0, b"")], &[], b"").is_err());
        let many = vec![a(0, b"x"); MAX_HOPS + 1];
        assert!(encode(&many, &[], b"").is_err());
        assert!(encode(&many[..MAX_HOPS], &[], b"").is_ok());
    }
}
