//! The REST API (oVirt Engine API v4).

pub mod handlers;
pub mod inventory;
pub mod jointokens;
pub mod model;
pub mod node;
pub mod render;
pub mod search;
pub mod storage;
pub mod tags;
pub mod validate;
