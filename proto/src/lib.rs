//! Protocol definitions for ironboot: the COSI State API, Omni's infra resources, the
//! provider's private resources, the metal-agent API and the gRPC tunnel.
//!
//! This crate is a placeholder in the workspace layout; its .proto files are written
//! under the Omni client issue (see README.md, "Status").
