//! The input of the Manager's host-register handler (query string and CSR body): a
//! clear error or a registration whose fields are bounded and plain, never a panic.
#![no_main]

use halyard_manager::register::parse_registration;
use halyard_manager::server::form_decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (q, body) = data.split_at(split);
    let q = form_decode(&String::from_utf8_lossy(q));
    if let Ok(r) = parse_registration(&q, body.get(1..).unwrap_or(&[])) {
        for f in [&r.name, &r.address, &r.unique_id] {
            assert!(!f.is_empty() && f.len() <= 255);
            assert!(f.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)));
        }
        assert!(r.port > 0);
        assert!(r.key_fingerprint.starts_with("SHA256:"));
    }
});
