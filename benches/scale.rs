//! Many agents against one real API server (upstream kube-apiserver and etcd built from source,
//! `tests/support/k8s.rs`): `NODEPREP_SCALE_AGENTS` agents (100 by default), each with its own
//! fixture host and Node object, each as the `nodeprep` ServiceAccount with a token bound to a
//! pod on its node, under `daemonset/`'s RBAC and admission policy.
//!
//! Prints, from the API server's audit log and /proc:
//! - requests and writes per agent while starting, and over `NODEPREP_SCALE_IDLE_SECS` idle
//!   seconds (300 by default);
//! - the API server's CPU use and RSS idle without agents, and idle with them;
//! - the time from starting the agents until every Node carries its labels;
//! - the same figures extrapolated to a 5,000-node cluster.
//!
//! `cargo bench --bench scale`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::agent::{Agent, AgentSpec, cpu_ticks_and_rss_kib as cpu_and_rss};
use support::k8s::{Audited, Cluster, Spec, list, node_object, token_holder};

const SA_USER: &str = "system:serviceaccount:nodeprep:nodeprep";
const TICKS_PER_S: f64 = 100.0; // USER_HZ
const CONFIG: &str = "nodeLabels:\n  kata: true\n";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The API server's CPU (cores) and RSS (MiB) over `window`.
fn apiserver_load(pid: u32, window: Duration) -> (f64, f64) {
    let (t0, _) = cpu_and_rss(pid);
    let start = Instant::now();
    std::thread::sleep(window);
    let (t1, rss) = cpu_and_rss(pid);
    ((t1 - t0) as f64 / TICKS_PER_S / start.elapsed().as_secs_f64(), rss as f64 / 1024.0)
}

fn agents_traffic(audit: &[Audited]) -> (usize, usize) {
    let mine: Vec<&Audited> = audit.iter().filter(|a| a.user == SA_USER).collect();
    (mine.len(), mine.iter().filter(|a| a.is_write()).count())
}

fn main() {
    let n = env("NODEPREP_SCALE_AGENTS", 100) as usize;
    let idle = Duration::from_secs(env("NODEPREP_SCALE_IDLE_SECS", 300));
    // Each agent holds three inotify instances (its config directory, the plugin directory,
    // `/dev/vfio`); one machine running many agents needs more than the default 128 per user.
    let limit = "/proc/sys/fs/inotify/max_user_instances";
    let have: usize = std::fs::read_to_string(limit).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let raised = have < 8 * n + 256;
    if raised {
        std::fs::write(limit, (8 * n + 256).to_string())
            .unwrap_or_else(|e| panic!("raise {limit} for {n} agents: {e}"));
    }
    let c = Cluster::start(Spec { kubelet: false, controllers: false });
    let api_pid = c.apiserver_pid().expect("the API server runs");
    c.kubectl_ok(&["apply", "-k", &Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset").display().to_string()]);
    let names: Vec<String> = (0..n).map(|i| format!("node-{i:04}")).collect();
    c.create(&list(names.iter().map(|n| node_object(n)).collect()));
    c.create(&list(names.iter().map(|n| token_holder("nodeprep", "nodeprep", n)).collect()));
    let kubeconfigs: Vec<_> = names.iter().map(|n| c.holder_kubeconfig("nodeprep", "nodeprep", n)).collect();
    let (cpu_without, rss_without) = apiserver_load(api_pid, Duration::from_secs(30));

    // Every agent on its own small fixture host (a KVM guest's six PCI functions).
    // In the cluster's directory, so a failed run keeps the agents' logs with the cluster's.
    let dir = c.dir.path().join("agents");
    std::fs::create_dir_all(&dir).expect("agents dir");
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let trees: Vec<_> = (0..n).map(|_| support::nested_vm()).collect();
    let audit_before = c.audit().len();
    let started = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        let plugins = dir.join(format!("plugins-{i}"));
        std::fs::create_dir_all(&plugins).expect("plugin dir");
        agents.push(Agent::start(AgentSpec {
            host_root: trees[i].root(),
            config: &config,
            plugin_dir: &plugins,
            kubeconfig: Some(&kubeconfigs[i]),
            node_name: name,
            log: dir.join(format!("agent-{i}.log")),
            extra: &[],
        }));
    }
    let spawned = started.elapsed();
    let all_labelled = c.wait_for("every Node labelled", Duration::from_secs(120), |c| {
        let out = c.kubectl_ok(&["get", "nodes", "-l", "nodeprep.io/ready=true", "-o", "name"]);
        (out.lines().count() == n).then(|| started.elapsed())
    });
    // Settle, then count the start-up traffic.
    std::thread::sleep(Duration::from_secs(5));
    let audit = c.audit();
    let (start_requests, start_writes) = agents_traffic(&audit[audit_before..]);
    let idle_from = audit.len();
    let (cpu_with, rss_with) = apiserver_load(api_pid, idle);
    let audit = c.audit();
    let (idle_requests, idle_writes) = agents_traffic(&audit[idle_from..]);
    let failed: Vec<_> = audit[audit_before..].iter().filter(|a| a.user == SA_USER && a.code >= 400).collect();
    let dead = agents.iter_mut().map(|a| a.child.try_wait()).filter(|w| !matches!(w, Ok(None))).count();

    let per = |x: usize| x as f64 / n as f64;
    let idle_min = idle.as_secs_f64() / 60.0;
    println!("{n} agents against one API server (spawned in {:.1} s)", spawned.as_secs_f64());
    println!("  every Node labelled {:.1} s after the first agent started", all_labelled.as_secs_f64());
    println!(
        "  start: {:.2} requests and {:.2} writes per agent; idle {:.0} s: {:.2} requests and {:.2} writes per agent ({:.3} requests/agent/min)",
        per(start_requests),
        per(start_writes),
        idle.as_secs_f64(),
        per(idle_requests),
        per(idle_writes),
        per(idle_requests) / idle_min
    );
    println!(
        "  API server idle: without agents {:.3} cores, {:.0} MiB RSS; with {n} agents {:.3} cores, {:.0} MiB RSS",
        cpu_without, rss_without, cpu_with, rss_with
    );
    println!("  agents' failed requests: {}; agents that exited: {dead}", failed.len());
    let scale = 5000.0;
    println!(
        "  at 5,000 nodes: start {:.0} requests ({:.0} writes) in all; idle {:.1} requests/s, {:.2} writes/s; the API server's extra CPU {:.2} cores (linear in agents)",
        per(start_requests) * scale,
        per(start_writes) * scale,
        per(idle_requests) * scale / idle.as_secs_f64(),
        per(idle_writes) * scale / idle.as_secs_f64(),
        (cpu_with - cpu_without).max(0.0) * scale / n as f64
    );
    drop(agents);
    if raised {
        let _ = std::fs::write(limit, have.to_string());
    }
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(dead, 0, "agents exited");
}
