//! The REST API (oVirt Engine API v4).

pub mod access;
pub mod affinity;
pub mod cdroms;
pub mod consoles;
pub mod fencing;
pub mod handlers;
pub mod initialization;
pub mod inventory;
pub mod jointokens;
pub mod json;
pub mod kinds;
pub mod macpools;
pub mod model;
pub mod node;
pub mod numa;
pub mod quotas;
pub mod records;
pub mod render;
pub mod search;
pub mod statistics;
pub mod storage;
pub mod tags;
pub mod transfers;
pub mod validate;
pub mod vmpools;
