//! External leases (VM leases) in a domain's `dom_md/xleases` volume, in VDSM's format
//! (`lib/vdsm/storage/xlease.py`), so a lease made here is one oVirt finds and the other
//! way round.
//!
//! The volume is made of 1 MiB slots: slot 0 is the (unused) lockspace, slot 1 the index,
//! slot 2 sanlock's internal resource, and slot `3 + n` the lease of index record `n`.
//! The index starts with a 512-byte metadata block (magic `0x12152016`, version `0001`,
//! the lockspace, mtime, an updating flag) followed by 3960 records of 64 bytes
//! (resource name, offset, updating flag). A lease's offset is computed from its record
//! number, never read from the record, so two records can never name one slot.
//!
//! Adding a lease writes the sanlock resource first and the record second; removing
//! writes the empty record first and clears the resource second. A crash between the two
//! steps leaves at worst an orphan resource in a free slot, which the next add overwrites:
//! the index stays the truth. Each record update rewrites the one 512-byte block that
//! holds it (a sector write, atomic on the storage oVirt supports), then syncs.
//!
//! Only the SPM adds and removes leases; any host looks them up.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result, StorageError};
use crate::sanlock;

/// Slot size (oVirt's 1 MiB alignment with 512-byte blocks).
pub const ALIGNMENT: u64 = 1 << 20;
/// Slots before the first lease: lockspace, index, sanlock's internal resource.
pub const RESERVED_SLOTS: u64 = 3;
/// Size of the index's metadata block.
pub const METADATA_SIZE: usize = 512;
/// Size of one index record.
pub const RECORD_SIZE: usize = 64;
/// Bytes of index read and written (VDSM's `INDEX_SIZE`, 62 × 4 KiB).
pub const INDEX_SIZE: usize = 62 * 4096;
/// Records the index holds.
pub const MAX_RECORDS: usize = (INDEX_SIZE - METADATA_SIZE) / RECORD_SIZE;
/// The index's magic number.
pub const INDEX_MAGIC: u32 = 0x1215_2016;
/// The size VDSM gives an xleases volume: 1 GiB, room for 1021 leases at 1 MiB.
pub const VOLUME_SIZE: u64 = 1 << 30;
const BLOCK: usize = 512;

/// The index's metadata block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexMetadata {
    pub version: u32,
    pub lockspace: String,
    pub mtime: u64,
    pub updating: bool,
}

impl IndexMetadata {
    /// Parses the first 512 bytes of the index.
    pub fn parse(b: &[u8]) -> Result<IndexMetadata> {
        let bad = |why: String| StorageError::Lease(format!("invalid index metadata: {why}"));
        if b.len() != METADATA_SIZE {
            return Err(bad(format!("{} bytes, not {METADATA_SIZE}", b.len())));
        }
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != INDEX_MAGIC {
            return Err(bad(format!("magic {magic:#x}")));
        }
        let version = ascii_field(&b[5..9])
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| bad("version is not a number".into()))?;
        if version != 1 {
            return Err(bad(format!("unsupported version {version}")));
        }
        let lockspace =
            ascii_field(&b[10..58]).ok_or_else(|| bad("lockspace is not ASCII".into()))?;
        let mtime = ascii_field(&b[59..69])
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("mtime is not a number".into()))?;
        Ok(IndexMetadata {
            version,
            lockspace,
            mtime,
            updating: b[70] == b'u',
        })
    }

    /// The block in VDSM's format (`>i x 4s x 48s x 10s x c 440x c`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(METADATA_SIZE);
        h.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        h.push(0);
        h.extend_from_slice(format!("{:04}", self.version % 10_000).as_bytes());
        h.push(0);
        let mut ls = self.lockspace.as_bytes().to_vec();
        ls.resize(48, 0);
        h.extend_from_slice(&ls[..48]);
        h.push(0);
        h.extend_from_slice(format!("{:010}", self.mtime % 10_000_000_000).as_bytes());
        h.push(0);
        h.push(if self.updating { b'u' } else { b'-' });
        h.extend_from_slice(&[0u8; 440]);
        h.push(b'\n');
        h
    }
}

/// One index record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The lease id; empty for a free record.
    pub resource: String,
    /// The lease's offset as written (for people reading the volume; never trusted).
    pub offset: u64,
    pub updating: bool,
}

impl Record {
    pub fn empty() -> Record {
        Record {
            resource: String::new(),
            offset: 0,
            updating: false,
        }
    }

    /// Parses 64 bytes (`48s x 11s x 3c`).
    pub fn parse(b: &[u8]) -> Result<Record> {
        let bad = |why: &str| StorageError::Lease(format!("invalid index record: {why}"));
        if b.len() != RECORD_SIZE {
            return Err(bad("wrong size"));
        }
        let resource = ascii_field(&b[..48]).ok_or_else(|| bad("resource is not ASCII"))?;
        let offset = ascii_field(&b[49..60])
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("offset is not a number"))?;
        Ok(Record {
            resource,
            offset,
            updating: b[61] == b'u',
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut r = self.resource.as_bytes().to_vec();
        r.resize(48, 0);
        r.truncate(48);
        r.push(0);
        r.extend_from_slice(format!("{:011}", self.offset % 100_000_000_000).as_bytes());
        r.push(0);
        r.push(if self.updating { b'u' } else { b'-' });
        r.push(b'-');
        r.push(b'\n');
        r
    }
}

/// A NUL-padded ASCII field (trailing NULs stripped).
fn ascii_field(b: &[u8]) -> Option<String> {
    let end = b.iter().rposition(|c| *c != 0).map_or(0, |i| i + 1);
    let s = &b[..end];
    s.is_ascii()
        .then(|| String::from_utf8_lossy(s).into_owned())
}

/// The offset of record `recnum`'s lease in the volume.
pub fn lease_offset(recnum: usize) -> u64 {
    (RESERVED_SLOTS + recnum as u64) * ALIGNMENT
}

/// A fresh index (all records free), as `format_index` writes it.
pub fn format_index(lockspace: &str, mtime: u64) -> Vec<u8> {
    let mut idx = IndexMetadata {
        version: 1,
        lockspace: lockspace.to_string(),
        mtime,
        updating: false,
    }
    .to_bytes();
    let empty = Record::empty().to_bytes();
    for _ in 0..MAX_RECORDS {
        idx.extend_from_slice(&empty);
    }
    idx
}

/// Where a lease lives (VDSM's `LeaseInfo`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    pub lockspace: String,
    pub resource: String,
    pub path: PathBuf,
    pub offset: u64,
}

/// An xleases volume, its index read when opened.
pub struct LeasesVolume {
    path: PathBuf,
    file: File,
    index: Vec<u8>,
    md: IndexMetadata,
}

/// Opens for direct I/O where the file system allows it (NFS: other hosts' writes seen
/// at once), else buffered.
fn open(path: &Path, write: bool) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(write);
    match o.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => o.open(path).map_err(io_err(path)),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// A 4 KiB-aligned buffer for direct I/O.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(BLOCK), 4096)
            .unwrap_or_else(|_| std::alloc::Layout::new::<[u8; 4096]>());
        // SAFETY: the layout has a non-zero size and a valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, layout }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed) bytes owned here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn read_exact_at(f: &File, path: &Path, len: usize, offset: u64) -> Result<Vec<u8>> {
    let mut buf = Aligned::new(len);
    let b = buf.as_mut();
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(&mut b[done..len], offset + done as u64)
            .map_err(io_err(path))?;
        if n == 0 {
            return Err(StorageError::Lease(format!(
                "{}: the index is truncated ({} of {len} bytes)",
                path.display(),
                done
            )));
        }
        done += n;
    }
    Ok(b[..len].to_vec())
}

fn write_all_at(f: &File, path: &Path, data: &[u8], offset: u64) -> Result<()> {
    let mut buf = Aligned::new(data.len());
    buf.as_mut()[..data.len()].copy_from_slice(data);
    f.write_all_at(&buf.as_mut()[..data.len()], offset)
        .map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}

impl LeasesVolume {
    /// Opens and reads the index; `write` for the SPM.
    pub fn open(path: &Path, write: bool) -> Result<LeasesVolume> {
        let file = open(path, write)?;
        let index = read_exact_at(&file, path, INDEX_SIZE, ALIGNMENT)?;
        let md = IndexMetadata::parse(&index[..METADATA_SIZE])?;
        if md.updating {
            return Err(StorageError::Lease(format!(
                "{}: the index is updating or an update was aborted; it must be rebuilt",
                path.display()
            )));
        }
        Ok(LeasesVolume {
            path: path.to_path_buf(),
            file,
            index,
            md,
        })
    }

    pub fn lockspace(&self) -> &str {
        &self.md.lockspace
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record_bytes(&self, recnum: usize) -> &[u8] {
        let o = METADATA_SIZE + recnum * RECORD_SIZE;
        &self.index[o..o + RECORD_SIZE]
    }

    /// The record number holding `lease_id` (bad records are skipped, as they name no
    /// lease).
    fn find(&self, lease_id: &str) -> Option<usize> {
        (0..MAX_RECORDS)
            .find(|n| Record::parse(self.record_bytes(*n)).is_ok_and(|r| r.resource == lease_id))
    }

    fn info(&self, lease_id: &str, recnum: usize) -> LeaseInfo {
        LeaseInfo {
            lockspace: self.md.lockspace.clone(),
            resource: lease_id.to_string(),
            path: self.path.clone(),
            offset: lease_offset(recnum),
        }
    }

    /// Where lease `lease_id` lives (VDSM's `lookup`; a record left "updating" by an
    /// older writer counts as missing).
    pub fn lookup(&self, lease_id: &str) -> Result<LeaseInfo> {
        check_id(lease_id)?;
        match self.find(lease_id) {
            Some(n) if !Record::parse(self.record_bytes(n))?.updating => Ok(self.info(lease_id, n)),
            _ => Err(StorageError::NoSuchLease(lease_id.to_string())),
        }
    }

    /// Every lease in the index: id → offset.
    pub fn leases(&self) -> BTreeMap<String, u64> {
        (0..MAX_RECORDS)
            .filter_map(|n| {
                let r = Record::parse(self.record_bytes(n)).ok()?;
                (!r.resource.is_empty()).then(|| (r.resource, lease_offset(n)))
            })
            .collect()
    }

    /// Adds lease `lease_id` (SPM): the sanlock resource first, then the record.
    pub fn add(&mut self, lease_id: &str) -> Result<LeaseInfo> {
        check_id(lease_id)?;
        let recnum = match self.find(lease_id) {
            Some(n) if !Record::parse(self.record_bytes(n))?.updating => {
                return Err(StorageError::Lease(format!("Lease {lease_id} exists")))
            }
            Some(n) => n,
            None => {
                let empty = Record::empty().to_bytes();
                (0..MAX_RECORDS)
                    .find(|n| self.record_bytes(*n) == empty.as_slice())
                    .ok_or_else(|| {
                        StorageError::Lease(format!("No space to add lease {lease_id}"))
                    })?
            }
        };
        let offset = lease_offset(recnum);
        // A file domain's volume is sparse: make room for the slot.
        let len = self.file.metadata().map_err(io_err(&self.path))?.len();
        if len < offset + ALIGNMENT {
            self.file
                .set_len((offset + ALIGNMENT).max(VOLUME_SIZE))
                .map_err(io_err(&self.path))?;
        }
        sanlock::write_resource(&self.md.lockspace, lease_id, &self.path, offset)?;
        self.write_record(
            recnum,
            &Record {
                resource: lease_id.to_string(),
                offset,
                updating: false,
            },
        )?;
        Ok(self.info(lease_id, recnum))
    }

    /// Removes lease `lease_id` (SPM): the empty record first, then the resource is
    /// cleared (a failure there is only logged: the index already says it is gone).
    pub fn remove(&mut self, lease_id: &str) -> Result<()> {
        check_id(lease_id)?;
        let recnum = self
            .find(lease_id)
            .ok_or_else(|| StorageError::NoSuchLease(lease_id.to_string()))?;
        self.write_record(recnum, &Record::empty())?;
        if let Err(e) = sanlock::write_resource("", "", &self.path, lease_offset(recnum)) {
            tracing::warn!(error = %e, lease_id, "could not clear the sanlock resource of a removed lease");
        }
        Ok(())
    }

    /// Rewrites the 512-byte block holding record `recnum`, then updates the index.
    fn write_record(&mut self, recnum: usize, rec: &Record) -> Result<()> {
        let o = METADATA_SIZE + recnum * RECORD_SIZE;
        let block_start = o - o % BLOCK;
        let mut block = self.index[block_start..block_start + BLOCK].to_vec();
        block[o - block_start..o - block_start + RECORD_SIZE].copy_from_slice(&rec.to_bytes());
        write_all_at(
            &self.file,
            &self.path,
            &block,
            ALIGNMENT + block_start as u64,
        )?;
        self.index[block_start..block_start + BLOCK].copy_from_slice(&block);
        Ok(())
    }
}

/// Lease ids are UUIDs (a VM's id): they become sanlock resource names.
fn check_id(lease_id: &str) -> Result<()> {
    crate::error::check_uuid("lease_id", lease_id)
}

/// Writes a fresh index into a new xleases volume of VDSM's size (sparse).
pub fn format_volume(path: &Path, lockspace: &str, mtime: u64) -> Result<()> {
    let f = open(path, true)?;
    f.set_len(VOLUME_SIZE).map_err(io_err(path))?;
    write_all_at(&f, path, &format_index(lockspace, mtime), ALIGNMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LS: &str = "275766cb-c7d8-43d6-a663-4e52160de620";
    const VM: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn layout_is_vdsms() {
        assert_eq!(MAX_RECORDS, 3960);
        assert_eq!(lease_offset(0), 3 << 20);
        let i = format_index(LS, 1_700_000_000);
        assert_eq!(i.len(), INDEX_SIZE);
        assert_eq!(&i[..4], &[0x12, 0x15, 0x20, 0x16]);
        assert_eq!(&i[5..9], b"0001");
        assert_eq!(&i[10..46], LS.as_bytes());
        assert_eq!(&i[59..69], b"1700000000");
        assert_eq!(i[70], b'-');
        assert_eq!(i[511], b'\n');
        // A free record: 48 NULs, NUL, 11 zeros, NUL, "--\n".
        assert_eq!(&i[512 + 49..512 + 60], b"00000000000");
        assert_eq!(&i[512 + 61..512 + 64], b"--\n");
        let md = IndexMetadata::parse(&i[..512]).expect("metadata");
        assert_eq!(md.lockspace, LS);
        assert_eq!(md.mtime, 1_700_000_000);
        let r = Record {
            resource: VM.into(),
            offset: lease_offset(7),
            updating: false,
        };
        assert_eq!(Record::parse(&r.to_bytes()).expect("record"), r);
    }

    #[test]
    fn lookup_finds_a_record_and_computes_the_offset() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("xleases");
        std::fs::File::create(&p).expect("file");
        format_volume(&p, LS, 1).expect("format");
        // Write record 4 by hand, with a lying offset: the offset comes from the slot.
        let mut v = LeasesVolume::open(&p, true).expect("open");
        v.write_record(
            4,
            &Record {
                resource: VM.into(),
                offset: 12345,
                updating: false,
            },
        )
        .expect("write");
        let v = LeasesVolume::open(&p, false).expect("reopen");
        let i = v.lookup(VM).expect("lookup");
        assert_eq!(i.offset, lease_offset(4));
        assert_eq!(i.lockspace, LS);
        assert_eq!(v.leases().len(), 1);
        assert!(matches!(
            v.lookup("99999999-2222-3333-4444-555555555555"),
            Err(StorageError::NoSuchLease(_))
        ));
        assert!(v.lookup("../x").is_err());
    }

    #[test]
    fn an_updating_index_or_a_truncated_one_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("xleases");
        std::fs::write(&p, vec![0u8; 1 << 20]).expect("file");
        assert!(LeasesVolume::open(&p, false).is_err());
        format_volume(&p, LS, 1).expect("format");
        let mut md = IndexMetadata::parse(&format_index(LS, 1)[..512]).expect("md");
        md.updating = true;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open");
        f.write_all_at(&md.to_bytes(), ALIGNMENT).expect("write");
        let e = LeasesVolume::open(&p, false).err().expect("refused");
        assert!(e.to_string().contains("updating"), "{e}");
    }

    proptest! {
        #[test]
        fn records_and_metadata_parse_without_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Record::parse(&b[..b.len().min(64)]);
            let _ = IndexMetadata::parse(&b[..b.len().min(512)]);
        }

        #[test]
        fn records_round_trip(id in "[0-9a-f-]{0,48}", off in 0u64..99_999_999_999, u in any::<bool>()) {
            let r = Record { resource: id, offset: off, updating: u };
            prop_assert_eq!(Record::parse(&r.to_bytes()).expect("parse"), r);
        }
    }
}
