//! Property tests of the wire parsers: arbitrary input never panics, limits hold, and
//! what the encoder writes the decoder reads back unchanged.

use halyard_proto::jsonrpc::{parse_message, Entry, Message};
use halyard_proto::stomp::{Command, Decoder, Frame, Item, Limits, StompError};
use proptest::prelude::*;

fn commands() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Send),
        Just(Command::Subscribe),
        Just(Command::Message),
        Just(Command::Error),
        Just(Command::Receipt),
        Just(Command::Unsubscribe),
    ]
}

fn decode_chunks(d: &mut Decoder, data: &[u8], chunk: usize) -> Result<Vec<Item>, StompError> {
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        d.feed(c);
        while let Some(i) = d.next_item()? {
            out.push(i);
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..64) {
        let mut d = Decoder::new(Limits { max_header_bytes: 512, max_headers: 8, max_body: 1024 });
        let _ = decode_chunks(&mut d, &data, chunk);
    }

    #[test]
    fn decoder_never_panics_on_framelike_input(
        s in "((SEND|CONNECT|SUBSCRIBE|BOGUS)\n([a-z-]{0,8}(:[a-z0-9\\\\]{0,8})?\n){0,4}\n[a-z\u{0}]{0,20}\u{0}?){0,5}",
        chunk in 1usize..16,
    ) {
        let mut d = Decoder::new(Limits::default());
        let _ = decode_chunks(&mut d, s.as_bytes(), chunk);
    }

    #[test]
    fn encode_decode_round_trip(
        cmd in commands(),
        headers in proptest::collection::vec(("[a-z][a-z:\\\\\n\r-]{0,10}", ".{0,20}"), 0..6),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        chunk in 1usize..50,
    ) {
        let mut f = Frame::new(cmd);
        for (k, v) in &headers {
            if k == "content-length" { continue; }
            f.headers.push(k.clone(), v.clone());
        }
        f.body = body.clone();
        let mut d = Decoder::new(Limits::default());
        let items = decode_chunks(&mut d, &f.encode(), chunk).expect("own frames decode");
        prop_assert_eq!(items.len(), 1);
        let Item::Frame(g) = &items[0] else { panic!("frame expected") };
        prop_assert_eq!(g.command, cmd);
        prop_assert_eq!(&g.body, &body);
        for (k, v) in &headers {
            if k == "content-length" { continue; }
            // The first occurrence of a name wins.
            let first = headers.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(g.headers.get(k), first, "header {} (value {:?})", k, v);
        }
    }

    #[test]
    fn body_limit_holds(extra in 1usize..5000) {
        let limit = 1000;
        let mut d = Decoder::new(Limits { max_body: limit, ..Limits::default() });
        d.feed(b"SEND\n\n");
        d.feed(&vec![b'a'; limit + extra]);
        let too_large = matches!(d.next_item(), Err(StompError::BodyTooLarge { .. }));
        prop_assert!(too_large, "oversized body not refused");
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn jsonrpc_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_message(&data);
    }

    #[test]
    fn jsonrpc_structured(
        method in prop_oneof![Just(serde_json::json!("Host.ping2")), Just(serde_json::json!(5)), Just(serde_json::Value::Null)],
        id in prop_oneof![Just(serde_json::json!("a")), Just(serde_json::json!(1)), Just(serde_json::json!([1])), Just(serde_json::Value::Null)],
        params in prop_oneof![Just(serde_json::json!({})), Just(serde_json::json!([1])), Just(serde_json::json!("x"))],
        ver in prop_oneof![Just(serde_json::json!("2.0")), Just(serde_json::json!("1.0"))],
        batch in any::<bool>(),
    ) {
        let one = serde_json::json!({"jsonrpc": ver, "method": method, "id": id, "params": params});
        let v = if batch { serde_json::json!([one.clone(), one]) } else { one };
        let m = parse_message(v.to_string().as_bytes());
        let entries = match m { Message::Single(e) => vec![e], Message::Batch(v) => v };
        for e in entries {
            if let Entry::Request(r) = e {
                prop_assert_eq!(r.method, "Host.ping2");
            }
        }
    }
}
