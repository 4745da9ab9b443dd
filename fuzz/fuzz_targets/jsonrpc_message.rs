//! JSON-RPC message parsing and param binding on arbitrary bytes: no panic.
#![no_main]

use halyard_proto::jsonrpc::{parse_message, Entry, Message};
use halyard_proto::vdsm::{verbs, Verb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let entries = match parse_message(data) {
        Message::Single(e) => vec![e],
        Message::Batch(v) => v,
    };
    for e in entries {
        if let Entry::Request(r) = e {
            let _ = r.params.bind::<<verbs::VmShutdown as Verb>::Params>(verbs::VmShutdown::PARAMS);
            let _ = r.params.bind::<<verbs::VmCreate as Verb>::Params>(verbs::VmCreate::PARAMS);
            let _ = r.params.bind::<<verbs::HostGetVmList as Verb>::Params>(verbs::HostGetVmList::PARAMS);
        }
    }
});
