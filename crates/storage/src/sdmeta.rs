//! `dom_md/metadata` of a file storage domain: sorted `KEY=VALUE` lines sealed by
//! `_SHA_CKSUM`, the SHA-1 of the sorted `KEY=VALUE` strings concatenated without
//! separators (VDSM's `persistent.py`). Written crash-safe (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::error::{io_err, Result, StorageError};

pub const CHECKSUM_KEY: &str = "_SHA_CKSUM";

/// Largest metadata file accepted (VDSM's file domains stay far below).
pub const MAX_SIZE: usize = 64 * 1024;

/// Parsed domain metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainMetadata {
    pub map: BTreeMap<String, String>,
}

/// The seal over `map` (without the checksum key).
pub fn checksum(map: &BTreeMap<String, String>) -> String {
    let mut h = Sha1::new();
    for (k, v) in map {
        if k == CHECKSUM_KEY {
            continue;
        }
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl DomainMetadata {
    /// Parses metadata; a present checksum must match.
    pub fn parse(data: &[u8]) -> Result<DomainMetadata> {
        if data.len() > MAX_SIZE {
            return Err(StorageError::MetadataInvalid(format!(
                "metadata of {} bytes exceeds {MAX_SIZE}",
                data.len()
            )));
        }
        let end = data
            .iter()
            .rposition(|&b| b != 0)
            .map(|p| p + 1)
            .unwrap_or(0);
        let text = std::str::from_utf8(&data[..end])
            .map_err(|_| StorageError::MetadataInvalid("metadata is not UTF-8".into()))?;
        let mut map = BTreeMap::new();
        let mut seal = None;
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                StorageError::MetadataInvalid(format!(
                    "metadata line without '=': {:?}",
                    line.chars().take(64).collect::<String>()
                ))
            })?;
            let k = k.trim();
            if k == CHECKSUM_KEY {
                seal = Some(v.trim().to_string());
            } else if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(StorageError::MetadataInvalid(format!("duplicate key {k}")));
            }
        }
        if let Some(s) = seal {
            let want = checksum(&map);
            if s != want {
                return Err(StorageError::MetadataSealBroken(format!(
                    "stored {s}, computed {want}"
                )));
            }
        }
        Ok(DomainMetadata { map })
    }

    pub fn read(path: &Path) -> Result<DomainMetadata> {
        let data = std::fs::read(path).map_err(io_err(path))?;
        DomainMetadata::parse(&data)
    }

    /// The file content: sorted lines, then the seal.
    pub fn serialize(&self) -> Result<String> {
        let mut out = String::new();
        for (k, v) in &self.map {
            if k.contains(['=', '\n', '\r']) || k.is_empty() || v.contains(['\n', '\r']) {
                return Err(StorageError::InvalidParameter(format!(
                    "metadata key/value not representable: {k:?}={v:?}"
                )));
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
            out.push('\n');
        }
        out.push_str(CHECKSUM_KEY);
        out.push('=');
        out.push_str(&checksum(&self.map));
        out.push('\n');
        Ok(out)
    }

    /// Writes crash-safe: the old or the new content survives a crash, never a mix.
    pub fn write(&self, path: &Path) -> Result<()> {
        let s = self.serialize()?;
        halyard_common::fsutil::write_atomic(path, s.as_bytes(), 0o660).map_err(io_err(path))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }

    pub fn set(&mut self, k: &str, v: impl Into<String>) {
        self.map.insert(k.to_string(), v.into());
    }

    pub fn remove(&mut self, k: &str) {
        self.map.remove(k);
    }

    pub fn get_u64(&self, k: &str) -> Result<u64> {
        let v = self
            .get(k)
            .ok_or_else(|| StorageError::MetadataInvalid(format!("missing {k}")))?;
        v.trim()
            .parse()
            .map_err(|_| StorageError::MetadataInvalid(format!("{k}={v:?} is not a number")))
    }

    /// `POOL_UUID`, a comma-separated list (empty when unattached).
    pub fn pools(&self) -> Vec<String> {
        self.get("POOL_UUID")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "ALIGNMENT=1048576\nBLOCK_SIZE=512\nCLASS=Data\nDESCRIPTION=storage domain\nIOOPTIMEOUTSEC=10\nLEASERETRIES=3\nLEASETIMESEC=60\nLOCKPOLICY=\nLOCKRENEWALINTERVALSEC=5\nPOOL_UUID=\nREMOTE_PATH=server:/path\nROLE=Regular\nSDUUID=275766cb-c7d8-43d6-a663-4e52160de620\nTYPE=LOCALFS\nVERSION=5\n_SHA_CKSUM=9336f77705ff9e3d5faf65c4d0dc818a29de458d\n";

    #[test]
    fn vdsm_test_vector() {
        let m = DomainMetadata::parse(VECTOR.as_bytes()).expect("seal matches");
        assert_eq!(m.get("TYPE"), Some("LOCALFS"));
        assert_eq!(m.get("LOCKPOLICY"), Some(""));
        assert_eq!(m.serialize().expect("serialises"), VECTOR);
    }

    #[test]
    fn broken_seal_and_garbage() {
        let bad = VECTOR.replace("ROLE=Regular", "ROLE=Master");
        let e = DomainMetadata::parse(bad.as_bytes()).expect_err("seal broken");
        assert_eq!(e.code(), 752);
        assert!(DomainMetadata::parse(b"NOEQUALS\n").is_err());
        assert!(DomainMetadata::parse(b"\xff\xfe=1").is_err());
        assert!(DomainMetadata::parse(b"A=1\nA=2\n").is_err());
        // Trailing NULs (padding) are ignored.
        let mut padded = VECTOR.as_bytes().to_vec();
        padded.extend([0u8; 100]);
        assert!(DomainMetadata::parse(&padded).is_ok());
    }

    #[test]
    fn unrepresentable_values_refused() {
        let mut m = DomainMetadata::default();
        m.set("DESCRIPTION", "a\nROLE=Master");
        assert!(m.serialize().is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = DomainMetadata::parse(&data);
        }

        #[test]
        fn round_trip(entries in proptest::collection::btree_map("[A-Z_]{1,12}", "[ -~]{0,30}", 0..12)) {
            let mut m = DomainMetadata::default();
            for (k, v) in &entries {
                if k == CHECKSUM_KEY { continue; }
                m.set(k, v.clone());
            }
            let s = m.serialize().expect("serialises");
            let back = DomainMetadata::parse(s.as_bytes()).expect("parses");
            proptest::prop_assert_eq!(back, m);
        }
    }
}
