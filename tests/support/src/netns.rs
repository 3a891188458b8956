//! Two network namespaces joined by a veth pair, for tests that run a server in one and its
//! clients in the other.
//!
//! Dropping a [`VethPair`] deletes both namespaces, and with them the pair; stop the
//! processes started in them first (`process::stop`).

use std::process::{Command, Output, Stdio};

use crate::prereqs;
use crate::process::run_ok;

/// The server's and the clients' namespaces and their ends of the veth pair.
pub struct VethPair {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
}

impl VethPair {
    /// Namespaces `<tag><pid><label>-srv` / `-cli` with loopback up, joined by a veth pair
    /// whose ends carry `server_cidr` and `client_cidr` and are up. `tag` (2 letters) and
    /// `label` (a few) keep names unique per suite and per test; interface names stay
    /// within Linux's 15 bytes.
    pub fn new(tag: &str, label: &str, server_cidr: &str, client_cidr: &str) -> VethPair {
        let pid = std::process::id();
        let pair = VethPair {
            server_ns: format!("ib{tag}{pid}{label}-srv"),
            client_ns: format!("ib{tag}{pid}{label}-cli"),
            server_if: format!("{tag}{}{label}s", pid % 100_000),
            client_if: format!("{tag}{}{label}c", pid % 100_000),
        };
        for ns in [&pair.server_ns, &pair.client_ns] {
            // Left over only by a crashed run of this very PID.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .env("PATH", prereqs::path_env())
                .stderr(Stdio::null())
                .status();
            run_ok("ip", &["netns", "add", ns]);
            run_ok("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run_ok(
            "ip",
            &[
                "-n",
                &pair.server_ns,
                "link",
                "add",
                &pair.server_if,
                "type",
                "veth",
                "peer",
                "name",
                &pair.client_if,
                "netns",
                &pair.client_ns,
            ],
        );
        for (ns, ifname, cidr) in [
            (&pair.server_ns, &pair.server_if, server_cidr),
            (&pair.client_ns, &pair.client_if, client_cidr),
        ] {
            run_ok(
                "ip",
                &["-n", ns, "addr", "add", cidr, "brd", "+", "dev", ifname],
            );
            run_ok("ip", &["-n", ns, "link", "set", ifname, "up"]);
        }
        pair
    }

    /// Run `program args` in namespace `ns`, killed after `limit_s` seconds.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str], limit_s: u32) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "timeout",
                "-k",
                "5",
                &limit_s.to_string(),
            ])
            .arg(program)
            .args(args)
            .env("PATH", prereqs::path_env())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program} {args:?} in {ns}: {e}"))
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .env("PATH", prereqs::path_env())
                .status();
        }
    }
}
