//! Simulated BMCs for the IPMI, fleet, selection and CLI tests: OpenIPMI's `ipmi_sim`,
//! one process per BMC on its own loopback port with its own state directory and
//! chassis-control log (data files: `bmc/tests/data/ipmi/*`), killed by PID on drop.
//! The one harness of the bmc crate's tests and the root package's.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironboot_bmc::PowerControl;
use ironboot_bmc::ipmi::{IpmiClient, IpmiConfig};

/// The simulator's administrator.
pub const USER: &str = "admin";
/// Its password.
pub const PASSWORD: &str = "password";

const INSTALL_HINT: &str =
    "sudo tests/install-prereqs.sh (or: apt-get install -y --no-install-recommends openipmi)";

/// `bmc/tests/data/ipmi`, the simulator's configuration templates.
pub fn data_dir() -> PathBuf {
    let dir = crate::repo_root().join("bmc/tests/data/ipmi");
    assert!(
        dir.join("lan.conf.in").is_file(),
        "bmc/tests/data/ipmi/lan.conf.in is missing"
    );
    dir
}

/// `ipmi_sim`'s path, or a failure saying how to install it (never a skip).
pub fn ipmi_sim_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("ipmi_sim"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this test needs `ipmi_sim` (Debian package openipmi), which is missing; install: {INSTALL_HINT}")
        })
}

/// A free UDP port on loopback (bound once and released; the simulator takes it next).
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a probe socket");
    socket.local_addr().expect("probe address").port()
}

/// One running simulator.
pub struct SimBmc {
    pub name: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SimBmc {
    /// Starts one simulator (not yet answering: see [`SimBmc::wait_ready`]).
    pub fn start(name: &str) -> Self {
        let binary = ipmi_sim_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let chassis_script = data_dir().join("chassis.sh");
        let port = free_udp_port();
        let template =
            std::fs::read_to_string(data_dir().join("lan.conf.in")).expect("lan.conf.in");
        let conf = template
            .replace("@NAME@", name)
            .replace("@PORT@", &port.to_string())
            .replace("@CHASSIS@", chassis_script.to_str().expect("utf-8 path"));
        let conf_path = dir.path().join("lan.conf");
        std::fs::write(&conf_path, conf).expect("writing lan.conf");
        let state = dir.path().join("sim-state");
        std::fs::create_dir(&state).expect("state dir");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf_path)
            .arg("-f")
            .arg(data_dir().join("bmc.emu"))
            .arg("-s")
            .arg(&state)
            .arg("-n")
            .env("CHASSIS_STATE", dir.path().join("chassis"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ipmi_sim");
        Self {
            name: name.to_owned(),
            port,
            dir,
            child: Some(child),
        }
    }

    /// `127.0.0.1:PORT`, as the IPMI client names this BMC.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client configuration for this simulator.
    pub fn config(&self, timeout: Duration) -> IpmiConfig {
        let mut cfg = IpmiConfig::new("127.0.0.1", USER, PASSWORD);
        cfg.port = self.port;
        cfg.timeout = timeout;
        cfg.attempt_timeout = Duration::from_millis(500);
        cfg
    }

    /// Every command the chassis script got, without its time stamp.
    pub fn chassis_log(&self) -> Vec<String> {
        read_chassis_log(&self.dir.path().join("chassis/log"))
    }

    /// [`SimBmc::chassis_log`] for another thread (a simulated host following its BMC).
    pub fn log_reader(&self) -> impl Fn() -> Vec<String> + Send + 'static {
        let path = self.dir.path().join("chassis/log");
        move || read_chassis_log(&path)
    }

    /// The chassis log without status reads (`get ...`).
    pub fn changes(&self) -> Vec<String> {
        self.chassis_log()
            .into_iter()
            .filter(|l| !l.starts_with("get "))
            .collect()
    }

    /// Writes the simulated chassis' power state directly (as chassis.sh stores it).
    pub fn set_power(&self, on: bool) {
        let dir = self.dir.path().join("chassis");
        std::fs::create_dir_all(&dir).expect("chassis dir");
        std::fs::write(dir.join("power"), if on { "1\n" } else { "0\n" }).expect("power file");
    }

    /// Waits until the simulator answers (it takes a moment to bind its port).
    pub async fn wait_ready(&self) {
        let mut cfg = self.config(Duration::from_millis(400));
        cfg.attempt_timeout = Duration::from_millis(100);
        let client = IpmiClient::new(cfg).expect("valid config");
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            match client.power_status().await {
                Ok(_) => return,
                Err(e) if Instant::now() > until => {
                    panic!("simulated BMC {} never answered: {e}", self.name)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Blocking variant of [`SimBmc::wait_ready`] for tests without a runtime.
    pub fn wait_ready_blocking(&self) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(self.wait_ready());
    }

    /// The simulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("simulator running").id()
    }

    /// Freezes the simulator (SIGSTOP to its PID): it keeps its socket, so datagrams
    /// queue up unanswered, like a BMC whose firmware hangs.
    pub fn freeze(&self) {
        signal(self.pid(), "-STOP");
    }

    /// Lets a frozen simulator run again (SIGCONT to its PID).
    pub fn thaw(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Kills the simulator (by its PID, through our handle).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SimBmc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a signal (`-STOP`, `-CONT`) to one process by PID with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

fn read_chassis_log(path: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_owned())
        .collect()
}
