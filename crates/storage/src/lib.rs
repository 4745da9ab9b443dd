//! Storage for Halyard's host agent, on oVirt's storage model and file domain layout
//! (format V5), so a domain made here is a valid oVirt domain and the other way round.
//!
//! - [`domain`]: file storage domains (create, open, metadata, images).
//! - [`sdmeta`], [`volmeta`]: the domain and volume metadata formats.
//! - [`volume`]: volumes, chains, templates, copies, garbage collection (qemu-img).
//! - [`sanlock`]: host ids and leases through the sanlock daemon.
//! - [`connection`]: storage server connections (local directories, POSIX mounts).
//! - [`xlease`]: external (VM) leases in a domain's `xleases` volume, VDSM's index.
//! - [`pool`]: storage pools, the SPM role, tasks, host jobs, domain monitoring.

pub mod connection;
pub mod domain;
pub mod error;
pub mod pool;
pub mod sanlock;
pub mod sdmeta;
pub mod volmeta;
pub mod volume;
pub mod xlease;

pub use error::{Result, StorageError};
