//! Keeps the agent's resident set to the pages it uses.
//!
//! On a file fault Linux maps up to 64 KiB of neighbouring pages that are already in
//! the page cache ("fault-around"). The libraries libvirt pulls in (libcrypto, gnutls,
//! glib, icu, ...) are in the page cache because libvirtd uses them, so a freshly
//! started agent shows ~20 MiB RSS of library text it never runs. This advises
//! `MADV_RANDOM` on read-only file mappings (no fault-around there) and drops the
//! pages mapped so far with `MADV_DONTNEED`, which for a mapping without private
//! copies only unmaps page-cache pages: the next access faults them back in from the
//! cache. Writable mappings and any mapping holding anonymous (copied-on-write) pages
//! are never touched, so no data can be lost.

use std::fs;

struct Vma {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    anonymous_kib: u64,
}

fn vmas() -> Vec<Vma> {
    let Ok(text) = fs::read_to_string("/proc/self/smaps") else {
        return Vec::new();
    };
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                let perms = parts.next().unwrap_or("").to_string();
                let path = parts.nth(3).unwrap_or("").to_string();
                out.push(Vma {
                    start,
                    end,
                    perms,
                    path,
                    anonymous_kib: 0,
                });
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Anonymous:") {
            if let Some(last) = out.last_mut() {
                last.anonymous_kib = v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX);
            }
        }
    }
    out
}

/// Applies the advice; returns the number of mappings trimmed.
pub fn trim_file_mappings() -> usize {
    let mut n = 0;
    for v in vmas() {
        let read_only = v.perms.starts_with('r') && v.perms.as_bytes().get(1) == Some(&b'-');
        let file_backed = v.path.starts_with('/');
        if !(read_only && file_backed && v.anonymous_kib == 0) {
            continue;
        }
        let len = v.end - v.start;
        // SAFETY: the range is a whole mapping of this process, read-only, backed by a
        // file and holding no anonymous pages (checked above from /proc/self/smaps), so
        // dropping its pages loses nothing: they fault back in from the page cache.
        // madvise does not touch Rust-visible memory contents.
        let ok = unsafe {
            libc::madvise(v.start as *mut libc::c_void, len, libc::MADV_RANDOM) == 0
                && libc::madvise(v.start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0
        };
        if ok {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_the_process_working() {
        let before: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let n = trim_file_mappings();
        assert!(n > 0);
        // Code and read-only data still work after their pages were dropped.
        let after: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(before, after);
        assert!(format!("{:?}", std::time::Instant::now()).len() > 1);
    }
}
