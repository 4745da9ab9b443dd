//! Pieces shared by every Halyard role.

pub mod fsutil;
pub mod limits;
pub mod logging;
pub mod net;
pub mod text;
pub mod xml;
