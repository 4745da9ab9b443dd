//! Halyard's host agent (the VDSM role).
//!
//! - [`server`]: mutual-TLS listener and STOMP sessions on port 54321.
//! - [`authz`]: who may call what (the role in the caller's certificate).
//! - [`api`]: JSON-RPC dispatch of VDSM's verbs.
//! - [`agent`]: VMs and their lifecycle, events, samplers, recovery.
//! - [`libvirt`]: the libvirt connection, its event loop, bulk stats.
//! - [`domxml`]: reading and adapting the engine's domain XML.
//! - [`vmpolicy`]: what a VM definition may ask of the host.
//! - [`monitor`]: host sampling from /proc and sysfs.
//! - [`caps`]: the Host.getCapabilities answer.
//! - [`migration`]: live migration (VM.migrate on the source, VM.migrationCreate on
//!   the destination), VDSM's way.
//! - [`images`]: image transfers: the image data server (port 54322), its tickets,
//!   qemu-nbd servers, the check of uploaded volumes.

pub mod agent;
pub mod api;
pub mod authz;
pub mod caps;
pub mod clock;
pub mod config;
pub mod console;
pub mod domxml;
pub mod fence;
pub mod guestinfo;
pub mod identity;
pub mod images;
pub mod libvirt;
pub mod memtrim;
pub mod migration;
pub mod monitor;
pub mod payload;
pub mod server;
pub mod updates;
pub mod vm;
pub mod vmpolicy;
