//! Small text helpers more than one role needs: dates, URL encoding, XML references.

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), Howard Hinnant's
/// algorithm; exact for every `i64` day count a date can hold.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Compares two secrets (or their hashes) in time that depends only on their
/// lengths, never on where they differ. Compare hashes of equal length (SHA-256 of
/// both) and the length leaks nothing either.
/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time in seconds (libvirt's passwdValidTo).
pub fn iso8601_utc(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for query values
/// and form bodies).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The character an XML reference stands for: the five predefined entities and
/// character references (`#65`, `#x41`). `None` for anything else: no other entity
/// is ever expanded.
pub fn xml_reference(name: &[u8]) -> Option<char> {
    match name {
        b"amp" => Some('&'),
        b"lt" => Some('<'),
        b"gt" => Some('>'),
        b"quot" => Some('"'),
        b"apos" => Some('\''),
        _ => {
            let s = std::str::from_utf8(name).ok()?;
            let code = if let Some(h) = s.strip_prefix("#x") {
                u32::from_str_radix(h, 16).ok()
            } else if let Some(d) = s.strip_prefix('#') {
                d.parse().ok()
            } else {
                None
            };
            code.and_then(char::from_u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(iso8601_utc(1), "1970-01-01T00:00:01");
        assert_eq!(iso8601_utc(1_795_000_000), "2026-11-18T11:06:40");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_775), (2026, 11, 18));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn encoding() {
        assert_eq!(percent_encode("admin@internal"), "admin%40internal");
        assert_eq!(percent_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
    }

    #[test]
    fn references() {
        assert_eq!(xml_reference(b"amp"), Some('&'));
        assert_eq!(xml_reference(b"#x41"), Some('A'));
        assert_eq!(xml_reference(b"#65"), Some('A'));
        assert_eq!(xml_reference(b"#xD800"), None);
        assert_eq!(xml_reference(b"lol1"), None);
        assert_eq!(xml_reference(b"#x110000"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16), d in proptest::prelude::any::<i32>()) {
            let _ = xml_reference(&b);
            let _ = civil_from_days(i64::from(d));
        }
    }
}
