//! A minimal writer for the `newc` cpio format the Linux kernel unpacks as initramfs.
//! Entries are written in the order given, with mtime 0, so archives are reproducible.

/// One archive member.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Serialises entries into a newc archive (uncompressed; the kernel takes it as is).
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = (i + 1) as u32;
        match e {
            Entry::Dir { path, mode } => header(&mut out, ino, S_IFDIR | mode, 2, path, &[]),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, S_IFREG | mode, 1, path, data)
            }
            Entry::Symlink { path, target } => {
                header(&mut out, ino, S_IFLNK | 0o777, 1, path, target.as_bytes())
            }
        }
    }
    header(&mut out, 0, 0, 1, "TRAILER!!!", &[]);
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
    out
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) {
    let name = name.trim_start_matches('/');
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        (name.len() + 1) as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let a = write(&[
            Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "bin/x".into(),
                mode: 0o755,
                data: b"abc".to_vec(),
            },
        ]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 512, 0);
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("TRAILER!!!"));
        // Header is 110 bytes; "bin\0" pads to 116 (110+4=114 -> 116).
        assert_eq!(&a[116..122], b"070701");
    }
}
