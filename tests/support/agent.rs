//! `nodeprep run` as the DaemonSet runs it, as a child process, next to a kubelet stand-in
//! ([`super::kubelet`]) and an API-server stand-in ([`super::apiserver`]): for the agent's
//! end-to-end tests and its benchmark.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kubelet::Kubelet;

/// The labels the library computes for the host at `root` (what the agent must put on its Node).
pub fn expected_labels(root: &Path, ready: bool, kata: bool) -> std::collections::BTreeMap<String, String> {
    let root = nodeprep::host::HostRoot::new(root);
    let facts = nodeprep::host::system::read_system(&root).expect("facts");
    let inv = nodeprep::host::pci::discover(&root).expect("inventory");
    let report = nodeprep::eligibility::evaluate(&facts, &inv);
    nodeprep::labels::desired(nodeprep::labels::LabelInputs {
        report: &report,
        facts: &facts,
        ready,
        manage_kata: kata,
    })
}

/// (utime + stime) in clock ticks, and VmRSS in KiB, of process `pid`, from /proc.
pub fn cpu_ticks_and_rss_kib(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

/// Starts a kubelet stand-in serving `dir` on a thread and runtime of its own.
pub fn spawn_kubelet(dir: PathBuf) -> Kubelet {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            tx.send(Kubelet::start(&dir).await).expect("hand over");
            std::future::pending::<()>().await
        });
    });
    rx.recv().expect("kubelet started")
}

/// A free TCP port on 127.0.0.1 (free when asked; the agent binds it right after).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A running `nodeprep run`; killed when dropped.
pub struct Agent {
    pub child: Child,
    pub listen: SocketAddr,
    pub started: Instant,
    pub log: PathBuf,
}

/// How to start it.
pub struct AgentSpec<'a> {
    pub host_root: &'a Path,
    pub config: &'a Path,
    pub plugin_dir: &'a Path,
    /// `None`: `--no-kube`.
    pub kubeconfig: Option<&'a Path>,
    pub node_name: &'a str,
    pub log: PathBuf,
    pub extra: &'a [&'a str],
}

impl Agent {
    pub fn start(spec: AgentSpec<'_>) -> Agent {
        Agent::start_binary(Path::new(env!("CARGO_BIN_EXE_nodeprep")), spec)
    }

    pub fn start_binary(binary: &Path, spec: AgentSpec<'_>) -> Agent {
        let listen = free_port();
        let log = std::fs::File::create(&spec.log).expect("log file");
        let mut cmd = Command::new(binary);
        cmd.arg("--host-root")
            .arg(spec.host_root)
            .args(["--log-level", "info", "run", "--no-bind", "--config"])
            .arg(spec.config)
            .arg("--plugin-dir")
            .arg(spec.plugin_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(spec.extra)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", spec.plugin_dir)
            .env("NODE_NAME", spec.node_name)
            .stdout(Stdio::null())
            .stderr(log);
        match spec.kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            None => cmd.arg("--no-kube"),
        };
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn nodeprep run");
        Agent { child, listen, started, log: spec.log }
    }

    /// `GET path` on the agent's HTTP port: (status, body); `None` when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.listen, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((code, body))
    }

    /// Polls until `/readyz` answers 200 (true) or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.get("/readyz").is_some_and(|(c, _)| c == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (utime + stime) in clock ticks, and VmRSS in KiB, from /proc.
    pub fn cpu_ticks_and_rss_kib(&self) -> (u64, u64) {
        cpu_ticks_and_rss_kib(self.child.id())
    }

    /// `/proc/<pid>/smaps_rollup`: (anonymous KiB, file-backed KiB) of the resident set.
    pub fn rss_breakdown_kib(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (rss, anon) = (field("Rss:"), field("Anonymous:"));
        (anon, rss.saturating_sub(anon))
    }

    /// SIGTERM, then the exit code (None when killed by a signal or still running after 10 s).
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `path` the way the kubelet updates a ConfigMap volume: a new file renamed over it.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
