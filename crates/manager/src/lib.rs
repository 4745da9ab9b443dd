//! Halyard's Manager (the oVirt engine role).
//!
//! - [`server`]: HTTPS, SSO, PKI resource, host registration, the API.
//! - [`api`]: oVirt Engine API v4 documents, search, handlers.
//! - [`state`]: configuration, database, inventory, users and tokens, events.
//! - [`hosts`]: monitoring of host agents.
//! - [`vms`]: scheduler, domain XML, VM actions.
//! - [`register`]: host registration, approval, enrollment.

pub mod api;
pub mod config;
pub mod db;
pub mod hosts;
pub mod memory;
pub mod model;
pub mod register;
pub mod server;
pub mod state;
pub mod vms;
