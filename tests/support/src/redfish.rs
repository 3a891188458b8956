//! One sushy-tools Redfish emulator (fake driver) per test: own port, config, users and
//! state in a temp dir, killed by PID on drop. The one harness of the Redfish, selection
//! and CLI tests (the bmc crate's and the root package's `bmc_cli` suite): the
//! port and password are the test's choice (the selector probes Redfish with the IPMI
//! credentials), and the system is read back over plain HTTP with the standard library
//! (the root crate has no HTTP client). The venv comes from `tests/install-prereqs.sh`
//! (`.venv-tests/redfish`) or `IRONBOOT_SUSHY_EMULATOR`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "admin";

/// The venv's emulator, or a panic saying how to install it (never a skip).
fn emulator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IRONBOOT_SUSHY_EMULATOR") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "IRONBOOT_SUSHY_EMULATOR={} is not a file",
            path.display()
        );
        return path;
    }
    let path = crate::repo_root().join(".venv-tests/redfish/bin/sushy-emulator");
    assert!(
        path.is_file(),
        "this test needs sushy-tools' emulator at .venv-tests/redfish/bin/sushy-emulator (a venv \
         made by tests/install-prereqs.sh, section \"Redfish emulator\"): run `sudo \
         tests/install-prereqs.sh`, or point IRONBOOT_SUSHY_EMULATOR at a sushy-emulator whose \
         venv also has bcrypt"
    );
    path
}

/// A fake system of the emulator.
pub struct FakeSystem {
    pub uuid: &'static str,
    pub name: &'static str,
    pub power_on: bool,
}

pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Emulator {
    child: Child,
    pub port: u16,
    pub https: bool,
    password: String,
    dir: tempfile::TempDir,
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Emulator {
    /// An emulator on a free port.
    pub fn start(systems: &[FakeSystem], tls: Option<Tls>, password: &str) -> Emulator {
        Self::start_on(free_port(), systems, tls, password)
    }

    /// An emulator on `port`, user [`USER`] with `password`.
    pub fn start_on(
        port: u16,
        systems: &[FakeSystem],
        tls: Option<Tls>,
        password: &str,
    ) -> Emulator {
        let emulator = emulator_binary();
        let python = emulator.with_file_name("python");
        let dir = tempfile::tempdir().expect("temp dir");
        let htpasswd = dir.path().join("htpasswd");
        // sushy's Basic auth wants bcrypt hashes.
        let out = Command::new(&python)
            .arg("-c")
            .arg(format!(
                "import bcrypt; print('{USER}:' + bcrypt.hashpw(b'{password}', bcrypt.gensalt(rounds=4)).decode())"
            ))
            .output()
            .unwrap_or_else(|e| panic!("{} (for bcrypt): {e}", python.display()));
        assert!(
            out.status.success(),
            "bcrypt in {}: {}; run `sudo tests/install-prereqs.sh`",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&htpasswd, &out.stdout).unwrap();

        let mut conf = String::new();
        // The emulator's INFO lines ("power state set to ...") are the peer's own record
        // of what it was asked.
        conf.push_str(
            "import logging\nlogging.getLogger('sushy_tools.emulator.main').setLevel(logging.INFO)\n",
        );
        conf.push_str("SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n");
        conf.push_str(&format!("SUSHY_EMULATOR_LISTEN_PORT = {port}\n"));
        conf.push_str(&format!(
            "SUSHY_EMULATOR_AUTH_FILE = {:?}\n",
            htpasswd.display().to_string()
        ));
        conf.push_str("SUSHY_EMULATOR_FAKE_DRIVER = True\n");
        conf.push_str(&format!(
            "SUSHY_EMULATOR_STATE_DIR = {:?}\n",
            dir.path().join("state").display().to_string()
        ));
        let https = tls.is_some();
        if let Some(tls) = tls {
            let cert = dir.path().join("cert.pem");
            let key = dir.path().join("key.pem");
            std::fs::write(&cert, tls.cert_pem).unwrap();
            std::fs::write(&key, tls.key_pem).unwrap();
            conf.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = {:?}\nSUSHY_EMULATOR_SSL_KEY = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ));
        }
        conf.push_str("SUSHY_EMULATOR_FAKE_SYSTEMS = [\n");
        for (i, s) in systems.iter().enumerate() {
            conf.push_str(&format!(
                "    {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'external_notifier': False, \
                 'nics': [{{'mac': '52:54:00:12:35:{:02x}', 'ip': '10.98.1.{}'}}]}},\n",
                s.uuid,
                s.name,
                if s.power_on { "On" } else { "Off" },
                0x56 + i,
                10 + i
            ));
        }
        conf.push_str("]\n");
        let conf_path = dir.path().join("sushy.conf");
        std::fs::write(&conf_path, conf).unwrap();

        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let child = Command::new(&emulator)
            .arg("--config")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", emulator.display()));
        let mut emu = Emulator {
            child,
            port,
            https,
            password: password.to_owned(),
            dir,
        };
        emu.wait_listening();
        emu
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "sushy-emulator exited ({status}) before listening on {addr}:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sushy-emulator not listening on {addr} after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The emulator's own log (requests and INFO lines such as
    /// `System "<uuid>" power state set to "ForceRestart"`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default()
    }

    /// The reset types the emulator was asked for, in order (from its own log).
    pub fn resets_logged(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("power state set to \""))
            .map(|(_, rest)| rest.trim_end_matches('"').to_owned())
            .collect()
    }

    /// The system resource as the emulator serves it, read with a plain HTTP/1.0 GET
    /// (not our client). Plain-HTTP emulators only.
    pub fn raw_system(&self, uuid: &str) -> serde_json::Value {
        assert!(!self.https, "raw_system reads plain-HTTP emulators only");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let auth = base64(format!("{USER}:{}", self.password).as_bytes());
        write!(
            stream,
            "GET /redfish/v1/Systems/{uuid} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nAccept: application/json\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("reading the answer");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "{head}"
        );
        serde_json::from_str(body).expect("system JSON")
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
