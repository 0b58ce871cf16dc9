//! The agent in this process (`nodeprep::agent::run` on a thread and runtime of its own), over
//! the simulated kernel (`super::kernel_sim`) and a fixture host, against a real cluster
//! (`super::k8s`): its sysfs writes go to the simulator instead of being plain file writes;
//! everything else is the agent as it ships. For the DRA end-to-end test and benchmark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeprep::bind::KernelFactory;
use nodeprep::host::HostRoot;

use super::k8s::{Cluster, NODE};
use super::kernel_sim::KernelSim;

/// Where an agent over a fixture host finds its files and the cluster.
pub struct AgentPaths {
    pub root: PathBuf,
    pub config: PathBuf,
    pub kubeconfig: PathBuf,
    pub plugin_dir: PathBuf,
    pub kubelet_dir: PathBuf,
}

/// Connects with `kubeconfig` and runs the agent as it ships (binding on, the cluster, the node
/// [`NODE`]) over `kernel` until `stop` resolves; `rescan` is its safety-net rescan interval.
pub async fn run_agent(
    paths: AgentPaths,
    listen: SocketAddr,
    rescan: Duration,
    kernel: KernelFactory,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let source = nodeprep::cluster::Source::Kubeconfig(paths.kubeconfig);
    let client = nodeprep::cluster::connect(&source).await.map_err(|e| e.to_string())?;
    let opts = nodeprep::agent::AgentOptions {
        root: HostRoot::new(&paths.root),
        config_path: paths.config,
        plugin_dir: Some(paths.plugin_dir),
        bind: true,
        rescan_interval: rescan,
        listen,
        cluster: Some(nodeprep::agent::ClusterOptions {
            client,
            labeler: nodeprep::cluster::node::LabelerOptions::new(NODE),
        }),
        kubelet_dir: Some(paths.kubelet_dir),
        kernel,
    };
    nodeprep::agent::run(opts, stop).await.map_err(|e| e.to_string())
}

/// The agent, in-process, over the simulated kernel; stopped (and joined) when dropped.
pub struct InProcessAgent {
    /// Where it serves `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl InProcessAgent {
    pub fn start(root: &Path, config: &Path, kubeconfig: &Path, c: &Cluster) -> InProcessAgent {
        let base = KernelSim::at(root);
        let kernel = KernelFactory::new(move |_root: &HostRoot| Box::new(base.restarted()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (root, config, kubeconfig) = (root.to_owned(), config.to_owned(), kubeconfig.to_owned());
        let (plugin_dir, kubelet_dir) = (c.plugin_dir(), c.kubelet_root.clone());
        let listen = super::agent::free_port();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            let paths = AgentPaths { root, config, kubeconfig, plugin_dir, kubelet_dir };
            rt.block_on(run_agent(paths, listen, Duration::from_secs(3600), kernel, async {
                let _ = stopped.await;
            }))
        });
        InProcessAgent { listen, stop: Some(stop), thread: Some(thread) }
    }

    /// Whether its thread is still running (`false`: `nodeprep::agent::run` returned or panicked).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
