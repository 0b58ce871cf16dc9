//! Human-readable text for the command line: listings and reports built from plain data.
pub mod check;
pub mod scan;
pub mod status;
