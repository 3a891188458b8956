//! IPMI v2.0 over LAN (RMCP+, "lanplus"): an async tokio client written on the RustCrypto
//! primitives (hmac, sha1, sha2, aes, cbc).
//!
//! * [`IpmiClient`] implements [`crate::PowerControl`]: each operation opens an RMCP+
//!   session (cipher suite 17 if the BMC offers it, else 3; the BMC's answer is
//!   remembered per address for [`DEFAULT_SUITE_CACHE_TTL`]), raises it to
//!   administrator, sends one command and closes the session, all within
//!   [`IpmiConfig::timeout`], retransmitting lost datagrams every
//!   [`IpmiConfig::attempt_timeout`].
//! * The protocol itself is sans-IO and panic-free on any input: packet framing in
//!   `wire`, RAKP and session protection in `session` and `crypto`, command data in
//!   `cmd`. Only `client` touches a socket or the clock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ironboot_bmc::{BootMode, PowerControl, ipmi::{IpmiClient, IpmiConfig}};
//! let bmc = IpmiClient::new(IpmiConfig::new("10.0.0.21", "admin", "password"))?;
//! bmc.pxe_boot_once(BootMode::Uefi).await?;
//! bmc.power_on().await?;
//! # Ok(()) }
//! ```

mod client;
mod cmd;
mod crypto;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod session;
mod suite_cache;
mod wire;

pub use client::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_PORT, DEFAULT_RETRIES, DEFAULT_TIMEOUT, IpmiClient,
    IpmiConfig, IpmiConfigError, MAX_PASSWORD_LEN, MAX_USERNAME_LEN,
};
pub use cmd::{BootOverride, ChassisControl};
pub use crypto::CipherSuite;
pub use suite_cache::DEFAULT_SUITE_CACHE_TTL;
