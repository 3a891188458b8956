//! What ironboot runs with, once the flags are validated: the boot server's settings,
//! which every mode shares, and the mode. The mode is in the type: Omni's settings exist
//! only in Omni mode, the inventory only standalone.

use std::path::PathBuf;

use crate::boot::config::ServerConfig;
use crate::provider::mode::OmniConfig;

/// Validated runtime configuration ([`Config::from_cli`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// The boot server: addresses, ports, ProxyDHCP, TFTP, HTTP, the store.
    pub(crate) server: ServerConfig,
    /// Standalone, or Omni's bare-metal infrastructure provider.
    pub(crate) mode: Mode,
}

/// How machines' boots are decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No Omni (`--omni-api-endpoint` empty): the inventory decides.
    Standalone(Standalone),
    /// Omni decides (`--omni-api-endpoint`). Boxed: far larger than the standalone
    /// settings, and built once.
    Omni(Box<OmniConfig>),
}

/// Standalone mode's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Standalone {
    /// `--inventory`: the machines' boot targets (without it, every machine boots from
    /// its disk).
    pub(crate) inventory: Option<PathBuf>,
    /// `--use-local-boot-assets`: the `--boot-assets-path` directory served on
    /// `/assets/`.
    pub(crate) assets: Option<PathBuf>,
}

impl Mode {
    /// The mode's name, for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Mode::Standalone(_) => "standalone",
            Mode::Omni(_) => "omni",
        }
    }
}
