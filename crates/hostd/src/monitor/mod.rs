//! Sampling of the host (VM samples come from libvirt's bulk stats, see `agent`).

pub mod host;
