//! Halyard's Manager (the oVirt engine role).

pub mod api;
pub mod db;
pub mod model;
