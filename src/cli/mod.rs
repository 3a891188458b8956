//! The command line: the flags (the Go provider's, unchanged, and ironboot's own) and the
//! tools' subcommands, their validation into the settings each part of ironboot runs
//! with, and the logging filter.

pub(crate) mod config;
pub(crate) mod flags;
pub(crate) mod go_duration;
pub(crate) mod log_filter;
pub(crate) mod validate;
