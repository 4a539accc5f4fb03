use super::*;
use proptest::prelude::*;

fn ops(d: &mut Decoder) -> Vec<ServerOp> {
    let mut out = Vec::new();
    while let Some(op) = d.next_op().unwrap() {
        out.push(op);
    }
    out
}

fn msg(subject: &str, sid: u64, reply: Option<&str>, payload: &[u8]) -> ServerOp {
    ServerOp::Msg {
        subject: subject.into(),
        sid,
        reply: reply.map(Into::into),
        headers: None,
        payload: payload.to_vec(),
    }
}

#[test]
fn client_operations_are_encoded_as_the_protocol_says() {
    let mut out = Vec::new();
    connect(&mut out, r#"{"verbose":false}"#);
    publish(&mut out, "tether.a.b", None, b"hi", 10).unwrap();
    publish(&mut out, "x", Some("_INBOX.1"), b"", 10).unwrap();
    subscribe(&mut out, "tether.a.*", None, 7).unwrap();
    subscribe(&mut out, "work.>", Some("q"), 8).unwrap();
    unsubscribe(&mut out, 7);
    out.extend_from_slice(PING);
    out.extend_from_slice(PONG);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "CONNECT {\"verbose\":false}\r\nPUB tether.a.b 2\r\nhi\r\nPUB x _INBOX.1 0\r\n\r\n\
         SUB tether.a.* 7\r\nSUB work.> q 8\r\nUNSUB 7\r\nPING\r\nPONG\r\n"
    );
}

#[test]
fn subjects_are_checked_before_anything_is_written() {
    for bad in [
        "", "a..b", ".a", "a.", "a b", "a\tb", "a.*", "a.>", "a*", "é",
    ] {
        let mut out = Vec::new();
        assert!(
            matches!(
                publish(&mut out, bad, None, b"x", 10),
                Err(NatsError::BadSubject(_))
            ),
            "{bad:?}"
        );
        assert!(out.is_empty());
    }
    for bad in ["a.>.b", "a*.b", "a.b>", ""] {
        assert!(subscribe(&mut Vec::new(), bad, None, 1).is_err(), "{bad:?}");
    }
    assert!(check_subject(&"a".repeat(256), false).is_err());
    assert!(check_subject(&"a".repeat(255), false).is_ok());
    let mut out = Vec::new();
    assert_eq!(
        publish(&mut out, "a", None, &[0; 11], 10),
        Err(NatsError::TooLarge { len: 11, max: 10 })
    );
    assert!(out.is_empty());
}

#[test]
fn server_operations_are_decoded() {
    let mut d = Decoder::new(1024);
    d.feed(
        b"INFO {\"server_id\":\"x\",\"max_payload\":1024} \r\nPING\r\npong\r\n+OK\r\n\
          -ERR 'Authorization Violation'\r\nMSG tether.a.b 3 5\r\nhello\r\n\
          MSG a 1 reply.to 0\r\n\r\nHMSG a 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    );
    assert_eq!(
        ops(&mut d),
        vec![
            ServerOp::Info("{\"server_id\":\"x\",\"max_payload\":1024}".into()),
            ServerOp::Ping,
            ServerOp::Pong,
            ServerOp::Ok,
            ServerOp::Err("Authorization Violation".into()),
            msg("tether.a.b", 3, None, b"hello"),
            msg("a", 1, Some("reply.to"), b""),
            ServerOp::Msg {
                subject: "a".into(),
                sid: 2,
                reply: None,
                headers: Some(b"NATS/1.0\r\n\r\n".to_vec()),
                payload: b"hi".to_vec(),
            },
        ]
    );
    assert_eq!(d.buffered(), 0);
}

#[test]
fn a_message_waits_for_its_bytes() {
    let mut d = Decoder::new(1024);
    d.feed(b"MSG a 1 5\r\nhel");
    assert_eq!(d.next_op(), Ok(None));
    d.feed(b"lo\r");
    assert_eq!(d.next_op(), Ok(None));
    d.feed(b"\n");
    assert_eq!(d.next_op(), Ok(Some(msg("a", 1, None, b"hello"))));
}

#[test]
fn broken_streams_are_refused_for_good() {
    let cases: Vec<(&[u8], &str)> = vec![
        (b"HELLO\r\n", "unknown operation"),
        (b"MSG a 1\r\n", "wrong number of fields"),
        (b"MSG a 1 2 3 4\r\n", "wrong number of fields"),
        (b"MSG a x 1\r\nz\r\n", "not a number"),
        (b"MSG a 1 -1\r\n", "not a number"),
        (b"MSG a 1 99999999999999999999\r\n", "not a number"),
        (b"MSG a..b 1 1\r\nz\r\n", "not a subject"),
        (b"MSG a 1 2\r\nabcd", "does not end where"),
        (b"HMSG a 1 5 3\r\n", "header length over"),
        (b"MSG a 1 2000\r\n", "over max_payload"),
    ];
    for (input, what) in cases {
        let mut d = Decoder::new(1024);
        d.feed(input);
        let e = d.next_op().unwrap_err();
        assert!(e.to_string().contains(what), "{input:?}: {e}");
        d.feed(b"PING\r\n");
        assert_eq!(d.next_op(), Err(e), "a broken decoder stays broken");
        assert_eq!(d.buffered(), 0, "and keeps nothing");
    }
}

#[test]
fn a_long_control_line_is_refused_before_its_end_arrives() {
    let mut d = Decoder::new(1024);
    d.feed(b"INFO ");
    d.feed(&[b'x'; MAX_CONTROL_LINE]);
    assert!(d
        .next_op()
        .unwrap_err()
        .to_string()
        .contains("control line longer"));
    // Exactly at the limit is fine.
    let mut d = Decoder::new(1024);
    d.feed(b"INFO ");
    d.feed(&[b'x'; MAX_CONTROL_LINE - 5]);
    assert_eq!(d.next_op(), Ok(None));
    d.feed(b"\r\n");
    assert!(matches!(d.next_op(), Ok(Some(ServerOp::Info(_)))));
}

#[test]
fn debug_shows_sizes_not_payloads() {
    let m = msg("a", 1, None, b"secret payload");
    assert!(!format!("{m:?}").contains("secret"));
}

fn subject_strategy() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-zA-Z0-9_-]{1,8}", 1..5).prop_map(|t| t.join("."))
}

proptest! {
    /// Any messages, cut into any chunks: the same messages come out, in order.
    #[test]
    fn any_chunking_gives_the_same_operations(
        msgs in proptest::collection::vec(
            (subject_strategy(), any::<u32>(), proptest::option::of(subject_strategy()),
             proptest::collection::vec(any::<u8>(), 0..300)),
            0..8),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (subject, sid, reply, payload) in &msgs {
            let reply_part = reply.as_ref().map(|r| format!(" {r}")).unwrap_or_default();
            wire.extend_from_slice(
                format!("MSG {subject} {sid}{reply_part} {}\r\n", payload.len()).as_bytes(),
            );
            wire.extend_from_slice(payload);
            wire.extend_from_slice(b"\r\nPING\r\n");
            want.push(msg(subject, u64::from(*sid), reply.as_deref(), payload));
            want.push(ServerOp::Ping);
        }
        let mut d = Decoder::new(1024);
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            d.feed(&rest[..n]);
            rest = &rest[n..];
            i += 1;
            got.extend(ops(&mut d));
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(d.buffered(), 0);
    }

    /// Arbitrary bytes never panic and never make the decoder hold more than it was fed.
    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..100), 0..10)) {
        let mut d = Decoder::new(64);
        for c in &chunks {
            d.feed(c);
            while let Ok(Some(_)) = d.next_op() {}
        }
    }
}
