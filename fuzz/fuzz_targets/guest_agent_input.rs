//! Bytes a host (or anything able to write the virtio port) sends the guest agent:
//! framing, parsing and the answers must never panic, and every answer is one line of
//! JSON.
#![no_main]

use halyard_guest_agent::commands::{Agent, Config};
use halyard_guest_agent::protocol::Framer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut agent = Agent::new(Config {
        exec_enabled: false,
        root: "/nonexistent".into(),
    });
    let mut f = Framer::new(4096);
    for chunk in data.chunks(97) {
        for input in f.feed(chunk) {
            if let Some(out) = halyard_guest_agent::handle(&mut agent, input) {
                let body = out.strip_prefix(&[0xFF]).unwrap_or(&out);
                assert!(body.ends_with(b"\n"));
                assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok());
            }
        }
        // A shutdown request is only recorded, never carried out here.
        agent.shutdown = None;
    }
});
