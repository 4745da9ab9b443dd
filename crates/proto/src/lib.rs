//! Halyard's wire protocols, shared by the host agent, its clients and the Manager.
//!
//! - [`stomp`]: STOMP 1.2 frame codec with size limits.
//! - [`jsonrpc`]: JSON-RPC 2.0 requests, responses, batches, notifications.
//! - [`vdsm`]: VDSM's destinations, verbs (typed params), error codes and events.

pub mod jsonrpc;
pub mod stomp;
pub mod vdsm;
