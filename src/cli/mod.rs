//! The command line: the flags (the Go provider's, unchanged, and ironboot's own), their
//! validation into the settings each part of ironboot runs with, and the logging filter.

pub(crate) mod config;
pub(crate) mod go_duration;
pub(crate) mod log_filter;
