//! Storage errors, each with VDSM's numeric code and message
//! (`lib/vdsm/storage/exception.py`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("Invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("Storage domain does not exist: ('{0}',)")]
    DomainDoesNotExist(String),
    #[error("Storage domain already exists: ('{0}',)")]
    DomainAlreadyExists(String),
    #[error("Storage domain is not empty - requires cleaning: ('{0}',)")]
    DomainNotEmpty(String),
    #[error("Domain is either partially accessible or entirely inaccessible: ('{0}',)")]
    DomainAccess(String),
    #[error("Storage domain already attached to pool: ('{0}',)")]
    DomainAlreadyAttached(String),
    #[error("Meta Data seal is broken (checksum mismatch): ({0:?},)")]
    MetadataSealBroken(String),
    #[error("Invalid metadata: {0}")]
    MetadataInvalid(String),
    #[error("Metadata overflow: {0}")]
    MetadataOverflow(String),
    #[error("Image does not exist in domain: ('{0}',)")]
    ImageDoesNotExist(String),
    #[error("Volume does not exist: ('{0}',)")]
    VolumeDoesNotExist(String),
    #[error("Volume already exists: ('{0}',)")]
    VolumeAlreadyExists(String),
    #[error("Incorrect Volume format: {0}")]
    IncorrectFormat(String),
    #[error("Error creating a new volume: {0}")]
    VolumeCreation(String),
    #[error("Cannot prepare illegal volume: ('{0}',)")]
    IllegalVolume(String),
    #[error("Image is not a legal chain: {0}")]
    BadChain(String),
    #[error("Unknown pool id, pool not connected: ('{0}',)")]
    PoolUnknown(String),
    #[error("Wrong Master domain or its version: {0}")]
    WrongMaster(String),
    #[error("Task id unknown: ('{0}',)")]
    UnknownTask(String),
    #[error("Operation is not allowed as long as the task is not finished: ('{0}',)")]
    TaskNotFinished(String),
    #[error("Error storage server connection: {0}")]
    Connection(String),
    #[error("Problem while trying to mount target: {0}")]
    Mount(String),
    #[error("Error starting SPM: {0}")]
    SpmStart(String),
    #[error("Cannot obtain lock: {0}")]
    AcquireLock(String),
    #[error("Not SPM: ('{0}',)")]
    NotSpm(String),
    #[error("Operation not allowed while SPM is active: ('{0}',)")]
    IsSpm(String),
    #[error("Cannot acquire host id: {0}")]
    AcquireHostId(String),
    #[error("Could not initialize cluster lock: {0}")]
    ClusterLockInit(String),
    #[error("The provided generation does not match the actual generation: {0}")]
    GenerationMismatch(String),
    #[error("qemu-img failed: {0}")]
    QemuImg(String),
    #[error("No such lease: ('{0}',)")]
    NoSuchLease(String),
    #[error("{0}")]
    Lease(String),
    #[error("sanlock: {0}")]
    Sanlock(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// VDSM's error code.
    pub fn code(&self) -> i64 {
        use StorageError::*;
        match self {
            InvalidParameter(_) => 1000,
            DomainDoesNotExist(_) => 358,
            DomainAlreadyExists(_) => 365,
            DomainNotEmpty(_) => 361,
            DomainAccess(_) => 379,
            DomainAlreadyAttached(_) => 380,
            MetadataSealBroken(_) => 752,
            MetadataInvalid(_) => 751,
            MetadataOverflow(_) => 756,
            ImageDoesNotExist(_) => 268,
            VolumeDoesNotExist(_) => 201,
            VolumeAlreadyExists(_) => 212,
            IncorrectFormat(_) => 202,
            VolumeCreation(_) => 205,
            IllegalVolume(_) => 227,
            BadChain(_) => 259,
            PoolUnknown(_) => 309,
            WrongMaster(_) => 324,
            UnknownTask(_) => 401,
            TaskNotFinished(_) => 410,
            Connection(_) => 451,
            Mount(_) => 477,
            SpmStart(_) => 650,
            AcquireLock(_) => 651,
            NotSpm(_) => 654,
            IsSpm(_) => 656,
            AcquireHostId(_) => 661,
            ClusterLockInit(_) => 701,
            GenerationMismatch(_) => 911,
            QemuImg(_) => 100,
            NoSuchLease(_) => 936,
            Lease(_) => 100,
            Sanlock(_) => 100,
            Io { .. } => 100,
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, source }
}

/// The nil UUID oVirt uses as "no parent" / blank image.
pub const BLANK_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Checks an id that becomes part of a path: a canonical UUID, nothing else (no `..`,
/// no `/`).
pub fn check_uuid(what: &str, id: &str) -> Result<()> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidParameter(format!(
            "{what} must be a UUID, got {:?}",
            id.chars().take(64).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_checks() {
        assert!(check_uuid("x", "11111111-2222-3333-4444-555555555555").is_ok());
        for bad in [
            "..",
            "../../etc",
            "11111111-2222-3333-4444-55555555555/",
            "",
            "a/b",
        ] {
            assert_eq!(check_uuid("x", bad).map_err(|e| e.code()).err(), Some(1000));
        }
    }
}
