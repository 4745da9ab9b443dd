//! The VM definition policy over arbitrary domain XML: a refusal or a pass, never a
//! panic; what passes the policy also parses.
#![no_main]

use halyard_hostd::vmpolicy::{check, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let p = Policy {
        image_dirs: vec!["/var/lib/halyard/images".into()],
        console_log_dir: "/var/log/halyard/vms".into(),
        ..Policy::default()
    };
    let _ = check(s, &p);
});
