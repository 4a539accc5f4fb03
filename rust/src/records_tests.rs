//! Sealed records: the format byte by byte, the opener's rules one by one, then properties over
//! any headers, bodies, tampering and delivery order.

use super::*;
use proptest::prelude::*;

const KEY: [u8; 32] = [0x42; 32];
const KEY2: [u8; 32] = [0x24; 32];
const KID: KeyId = [0xa1; KEY_ID_LEN];
const KID2: KeyId = [0xb2; KEY_ID_LEN];
const STREAM: &str = "orders.eu";
const PRODUCER: &str = "I0123456789abcdef0123456789abcdef01234567";

fn sealer(alg: Algorithm, next: u64) -> RecordSealer {
    RecordSealer::new(alg, &KEY, KID, STREAM, PRODUCER, next).unwrap()
}

fn opener(alg: Algorithm) -> RecordOpener {
    let mut o = RecordOpener::new(STREAM).unwrap();
    o.add_key(KID, alg, &KEY, PRODUCER).unwrap();
    o
}

const ALGS: [Algorithm; 2] = [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305];

#[test]
fn the_format_is_as_specified() {
    for alg in ALGS {
        let mut s = sealer(alg, 7);
        let headers: [Header<'_>; 2] = [("content-type", &b"json"[..]), ("trace", &b""[..])];
        let r = s.seal(&headers, b"{}").unwrap();
        assert_eq!(s.next_position(), 8);
        assert_eq!(r[0], VERSION);
        assert_eq!(r[1..17], KID);
        assert_eq!(r[17..25], 7u64.to_be_bytes());
        // Decrypt by hand: the spec's nonce and AAD, through the AEAD adapter alone.
        let mut aad = b"tether-record/1".to_vec();
        aad.extend_from_slice(&u16::try_from(STREAM.len()).unwrap().to_be_bytes());
        aad.extend_from_slice(STREAM.as_bytes());
        aad.push(u8::try_from(PRODUCER.len()).unwrap());
        aad.extend_from_slice(PRODUCER.as_bytes());
        aad.extend_from_slice(&r[..25]);
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&7u64.to_be_bytes());
        let plain = Key::new(alg, &KEY)
            .unwrap()
            .open(&n, &aad, &r[25..])
            .unwrap();
        let mut want = vec![0, 2];
        want.extend_from_slice(&[0, 12]);
        want.extend_from_slice(b"content-type");
        want.extend_from_slice(&[0, 0, 0, 4]);
        want.extend_from_slice(b"json");
        want.extend_from_slice(&[0, 5]);
        want.extend_from_slice(b"trace");
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(b"{}");
        assert_eq!(plain, want);
        assert_eq!(r.len(), want.len() + OVERHEAD);
        assert_eq!(
            RecordSealer::sealed_len(&headers, 2).unwrap(),
            r.len(),
            "sealed_len"
        );
    }
}

#[test]
fn round_trip_and_gap() {
    for alg in ALGS {
        let mut seal = sealer(alg, 0);
        let mut open = opener(alg);
        let one = seal.seal(&[("k", &b"v"[..])], b"one").unwrap();
        let two = seal.seal(&[], b"two").unwrap();
        let three = seal.seal(&[], b"three").unwrap();
        let empty = seal.seal(&[], b"").unwrap();
        let ra = open.open(&one).unwrap();
        assert_eq!((ra.position, ra.gap, ra.body()), (0, 0, &b"one"[..]));
        assert_eq!(ra.headers().collect::<Vec<_>>(), vec![("k", &b"v"[..])]);
        assert_eq!(&*ra.producer, PRODUCER);
        assert_eq!(ra.key_id, KID);
        // b is dropped by the broker: c reports one skipped position.
        let rc = open.open(&three).unwrap();
        assert_eq!((rc.position, rc.gap, rc.body()), (2, 1, &b"three"[..]));
        // b arrives late: refused as reordered, and nothing changes.
        assert_eq!(
            open.open(&two),
            Err(RecordError::Replayed {
                key_id: KID,
                producer: PRODUCER.into(),
                position: 1,
                last: 2
            })
        );
        assert_eq!(open.last_position(PRODUCER), Some(2));
        assert_eq!(open.open(&three).unwrap_err().reason(), Reason::Replayed);
        let rd = open.open(&empty).unwrap();
        assert_eq!((rd.position, rd.gap, rd.body()), (3, 0, &b""[..]));
    }
}

#[test]
fn the_first_record_sets_the_baseline() {
    let mut s = sealer(Algorithm::Aes256Gcm, 1000);
    let mut o = opener(Algorithm::Aes256Gcm);
    assert_eq!(o.open(&s.seal(&[], b"x").unwrap()).unwrap().gap, 0);
    assert_eq!(o.open(&s.seal(&[], b"x").unwrap()).unwrap().gap, 0);
}

#[test]
fn positions_are_tracked_per_producer_across_keys() {
    let alg = Algorithm::Aes256Gcm;
    let mut s1 = sealer(alg, 0);
    let mut s2 = RecordSealer::new(alg, &KEY2, KID2, STREAM, PRODUCER, 5).unwrap();
    let other = "Iffff";
    let mut s3 = RecordSealer::new(alg, &[9; 32], [9; 16], STREAM, other, 0).unwrap();
    let mut o = opener(alg);
    o.add_key(KID2, alg, &KEY2, PRODUCER).unwrap();
    o.add_key([9; 16], alg, &[9; 32], other).unwrap();
    let old = s1.seal(&[], b"old").unwrap();
    assert_eq!(
        o.open(&s2.seal(&[], b"rotated").unwrap()).unwrap().position,
        5
    );
    assert_eq!(o.open(&old).unwrap_err().reason(), Reason::Replayed);
    // Another producer has its own positions.
    assert_eq!(o.open(&s3.seal(&[], b"b").unwrap()).unwrap().gap, 0);
    // A removed key keeps its producer's position.
    assert!(o.remove_key(&KID2));
    assert!(!o.remove_key(&KID2));
    let r = s2.seal(&[], b"x").unwrap();
    assert_eq!(o.open(&r), Err(RecordError::UnknownKey { key_id: KID2 }));
    o.add_key(KID2, alg, &KEY2, PRODUCER).unwrap();
    assert_eq!(o.open(&r).unwrap().gap, 0);
}

#[test]
fn wrong_stream_producer_or_key_is_forged() {
    let alg = Algorithm::Aes256Gcm;
    let r = sealer(alg, 0).seal(&[], b"secret").unwrap();
    let mut other_stream = RecordOpener::new("orders.us").unwrap();
    other_stream.add_key(KID, alg, &KEY, PRODUCER).unwrap();
    assert_eq!(
        other_stream.open(&r),
        Err(RecordError::Forged { key_id: KID })
    );
    let mut other_producer = RecordOpener::new(STREAM).unwrap();
    other_producer.add_key(KID, alg, &KEY, "Imallory").unwrap();
    assert_eq!(
        other_producer.open(&r),
        Err(RecordError::Forged { key_id: KID })
    );
    let mut other_key = RecordOpener::new(STREAM).unwrap();
    other_key.add_key(KID, alg, &KEY2, PRODUCER).unwrap();
    assert_eq!(other_key.open(&r), Err(RecordError::Forged { key_id: KID }));
    let mut other_alg = RecordOpener::new(STREAM).unwrap();
    other_alg
        .add_key(KID, Algorithm::ChaCha20Poly1305, &KEY, PRODUCER)
        .unwrap();
    assert_eq!(other_alg.open(&r), Err(RecordError::Forged { key_id: KID }));
    // None of them changed: the right opener still opens it.
    for o in [other_stream, other_producer, other_key, other_alg] {
        assert_eq!(o.last_position(PRODUCER), None);
    }
    assert!(opener(alg).open(&r).is_ok());
}

#[test]
fn moving_the_key_id_or_position_is_caught() {
    let alg = Algorithm::Aes256Gcm;
    let mut s = sealer(alg, 3);
    let r = s.seal(&[], b"x").unwrap();
    let mut o = opener(alg);
    o.add_key(KID2, alg, &KEY, PRODUCER).unwrap(); // same key under another id
    let mut moved = r.clone();
    moved[1..17].copy_from_slice(&KID2);
    assert_eq!(o.open(&moved), Err(RecordError::Forged { key_id: KID2 }));
    let mut later = r.clone();
    later[24] = 9;
    assert_eq!(o.open(&later), Err(RecordError::Forged { key_id: KID }));
    assert!(o.open(&r).is_ok());
}

#[test]
fn short_long_and_unknown_versions_are_malformed() {
    let mut o = opener(Algorithm::Aes256Gcm);
    for len in 0..OVERHEAD {
        assert_eq!(o.open(&vec![1; len]), Err(RecordError::TooShort { len }));
    }
    let mut r = sealer(Algorithm::Aes256Gcm, 0).seal(&[], b"x").unwrap();
    r[0] = 2;
    assert_eq!(o.open(&r), Err(RecordError::BadVersion { version: 2 }));
    assert_eq!(peek(&r), Err(RecordError::BadVersion { version: 2 }));
    let huge = vec![1u8; MAX_RECORD + 1];
    assert_eq!(
        o.open(&huge),
        Err(RecordError::TooLarge {
            len: MAX_RECORD + 1
        })
    );
    assert_eq!(
        o.open(&huge[..MAX_RECORD]).unwrap_err().reason(),
        Reason::UnknownKey
    );
}

/// Seal a raw envelope as a producer would (to test what a faulty producer can send).
fn seal_raw(alg: Algorithm, position: u64, envelope: &[u8]) -> Vec<u8> {
    let header = header_bytes(&KID, position);
    let mut aad = aad_prefix(STREAM, PRODUCER);
    aad.extend_from_slice(&header);
    let mut r = header.to_vec();
    r.extend_from_slice(
        &Key::new(alg, &KEY)
            .unwrap()
            .seal(&nonce(position), &aad, envelope)
            .unwrap(),
    );
    r
}

#[test]
fn bad_envelopes_are_refused_after_authentication_and_change_nothing() {
    let alg = Algorithm::ChaCha20Poly1305;
    let mut o = opener(alg);
    let cases: [(&[u8], &str); 8] = [
        (&b""[..], "no header count"),
        (&b"\x00"[..], "no header count"),
        (&b"\x00\x41"[..], "more than 64 headers"),
        (
            &b"\x00\x01\x00\x00"[..],
            "a header name is empty or longer than 255 bytes",
        ),
        (
            &b"\x00\x01\x01\x00"[..],
            "a header name is empty or longer than 255 bytes",
        ),
        (
            &b"\x00\x01\x00\x01a\xff\xff\xff\xffabc"[..],
            "a length runs past the end",
        ),
        (
            &b"\x00\x01\x00\x02\xff\xfe\x00\x00\x00\x00"[..],
            "a header name is not UTF-8",
        ),
        (
            &b"\x00\x02\x00\x01a\x00\x00\x00\x00"[..],
            "a length runs past the end",
        ),
    ];
    for (i, (env, what)) in (0u64..).zip(cases) {
        assert_eq!(
            o.open(&seal_raw(alg, i, env)),
            Err(RecordError::BadEnvelope {
                key_id: KID,
                position: i,
                what
            }),
            "{env:?}"
        );
        assert_eq!(o.last_position(PRODUCER), None);
    }
    // Headers with empty values, and exactly 64 of them, are fine.
    let names: Vec<String> = (0..64).map(|i| format!("h{i}")).collect();
    let headers: Vec<Header<'_>> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let r = o
        .open(&seal_raw(
            alg,
            50,
            &encode_envelope(&headers, b"body").unwrap(),
        ))
        .unwrap();
    assert_eq!(r.headers().len(), 64);
    assert_eq!(r.body(), b"body");
    assert_eq!(r.gap, 0);
}

#[test]
fn the_sealer_checks_its_inputs_and_refusals_consume_nothing() {
    assert!(RecordSealer::new(Algorithm::Aes256Gcm, &KEY, KID, "", PRODUCER, 0).is_err());
    assert!(RecordSealer::new(
        Algorithm::Aes256Gcm,
        &KEY,
        KID,
        &"s".repeat(256),
        PRODUCER,
        0
    )
    .is_err());
    assert!(RecordSealer::new(
        Algorithm::Aes256Gcm,
        &KEY,
        KID,
        "ü".repeat(127).as_str(),
        PRODUCER,
        0
    )
    .is_ok());
    assert!(RecordSealer::new(Algorithm::Aes256Gcm, &KEY, KID, STREAM, "", 0).is_err());
    assert!(RecordSealer::new(Algorithm::Aes256Gcm, &KEY, KID, STREAM, "I é", 0).is_err());
    assert!(
        RecordSealer::new(Algorithm::Aes256Gcm, &KEY, KID, STREAM, &"I".repeat(256), 0).is_err()
    );
    assert!(RecordSealer::new(Algorithm::Aes256Gcm, &KEY[..16], KID, STREAM, PRODUCER, 0).is_err());
    assert!(RecordOpener::new("").is_err());

    let mut s = sealer(Algorithm::Aes256Gcm, 0);
    let long_name = "n".repeat(256);
    let too_many: Vec<Header<'_>> = vec![("a", &b""[..]); MAX_HEADERS + 1];
    assert!(s.seal(&[("", &b"v"[..])], b"").is_err());
    assert!(s.seal(&[(long_name.as_str(), &b"v"[..])], b"").is_err());
    assert!(s.seal(&too_many, b"").is_err());
    assert!(s.seal(&[], &vec![0; MAX_ENVELOPE - 1]).is_err());
    let big = s.seal(&[], &vec![0; MAX_ENVELOPE - 2]).unwrap();
    assert_eq!(big.len(), MAX_RECORD);
    assert_eq!(s.next_position(), 1);
    // A batch with one bad record seals none of them.
    let batch: Vec<(Vec<Header<'_>>, &[u8])> = vec![
        (vec![], &b"a"[..]),
        (vec![("", &b""[..])], &b"b"[..]),
        (vec![], &b"c"[..]),
    ];
    assert!(s.seal_batch(&batch).is_err());
    assert_eq!(s.next_position(), 1);
    let mut o = opener(Algorithm::Aes256Gcm);
    assert_eq!(o.open(&big).unwrap().body().len(), MAX_ENVELOPE - 2);
}

#[test]
fn the_last_position_is_never_used() {
    let mut s = sealer(Algorithm::Aes256Gcm, u64::MAX - 2);
    let batch: Vec<(Vec<Header<'_>>, &[u8])> = vec![(vec![], &b"a"[..]); 3];
    assert_eq!(s.seal_batch(&batch), Err(Error::NonceExhausted));
    assert_eq!(s.seal_batch(&batch[..2]).unwrap().len(), 2);
    assert_eq!(s.next_position(), u64::MAX);
    assert_eq!(s.seal(&[], b""), Err(Error::NonceExhausted));
}

#[test]
fn batches_match_single_seals() {
    let mut a = sealer(Algorithm::Aes256Gcm, 10);
    let mut b = sealer(Algorithm::Aes256Gcm, 10);
    let batch: Vec<(Vec<Header<'_>>, Vec<u8>)> = (0..20u8)
        .map(|i| (vec![("i", &b"x"[..])], vec![i; usize::from(i)]))
        .collect();
    let sealed = a.seal_batch(&batch).unwrap();
    for ((h, body), r) in batch.iter().zip(&sealed) {
        assert_eq!(&b.seal(h, body).unwrap(), r);
    }
    let mut o = opener(Algorithm::Aes256Gcm);
    for (i, r) in sealed.iter().enumerate() {
        let r = o.open(r).unwrap();
        assert_eq!(r.position, 10 + u64::try_from(i).unwrap());
        assert_eq!(r.body(), &batch[i].1[..]);
    }
}

#[test]
fn sealing_into_given_buffers_matches_and_checks_them() {
    let batch: Vec<(Vec<Header<'_>>, Vec<u8>)> = (0..8u8)
        .map(|i| (vec![("n", &b"v"[..])], vec![i; 100 * usize::from(i)]))
        .collect();
    let mut a = sealer(Algorithm::Aes256Gcm, 5);
    let mut b = sealer(Algorithm::Aes256Gcm, 5);
    let lens = a.batch_lens(&batch).unwrap();
    // Buffers full of junk: every byte is written.
    let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0xA5; n]).collect();
    {
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
        a.seal_batch_to(&batch, &mut outs).unwrap();
    }
    assert_eq!(bufs, b.seal_batch(&batch).unwrap());
    assert_eq!(a.next_position(), 13);

    // A missing buffer, or one of the wrong size: refused, nothing sealed, no position used.
    let mut short: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0; n]).collect();
    short[3].pop();
    let mut outs: Vec<&mut [u8]> = short.iter_mut().map(Vec::as_mut_slice).collect();
    assert!(matches!(
        a.seal_batch_to(&batch, &mut outs),
        Err(crate::error::Error::InvalidArgument(_))
    ));
    assert!(matches!(
        a.seal_batch_to(&batch, &mut outs[..7]),
        Err(crate::error::Error::InvalidArgument(_))
    ));
    assert_eq!(a.next_position(), 13);
    assert!(short.iter().all(|b| b.iter().all(|&x| x == 0)));
}

#[test]
fn opening_into_one_buffer_skips_refusals_cleanly() {
    let alg = Algorithm::Aes256Gcm;
    let mut s = sealer(alg, 0);
    let mut records: Vec<Vec<u8>> = (0..6u8)
        .map(|i| s.seal(&[("k", &[i][..])], &[i; 50]).unwrap())
        .collect();
    let last = records.len() - 1;
    records[2][30] ^= 1; // forged
    records.push(records[1].clone()); // replayed
    records.push(vec![1, 2, 3]); // malformed
    records.swap(4, last); // out of order: 5 before 4, so 4 is a replay
    let mut buf = b"kept".to_vec();
    let mut o = opener(alg);
    let out = o.open_batch_into(&records, &mut buf);
    assert_eq!(&buf[..4], b"kept");
    let mut reference = opener(alg);
    for (r, rec) in out.iter().zip(&records) {
        match (r, reference.open(rec)) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.body(&buf), b.body());
                assert_eq!(
                    a.headers(&buf).collect::<Vec<_>>(),
                    b.headers().collect::<Vec<_>>()
                );
                assert_eq!((a.position, a.gap), (b.position, b.gap));
            }
            (Err(a), Err(b)) => assert_eq!(a, &b),
            (a, b) => panic!("{a:?} against {b:?}"),
        }
    }
    let opened = out.iter().filter(|r| r.is_ok()).count();
    assert_eq!(opened, 4);
    // Only the opened envelopes were appended (refusals left nothing behind).
    assert_eq!(buf.len(), 4 + opened * (2 + 2 + 1 + 4 + 1 + 50));
}

#[test]
fn secrets_stay_out_of_debug_and_errors() {
    let s = sealer(Algorithm::Aes256Gcm, 0);
    let o = opener(Algorithm::Aes256Gcm);
    for text in [format!("{s:?}"), format!("{o:?}")] {
        assert!(!text.contains("66, 66"), "{text}");
        assert!(!text.to_lowercase().contains("4242"), "{text}");
    }
    let e = RecordError::UnknownKey { key_id: KID };
    assert!(e.to_string().contains(&"a1".repeat(16)));
}

#[test]
fn record_header_peek() {
    let r = sealer(Algorithm::Aes256Gcm, 77).seal(&[], b"").unwrap();
    assert_eq!(
        peek(&r),
        Ok(RecordHeader {
            key_id: KID,
            position: 77
        })
    );
}

fn headers_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec(
        (
            "[a-zA-Z0-9é\\-]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..40),
        ),
        0..6,
    )
}

fn borrow(h: &[(String, Vec<u8>)]) -> Vec<Header<'_>> {
    h.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect()
}

proptest! {
    #[test]
    fn any_headers_and_body_round_trip(
        headers in headers_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        chacha in any::<bool>(),
        start in 0u64..u64::MAX - 1,
    ) {
        let alg = if chacha { Algorithm::ChaCha20Poly1305 } else { Algorithm::Aes256Gcm };
        let h = borrow(&headers);
        let r = sealer(alg, start).seal(&h, &body).unwrap();
        prop_assert_eq!(r.len(), RecordSealer::sealed_len(&h, body.len()).unwrap());
        let opened = opener(alg).open(&r).unwrap();
        prop_assert_eq!(opened.headers().collect::<Vec<_>>(), h.clone());
        prop_assert_eq!(opened.body(), &body[..]);
        prop_assert_eq!(opened.position, start);
        let env = encode_envelope(&h, &body).unwrap();
        prop_assert_eq!(opened.envelope_bytes(), &env[..]);
        prop_assert_eq!(decode_envelope(&env).unwrap(), Envelope { headers: h, body: &body });
    }

    #[test]
    fn any_single_byte_change_is_refused_and_changes_nothing(
        headers in headers_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let alg = Algorithm::Aes256Gcm;
        let mut s = sealer(alg, 5);
        let mut o = opener(alg);
        o.add_key(KID2, alg, &KEY, PRODUCER).unwrap(); // a moved key id must still fail
        let first = s.seal(&[], b"first").unwrap();
        o.open(&first).unwrap();
        let r = s.seal(&borrow(&headers), &body).unwrap();
        let i = at.index(r.len());
        let mut bad = r.clone();
        bad[i] ^= flip;
        let e = o.open(&bad).unwrap_err();
        let want = if i == 0 { Reason::Malformed }
            else if i <= KEY_ID_LEN && bad[1..=KEY_ID_LEN] != KID2 { Reason::UnknownKey }
            else { Reason::Forged };
        prop_assert_eq!(e.reason(), want);
        prop_assert_eq!(o.last_position(PRODUCER), Some(5));
        prop_assert_eq!(o.open(&r).unwrap().gap, 0);
    }

    #[test]
    fn truncated_or_extended_records_are_refused(
        body in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8),
    ) {
        let alg = Algorithm::ChaCha20Poly1305;
        let r = sealer(alg, 0).seal(&[("h", &b"v"[..])], &body).unwrap();
        let mut o = opener(alg);
        let n = cut.index(r.len());
        let e = o.open(&r[..n]).unwrap_err();
        prop_assert!(matches!(e.reason(), Reason::Malformed | Reason::Forged), "{e:?}");
        let mut longer = r.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(o.open(&longer).unwrap_err().reason(), Reason::Forged);
        prop_assert!(o.open(&r).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut o = opener(Algorithm::Aes256Gcm);
        prop_assert!(o.open(&data).is_err());
        let _ = decode_envelope(&data);
    }

    /// Any delivery order (with drops and duplicates): exactly the records past the highest one
    /// opened so far open, and the gaps add up.
    #[test]
    fn any_delivery_order_matches_the_model(
        order in proptest::collection::vec(0usize..30, 0..60),
    ) {
        let alg = Algorithm::Aes256Gcm;
        let mut s = sealer(alg, 100);
        let records: Vec<Vec<u8>> = (0..30).map(|i: u8| s.seal(&[], &[i]).unwrap()).collect();
        let mut o = opener(alg);
        let mut last: Option<u64> = None;
        for i in order {
            let p = 100 + u64::try_from(i).unwrap();
            match o.open(&records[i]) {
                Ok(r) => {
                    prop_assert!(!matches!(last, Some(l) if p <= l));
                    prop_assert_eq!(r.gap, last.map_or(0, |l| p - l - 1));
                    prop_assert_eq!(r.body(), &[u8::try_from(i).unwrap()][..]);
                    last = Some(p);
                }
                Err(RecordError::Replayed { position, last: l, .. }) => {
                    prop_assert_eq!(position, p);
                    prop_assert_eq!(Some(l), last);
                    prop_assert!(p <= l);
                }
                Err(e) => prop_assert!(false, "{e:?}"),
            }
            prop_assert_eq!(o.last_position(PRODUCER), last);
        }
    }
}
