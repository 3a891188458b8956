//! SIGTERM stops the standalone server cleanly: exit status 0, and every service logged
//! as stopped in the supervisor's order (the edges first, the HTTP drain after them, the
//! machine store last).
//!
//! The server runs in a network namespace of its own (`unshare -n`, loopback only), so
//! its ports (TFTP 69, ProxyDHCP 67/4011) never meet another test's.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ironboot_test_support::launch;

/// Polls `log` until it holds `needle`, or panics after `within`.
fn wait_for_log(log: &std::path::Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log within {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_every_service_in_order_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ipxe = dir.path().join("ipxe");
    fs::create_dir(&ipxe).unwrap();
    fs::write(ipxe.join("snponly.efi"), vec![0x5a; 64 * 1024]).unwrap();
    let state = dir.path().join("state");
    let log_path = dir.path().join("ironboot.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = launch::standalone_on_loopback(8080)
        .arg("--state-dir")
        .arg(&state)
        .arg("--ipxe-dir")
        .arg(&ipxe)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) runs ironboot in a network namespace");
    wait_for_log(&log_path, "HTTP API listening", Duration::from_secs(60));

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "ironboot still running 30 s after SIGTERM:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains("shutting down") && text.contains("SIGTERM"),
        "{text}"
    );
    let stopped: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("service stopped"))
        .filter_map(|l| l.split("service=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        stopped,
        ["ProxyDHCP", "TFTP", "HTTP API", "machine store"],
        "{text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
}
