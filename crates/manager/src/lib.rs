//! Halyard's Manager (the oVirt engine role).
//!
//! - [`server`]: HTTPS, SSO, PKI resource, host registration, the API.
//! - [`api`]: oVirt Engine API v4 documents, search, handlers.
//! - [`state`]: configuration, database, inventory, users and tokens, events.
//! - [`hosts`]: monitoring of host agents.
//! - [`vms`]: scheduler, domain XML, VM actions; [`scheduling`]: the affinity units.
//! - [`storage`]: storage domains, the pool, SPM election and failover, storage tasks.
//! - [`domains`]: storage domain lifecycle; [`images`]: disks, snapshots, templates.
//! - [`register`]: host registration, approval, enrollment; [`ovf`]: a VM's OVF.
//! - [`transfers`]: image transfers (uploads and downloads through the hosts' image
//!   data servers and the Manager's imageio proxy).

pub mod api;
pub mod config;
pub mod consoleproxy;
pub mod db;
pub mod directory;
pub mod domains;
pub mod fencing;
pub mod ha;
pub mod hosts;
pub mod images;
pub mod maintenance;
pub mod memory;
pub mod migration;
pub mod model;
pub mod ovf;
pub mod register;
pub mod scheduling;
pub mod server;
pub mod state;
pub mod storage;
pub mod transfers;
pub mod vminit;
pub mod vms;

/// The unit tests (and their rendering benchmark) allocate as the daemon does.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
