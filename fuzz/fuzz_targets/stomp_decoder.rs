//! STOMP decoder on arbitrary bytes fed in arbitrary chunks: no panic, limits hold,
//! and every decoded frame re-encodes to something the decoder reads back the same.
#![no_main]

use halyard_proto::stomp::{Decoder, Item, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let chunk = (data[0] as usize % 64) + 1;
    let limits = Limits {
        max_header_bytes: 1024,
        max_headers: 16,
        max_body: 4096,
    };
    let mut d = Decoder::new(limits);
    for c in data[1..].chunks(chunk) {
        d.feed(c);
        loop {
            match d.next_item() {
                Ok(Some(Item::Frame(f))) => {
                    assert!(f.body.len() <= limits.max_body);
                    let mut again = Decoder::new(Limits::default());
                    again.feed(&f.encode());
                    match again.next_item() {
                        Ok(Some(Item::Frame(g))) => {
                            assert_eq!(g.command, f.command);
                            assert_eq!(g.body, f.body);
                        }
                        other => panic!("re-encoded frame did not decode: {other:?}"),
                    }
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= limits.max_header_bytes + limits.max_body + 64 + chunk);
    }
});
