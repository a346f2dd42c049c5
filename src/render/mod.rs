//! Sink: a manifest -> human and machine readable listings. Nothing here
//! touches the filesystem; each renderer writes to any [`std::io::Write`].
//!
//! - [`text`]: one line per entry, for people (`ocix show M`).
//! - [`json`]: the whole manifest as a JSON array of entry objects
//!   (`ocix show --json M`).
//! - [`mtree`]: a BSD mtree specification that `mtree -f SPEC -p DIR` checks
//!   a real tree against (`ocix show --mtree M`).
//!
//! The small formatting helpers ([`escape`], [`format_time`],
//! [`format_mode`]) live in [`crate::manifest::notation`], shared with the
//! drift report in [`crate::diff`] so both speak the same notation.

pub mod json;
pub mod mtree;
pub mod text;

pub use json::write_json;
pub use mtree::write_mtree;
pub use text::write_text;

pub use crate::manifest::notation::{escape, format_mode, format_time};
