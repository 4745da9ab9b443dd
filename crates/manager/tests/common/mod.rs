pub mod failover;
