pub mod failover;
pub mod guests;
