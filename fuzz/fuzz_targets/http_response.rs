//! The HTTP client's response parser (what a server the agent registers with sends,
//! before any trust): never a panic, and a parsed body never claims more than it read.
#![no_main]

use halyard_client::http::{dechunk, parse_response, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits { max_head: 4096, max_response: 1 << 20 };
    if let Ok(r) = parse_response(data, &l) {
        assert!(r.body.len() <= data.len());
        assert!((100..=599).contains(&r.status));
    }
    if let Ok(b) = dechunk(data) {
        assert!(b.len() <= data.len());
    }
});
