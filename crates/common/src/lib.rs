//! Pieces shared by every Halyard role.

pub mod fsutil;
pub mod logging;
pub mod text;
