//! Halyard's image data server, the ovirt-imageio role.
//!
//! Each host runs one on port 54322 (in the host agent's process): the Manager adds a
//! ticket through the agent (VDSM's `Host.add_image_ticket`) naming a volume file or a
//! qemu-nbd socket, and a client (the SDK's `upload_disk.py` with `ovirt_imageio.client`)
//! reads or writes that image over HTTPS with the ticket id in the URL. The Manager
//! runs the same server as its proxy on port 54323, whose tickets name the host's
//! ticket URL: requests are checked against the proxy's own ticket and forwarded.
//!
//! - [`ticket`]: tickets, their checks, expiry and status.
//! - [`server`]: the HTTP protocol (OPTIONS, GET with Range, PUT with Content-Range,
//!   PATCH zero/flush, extents, checksum) and the proxy.
//! - [`backend`]: files and qemu-nbd exports.
//! - [`nbd`]: the NBD client.

pub mod backend;
pub mod nbd;
pub mod server;
pub mod ticket;

pub use server::{ImageServer, Limits};
pub use ticket::{Role, TicketInfo, TicketSpec, Tickets};

/// The version `/info/` reports.
pub const VERSION: &str = concat!("halyard-", env!("CARGO_PKG_VERSION"));
