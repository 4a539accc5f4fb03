//! A record's envelope: its plaintext, the application's headers and the body
//! (`records.rs` has the format): its length, checked before anything is allocated; writing
//! it; and reading it back without copying.

use std::ops::Range;

use super::{Header, MAX_ENVELOPE, MAX_HEADERS, MAX_HEADER_NAME};
use crate::error::Error;

/// The envelope's length for these headers and body, or why they cannot be sealed. Checked
/// before anything is allocated.
pub fn envelope_len(headers: &[Header<'_>], body_len: usize) -> Result<usize, Error> {
    if headers.len() > MAX_HEADERS {
        return Err(Error::InvalidArgument(format!(
            "a record carries at most {MAX_HEADERS} headers, got {}",
            headers.len()
        )));
    }
    let mut len: usize = 2;
    for (name, value) in headers {
        if name.is_empty() || name.len() > MAX_HEADER_NAME {
            return Err(Error::InvalidArgument(format!(
                "a header name is 1 to {MAX_HEADER_NAME} bytes of UTF-8, got {} bytes",
                name.len()
            )));
        }
        if u32::try_from(value.len()).is_err() || value.len() > MAX_ENVELOPE {
            return Err(too_large(value.len()));
        }
        len = len.saturating_add(2 + name.len() + 4 + value.len());
    }
    len = len.saturating_add(body_len);
    if len > MAX_ENVELOPE {
        return Err(too_large(len));
    }
    Ok(len)
}

fn too_large(len: usize) -> Error {
    Error::InvalidArgument(format!(
        "a record's headers and body take at most {MAX_ENVELOPE} bytes, got {len}; split the \
         data into several records"
    ))
}

/// Write the envelope of `headers` and `body` over `out`, which is exactly [`envelope_len`]
/// bytes (lengths already checked by it). Every byte of `out` is written.
pub(super) fn write_envelope(headers: &[Header<'_>], body: &[u8], out: &mut [u8]) {
    let mut at = 0;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    // Casts below are within the limits checked by `envelope_len`.
    put(&u16::try_from(headers.len()).unwrap_or(0).to_be_bytes());
    for (name, value) in headers {
        put(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
        put(name.as_bytes());
        put(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
        put(value);
    }
    put(body);
    debug_assert_eq!(at, out.len());
}

/// Encode an envelope (the plaintext of a record).
pub fn encode_envelope(headers: &[Header<'_>], body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; envelope_len(headers, body.len())?];
    write_envelope(headers, body, &mut out);
    Ok(out)
}

/// A decoded envelope, borrowing from the plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub headers: Vec<Header<'a>>,
    pub body: &'a [u8],
}

/// Where each header's name and value, and the body, lie in a plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) headers: Vec<(Range<usize>, Range<usize>)>,
    pub(super) body: usize,
}

fn take(plain: &[u8], at: &mut usize, n: usize) -> Result<Range<usize>, &'static str> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= plain.len())
        .ok_or("a length runs past the end")?;
    let r = *at..end;
    *at = end;
    Ok(r)
}

pub(super) fn layout(plain: &[u8]) -> Result<Layout, &'static str> {
    let mut at = 0;
    let r = take(plain, &mut at, 2).map_err(|_| "no header count")?;
    let count = usize::from(u16::from_be_bytes([plain[r.start], plain[r.start + 1]]));
    if count > MAX_HEADERS {
        return Err("more than 64 headers");
    }
    // Bounded by MAX_HEADERS, whatever the input claims.
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let r = take(plain, &mut at, 2)?;
        let name_len = usize::from(u16::from_be_bytes([plain[r.start], plain[r.start + 1]]));
        if name_len == 0 || name_len > MAX_HEADER_NAME {
            return Err("a header name is empty or longer than 255 bytes");
        }
        let name = take(plain, &mut at, name_len)?;
        if std::str::from_utf8(&plain[name.clone()]).is_err() {
            return Err("a header name is not UTF-8");
        }
        let r = take(plain, &mut at, 4)?;
        let value_len = u32::from_be_bytes([
            plain[r.start],
            plain[r.start + 1],
            plain[r.start + 2],
            plain[r.start + 3],
        ]);
        let value = take(
            plain,
            &mut at,
            usize::try_from(value_len).unwrap_or(usize::MAX),
        )?;
        headers.push((name, value));
    }
    Ok(Layout { headers, body: at })
}

pub(super) fn name_at<'a>(plain: &'a [u8], r: &Range<usize>) -> &'a str {
    // Checked to be UTF-8 by `layout`.
    std::str::from_utf8(&plain[r.clone()]).unwrap_or_default()
}

/// Decode an envelope without copying; refuses counts over the limit and lengths that run past
/// its end (nothing is allocated from a claimed length).
pub fn decode_envelope(plain: &[u8]) -> Result<Envelope<'_>, &'static str> {
    let l = layout(plain)?;
    Ok(Envelope {
        headers: l
            .headers
            .iter()
            .map(|(n, v)| (name_at(plain, n), &plain[v.clone()]))
            .collect(),
        body: &plain[l.body..],
    })
}
