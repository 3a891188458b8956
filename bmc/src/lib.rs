//! BMC power control for ironboot: one `PowerControl` trait with IPMI v2.0 RMCP+,
//! Redfish and HTTP-power-API back ends.
//!
//! This crate is a placeholder in the workspace layout; its back ends are built
//! under the BMC issue (see README.md, "Status").
