//! The engine's domain XML (from the network): parse and prepare never panic, and a
//! prepared document parses again with the same id and name.
#![no_main]

use halyard_hostd::domxml::{parse, prepare, HalyardMeta, Prepare};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(info) = parse(s) else { return };
    let p = Prepare { domain_type: "qemu", meta: HalyardMeta { start_time: 1.0, agent_id: "f".into() } };
    if let Ok(out) = prepare(s, &p) {
        let again = parse(&out).expect("prepared XML parses");
        assert_eq!(again.uuid, info.uuid);
        assert_eq!(again.name, info.name);
        assert!(again.halyard.is_some());
    }
});
