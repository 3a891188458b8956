//! `tests/check-log-secrets.py`, the suite's check that no ironboot log line carries a
//! secret, run on log directories made here: it must fail on every planted secret (as
//! it is, inside base64, as a line of an armored key, with escaped newlines), name the
//! file and line without printing the secret, pass on clean logs, and refuse to pass
//! when it would prove nothing (no log, no secret, no debug line, a secret too short).
//! Needs `python3` and `grep` (tests/install-prereqs.sh).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const CHECKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check-log-secrets.py");

/// A DEBUG line as ironboot writes it (tracing's fmt layer, no colours).
const DEBUG_LINE: &str =
    "2026-12-07T08:00:00.000000Z DEBUG ironboot::http: request served route=\"boot_script\"\n";

fn check(dir: &Path) -> Output {
    Command::new("python3")
        .arg(CHECKER)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("running python3 {CHECKER}: {e} (install python3: tests/install-prereqs.sh)")
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn record(dir: &Path, what: &str, secret: &str) {
    let line = serde_json::json!({"what": what, "secret": secret}).to_string() + "\n";
    let path = dir.join("secrets.jsonl");
    let mut all = fs::read_to_string(&path).unwrap_or_default();
    all.push_str(&line);
    fs::write(path, all).unwrap();
}

/// A service-account key as Omni encodes it: base64 of JSON naming an armored key.
fn service_account_key() -> (String, String) {
    let body = [
        "xVgEZ1nKdxYJKwYBBAHaRw8BAQdAq1Wv7bT3jQ2yYt0kz9r8mXc4sLpNwEe5o3Hn",
        "AAEA/0Jr3z6m8VqYw2cNfT1sKd9LxG4aHpU7eRt5oM0bZiQnEhzNJ2JhcmUtbWV0",
    ];
    let armored = format!(
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{}\n{}\n=ab12\n-----END PGP PRIVATE KEY BLOCK-----\n",
        body[0], body[1]
    );
    let json = serde_json::json!({"name": "infra-provider:bare-metal", "pgp_key": armored});
    (STANDARD.encode(json.to_string()), body[1].to_owned())
}

/// A log directory with one clean debug log and the given secrets recorded.
fn clean_dir(secrets: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("lifecycle_scenario-h2c-1-0.log"),
        DEBUG_LINE.repeat(3),
    )
    .unwrap();
    for (what, secret) in secrets {
        record(dir.path(), what, secret);
    }
    dir
}

fn plant(dir: &Path, file: &str, line: &str) {
    let path = dir.join(file);
    let mut log = fs::read_to_string(&path).unwrap_or_default();
    log.push_str(line);
    log.push('\n');
    fs::write(path, log).unwrap();
}

#[test]
fn clean_logs_pass_and_say_what_was_checked() {
    let (key, _) = service_account_key();
    let dir = clean_dir(&[
        ("BMC password", "Vq3-rT8m-Kx2p-Lw9z"),
        ("service-account key", &key),
    ]);
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("1 logs") && said.contains("2 secrets") && said.contains("BMC password"),
        "{said}"
    );
}

#[test]
fn a_planted_secret_fails_naming_file_and_line_without_printing_it() {
    let password = "Vq3-rT8m-Kx2p-Lw9z";
    let dir = clean_dir(&[("BMC password", password)]);
    plant(
        dir.path(),
        "lifecycle_scenario-h2c-1-0.log",
        &format!("2026-12-07T08:00:01Z DEBUG ironboot::bmc: user set up password={password}"),
    );
    let out = check(dir.path());
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("lifecycle_scenario-h2c-1-0.log:4: BMC password"),
        "{said}"
    );
    assert!(
        !said.contains(password),
        "the checker printed the secret: {said}"
    );
}

#[test]
fn a_secret_inside_base64_is_found_at_every_alignment() {
    let password = "Vq3-rT8m-Kx2p-Lw9z";
    for user in ["a", "ab", "abc"] {
        let dir = clean_dir(&[("BMC password", password)]);
        let basic = STANDARD.encode(format!("{user}:{password}"));
        plant(
            dir.path(),
            "bmc_cli-status-2-0.log",
            &format!("DEBUG reqwest: authorization: Basic {basic}"),
        );
        let out = check(dir.path());
        assert_eq!(out.status.code(), Some(1), "user {user:?}: {}", text(&out));
        assert!(
            text(&out).contains("bmc_cli-status-2-0.log:1"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn any_form_of_the_service_account_key_is_found() {
    let (key, body_line) = service_account_key();
    let armored_escaped = {
        let json: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(&key).unwrap()).unwrap();
        json["pgp_key"].as_str().unwrap().replace('\n', "\\n")
    };
    for planted in [
        format!("DEBUG omni: key={key}"),
        format!("DEBUG pgp: packet body {body_line}"),
        format!("DEBUG omni: parsed key {armored_escaped:?}"),
    ] {
        let dir = clean_dir(&[("Omni service-account key", &key)]);
        plant(dir.path(), "omni_conformance-omni_check-3-0.log", &planted);
        let out = check(dir.path());
        assert_eq!(out.status.code(), Some(1), "{planted}: {}", text(&out));
        assert!(
            text(&out).contains("Omni service-account key"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn logs_in_subdirectories_are_scanned_too() {
    let token = "jt-5f1c0a9e33d2b7c4";
    let dir = clean_dir(&[("join token", token)]);
    fs::create_dir(dir.path().join("firmware")).unwrap();
    plant(
        &dir.path().join("firmware"),
        "omni.log",
        &format!("DEBUG ironboot::config: served ?jointoken={token}"),
    );
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("omni.log:1: join token"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_check_that_would_prove_nothing_fails() {
    // No secret recorded.
    let dir = clean_dir(&[]);
    let out = check(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no secret recorded"), "{}", text(&out));

    // No log at all.
    let empty = tempfile::tempdir().unwrap();
    record(empty.path(), "join token", "jt-5f1c0a9e33d2b7c4");
    let out = check(empty.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no *.log"), "{}", text(&out));

    // Logs, but none at debug level.
    let quiet = tempfile::tempdir().unwrap();
    fs::write(quiet.path().join("a.log"), "2026 INFO ironboot: started\n").unwrap();
    record(quiet.path(), "join token", "jt-5f1c0a9e33d2b7c4");
    let out = check(quiet.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("DEBUG"), "{}", text(&out));

    // A secret too short to look for without matching by chance.
    let short = clean_dir(&[("BMC password", "pw")]);
    let out = check(short.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("shorter than"), "{}", text(&out));

    // A directory that does not exist.
    let out = check(&dir.path().join("missing"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
