//! A file volume's `.meta`: sorted `KEY=VALUE` lines and a final `EOF` line, at most
//! 512 bytes (VDSM's `volumemetadata.py`, format V5 with CAP in bytes). Written
//! crash-safe (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{io_err, Result, StorageError};

pub const METADATA_SIZE: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Format {
    #[serde(rename = "COW")]
    Cow,
    #[serde(rename = "RAW")]
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Cow => "COW",
            Format::Raw => "RAW",
        }
    }
    pub fn qemu(self) -> &'static str {
        match self {
            Format::Cow => "qcow2",
            Format::Raw => "raw",
        }
    }
    /// VDSM's numeric volFormat: 4 = COW, 5 = RAW.
    pub fn from_code(c: i64) -> Option<Format> {
        match c {
            4 => Some(Format::Cow),
            5 => Some(Format::Raw),
            _ => None,
        }
    }
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "COW" => Some(Format::Cow),
            "RAW" => Some(Format::Raw),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prealloc {
    Sparse,
    Preallocated,
}

impl Prealloc {
    pub fn as_str(self) -> &'static str {
        match self {
            Prealloc::Sparse => "SPARSE",
            Prealloc::Preallocated => "PREALLOCATED",
        }
    }
    /// VDSM's numeric preallocate: 1 = PREALLOCATED, 2 = SPARSE.
    pub fn from_code(c: i64) -> Option<Prealloc> {
        match c {
            1 => Some(Prealloc::Preallocated),
            2 => Some(Prealloc::Sparse),
            _ => None,
        }
    }
    pub fn parse(s: &str) -> Option<Prealloc> {
        match s {
            "SPARSE" => Some(Prealloc::Sparse),
            "PREALLOCATED" => Some(Prealloc::Preallocated),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolType {
    Leaf,
    Internal,
    Shared,
}

impl VolType {
    pub fn as_str(self) -> &'static str {
        match self {
            VolType::Leaf => "LEAF",
            VolType::Internal => "INTERNAL",
            VolType::Shared => "SHARED",
        }
    }
    pub fn parse(s: &str) -> Option<VolType> {
        match s {
            "LEAF" => Some(VolType::Leaf),
            "INTERNAL" => Some(VolType::Internal),
            "SHARED" => Some(VolType::Shared),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legality {
    Legal,
    Illegal,
    Fake,
}

impl Legality {
    pub fn as_str(self) -> &'static str {
        match self {
            Legality::Legal => "LEGAL",
            Legality::Illegal => "ILLEGAL",
            Legality::Fake => "FAKE",
        }
    }
    pub fn parse(s: &str) -> Option<Legality> {
        match s {
            "LEGAL" => Some(Legality::Legal),
            "ILLEGAL" => Some(Legality::Illegal),
            "FAKE" => Some(Legality::Fake),
            _ => None,
        }
    }
}

/// Volume metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMetadata {
    pub capacity: u64,
    pub ctime: u64,
    pub description: String,
    pub disktype: String,
    pub domain: String,
    pub format: Format,
    pub generation: u32,
    pub image: String,
    pub legality: Legality,
    pub parent: String,
    pub sequence: u64,
    pub prealloc: Prealloc,
    pub voltype: VolType,
}

fn field<'a>(m: &'a BTreeMap<String, String>, k: &str) -> Result<&'a str> {
    m.get(k)
        .map(String::as_str)
        .ok_or_else(|| StorageError::MetadataInvalid(format!("volume metadata lacks {k}")))
}

fn bad(k: &str, v: &str) -> StorageError {
    StorageError::MetadataInvalid(format!(
        "volume metadata {k}={:?} is invalid",
        v.chars().take(64).collect::<String>()
    ))
}

impl VolumeMetadata {
    pub fn parse(data: &[u8]) -> Result<VolumeMetadata> {
        if data.len() > METADATA_SIZE * 8 {
            return Err(StorageError::MetadataOverflow(format!(
                "{} bytes",
                data.len()
            )));
        }
        let end = data
            .iter()
            .rposition(|&b| b != 0)
            .map(|p| p + 1)
            .unwrap_or(0);
        let text = std::str::from_utf8(&data[..end])
            .map_err(|_| StorageError::MetadataInvalid("volume metadata is not UTF-8".into()))?;
        let mut m = BTreeMap::new();
        let mut saw_eof = false;
        for line in text.lines() {
            if line.starts_with("EOF") {
                saw_eof = true;
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| bad("line", line))?;
            m.insert(k.trim().to_string(), v.trim().to_string());
        }
        if !saw_eof {
            return Err(StorageError::MetadataInvalid(
                "volume metadata has no EOF line (partial write?)".into(),
            ));
        }
        let num = |k: &str| -> Result<u64> {
            let v = field(&m, k)?;
            v.parse().map_err(|_| bad(k, v))
        };
        let uuid = |k: &str| -> Result<String> {
            let v = field(&m, k)?;
            crate::error::check_uuid(k, v).map_err(|_| bad(k, v))?;
            Ok(v.to_string())
        };
        Ok(VolumeMetadata {
            capacity: num("CAP")?,
            ctime: num("CTIME")?,
            description: m.get("DESCRIPTION").cloned().unwrap_or_default(),
            disktype: m.get("DISKTYPE").cloned().unwrap_or_else(|| "DATA".into()),
            domain: uuid("DOMAIN")?,
            format: Format::parse(field(&m, "FORMAT")?)
                .ok_or_else(|| bad("FORMAT", &m["FORMAT"]))?,
            generation: m
                .get("GEN")
                .map(|v| v.parse().map_err(|_| bad("GEN", v)))
                .transpose()?
                .unwrap_or(0),
            image: uuid("IMAGE")?,
            legality: Legality::parse(field(&m, "LEGALITY")?)
                .ok_or_else(|| bad("LEGALITY", &m["LEGALITY"]))?,
            parent: uuid("PUUID")?,
            sequence: m
                .get("SEQ")
                .map(|v| v.parse().map_err(|_| bad("SEQ", v)))
                .transpose()?
                .unwrap_or(0),
            prealloc: Prealloc::parse(field(&m, "TYPE")?).ok_or_else(|| bad("TYPE", &m["TYPE"]))?,
            voltype: VolType::parse(field(&m, "VOLTYPE")?)
                .ok_or_else(|| bad("VOLTYPE", &m["VOLTYPE"]))?,
        })
    }

    pub fn read(path: &Path) -> Result<VolumeMetadata> {
        let data = std::fs::read(path).map_err(io_err(path))?;
        VolumeMetadata::parse(&data)
    }

    /// The file content (keys sorted, `EOF` last); at most 512 bytes.
    pub fn serialize(&self) -> Result<String> {
        let mut description: String = self.description.chars().take(210).collect();
        description.retain(|c| c != '\n' && c != '\r');
        let lines = [
            ("CAP", self.capacity.to_string()),
            ("CTIME", self.ctime.to_string()),
            ("DESCRIPTION", description),
            ("DISKTYPE", self.disktype.clone()),
            ("DOMAIN", self.domain.clone()),
            ("FORMAT", self.format.as_str().to_string()),
            ("GEN", self.generation.to_string()),
            ("IMAGE", self.image.clone()),
            ("LEGALITY", self.legality.as_str().to_string()),
            ("PUUID", self.parent.clone()),
            ("SEQ", self.sequence.to_string()),
            ("TYPE", self.prealloc.as_str().to_string()),
            ("VOLTYPE", self.voltype.as_str().to_string()),
        ];
        let mut out = String::new();
        for (k, v) in lines {
            if v.contains(['\n', '\r']) {
                return Err(StorageError::InvalidParameter(format!("{k} has a newline")));
            }
            out.push_str(&format!("{k}={v}\n"));
        }
        out.push_str("EOF\n");
        if out.len() > METADATA_SIZE {
            return Err(StorageError::MetadataOverflow(format!(
                "{} bytes > {METADATA_SIZE}",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Writes durably (temp, fsync, rename, fsync of the directory).
    pub fn write(&self, path: &Path) -> Result<()> {
        let s = self.serialize()?;
        halyard_common::fsutil::write_atomic(path, s.as_bytes(), 0o660).map_err(io_err(path))
    }

    /// Writes atomically but without syncing (see `fsutil::write_replace`).
    pub fn write_unsynced(&self, path: &Path) -> Result<()> {
        let s = self.serialize()?;
        halyard_common::fsutil::write_replace(path, s.as_bytes(), 0o660).map_err(io_err(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> VolumeMetadata {
        VolumeMetadata {
            capacity: 1 << 30,
            ctime: 1700000000,
            description: "{\"DiskAlias\":\"d1\"}".into(),
            disktype: "DATA".into(),
            domain: "275766cb-c7d8-43d6-a663-4e52160de620".into(),
            format: Format::Cow,
            generation: 0,
            image: "8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab".into(),
            legality: Legality::Legal,
            parent: crate::error::BLANK_UUID.into(),
            sequence: 0,
            prealloc: Prealloc::Sparse,
            voltype: VolType::Leaf,
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let m = sample();
        let s = m.serialize().expect("fits");
        assert!(s.starts_with("CAP=1073741824\nCTIME=1700000000\n"));
        assert!(s.ends_with("VOLTYPE=LEAF\nEOF\n"));
        assert_eq!(VolumeMetadata::parse(s.as_bytes()).expect("parses"), m);
    }

    #[test]
    fn rejects_partial_and_bad() {
        let s = sample().serialize().expect("fits");
        let cut = &s[..s.len() - 10];
        assert!(VolumeMetadata::parse(cut.as_bytes()).is_err(), "no EOF");
        let bad = s.replace("PUUID=00000000", "PUUID=../../00");
        assert!(VolumeMetadata::parse(bad.as_bytes()).is_err());
        let bad = s.replace("CAP=1073741824", "CAP=-1");
        assert!(VolumeMetadata::parse(bad.as_bytes()).is_err());
        let mut long = sample();
        long.description = "x".repeat(400);
        assert!(long.serialize().is_ok(), "description is truncated to 210");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let _ = VolumeMetadata::parse(&data);
        }

        #[test]
        fn parse_never_panics_keyvalue(s in "((CAP|CTIME|DOMAIN|FORMAT|GEN|IMAGE|LEGALITY|PUUID|TYPE|VOLTYPE|SEQ)=[A-Z0-9-]{0,40}\n){0,14}(EOF\n)?") {
            let _ = VolumeMetadata::parse(s.as_bytes());
        }
    }
}
