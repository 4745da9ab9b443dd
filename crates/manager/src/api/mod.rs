//! The REST API (oVirt Engine API v4).

pub mod node;
