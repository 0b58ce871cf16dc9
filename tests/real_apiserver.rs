//! nodeprep against the upstream kube-apiserver and etcd (built from source, `support::k8s`):
//! the manifests under real schema validation, the agent as its ServiceAccount under the real
//! Node+RBAC authorizer and admission, server-side apply of its labels as the real server does
//! it (managedFields, ownership taken and released by others' writes), its Events, the checkup
//! writing its verdict, and the writes it sends, counted from the API server's audit log.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::{Agent, AgentSpec, replace_file};
use support::intel_gpu_server;
use support::k8s::{Cluster, NODE, Spec, list, node_object};

const SA_USER: &str = "system:serviceaccount:nodeprep:nodeprep";
const OTHER_NODE: &str = "worker-1";
const WAIT: Duration = Duration::from_secs(30);
/// No devices: no device plugins to register, so readiness is the labels alone.
const CONFIG: &str = "nodeLabels:\n  kata: true\n";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The cluster with nodeprep installed from `daemonset/` and two Nodes, as an admin would have
/// them (no kubelet: the Nodes are made by the admin).
fn installed() -> Cluster {
    let c = Cluster::start(Spec { kubelet: false, controllers: false });
    c.create(&list(vec![node_object(NODE), node_object(OTHER_NODE)]));
    c.kubectl_ok(&["apply", "-k", &repo("daemonset").display().to_string()]);
    c
}

/// A token for `sa` bound to a pod on `NODE`, as the kubelet asks the TokenRequest API for one.
fn agent_kubeconfig(c: &Cluster, sa: &str) -> PathBuf {
    c.pod_bound_kubeconfig("nodeprep", sa, NODE)
}

fn start_agent(tree: &support::HostTree, dir: &Path, config: &Path, kubeconfig: &Path, log: &str) -> Agent {
    let plugin_dir = dir.join("device-plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    Agent::start(AgentSpec {
        host_root: tree.root(),
        config,
        plugin_dir: &plugin_dir,
        kubeconfig: Some(kubeconfig),
        node_name: NODE,
        log: dir.join(log),
        extra: &[],
    })
}

/// The labels the library computes for this host, `ready` included.
fn expected_labels(root: &Path, kata: bool) -> BTreeMap<String, String> {
    support::agent::expected_labels(root, true, kata)
}

fn labels(node: &Value) -> BTreeMap<String, String> {
    node["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// Label keys each field manager owns, from the real server's `managedFields`.
fn owners(node: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in node["metadata"]["managedFields"].as_array().into_iter().flatten() {
        let manager = format!("{}/{}", m["manager"].as_str().unwrap_or("?"), m["operation"].as_str().unwrap_or("?"));
        for key in nodeprep::cluster::labels::owned_label_keys(&m["fieldsV1"]) {
            out.entry(key).or_default().push(manager.clone());
        }
    }
    out
}

fn agent_requests(c: &Cluster) -> Vec<support::k8s::Audited> {
    c.audit().into_iter().filter(|a| a.user == SA_USER).collect()
}

fn agent_writes(c: &Cluster) -> Vec<support::k8s::Audited> {
    agent_requests(c).into_iter().filter(|a| a.is_write()).collect()
}

#[test]
fn manifests_are_accepted_and_the_agent_works_with_least_privilege() {
    let c = installed();
    // Every object of both kustomizations exists as applied (real schema validation ran on each).
    c.kubectl_ok(&["apply", "-k", &repo("daemonset/checkup").display().to_string()]);
    for dir in ["daemonset", "daemonset/checkup"] {
        let names = c.kubectl_ok(&["get", "-k", &repo(dir).display().to_string(), "-o", "name"]);
        let resources = std::fs::read_to_string(repo(dir).join("kustomization.yaml")).expect("kustomization");
        let files = resources.lines().filter(|l| l.trim_start().starts_with("- ") && l.contains(".yaml")).count();
        assert!(names.lines().count() >= files, "{dir}: {files} files, objects:\n{names}");
    }
    let ds = c.object("/apis/apps/v1/namespaces/nodeprep/daemonsets/nodeprep").expect("the DaemonSet");
    assert_eq!(ds["spec"]["template"]["spec"]["serviceAccountName"], "nodeprep");

    let tree = intel_gpu_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let kubeconfig = agent_kubeconfig(&c, "nodeprep");

    // Outside its role: 403 from the real authorizer (and, for another Node, from the
    // admission policy that ties the token to its node).
    let as_agent = |args: &[&str]| support::k8s::kubectl_at(&kubeconfig, args);
    let forbidden = [
        vec!["get", "secrets", "-n", "nodeprep"],
        vec!["get", "secrets", "-A"],
        vec!["get", "nodes"],
        vec!["label", "node", OTHER_NODE, "nodeprep.io/iommu=true"],
        vec!["run", "intruder", "-n", "nodeprep", "--image=example.invalid/x", "--restart=Never"],
        vec!["delete", "node", OTHER_NODE],
        vec!["get", "configmaps", "-n", "kube-system"],
    ];
    for args in &forbidden {
        let out = as_agent(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Forbidden"), "kubectl {args:?} as the agent: {err}");
    }
    // The other Node: RBAC allows the verb, the admission policy refuses the node.
    let other = as_agent(&["label", "node", OTHER_NODE, "nodeprep.io/iommu=true"]);
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("nodeprep may change only the Node its pod runs on"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let denied = agent_requests(&c).into_iter().filter(|a| a.code == 403).count();
    assert!(denied >= forbidden.len(), "the audit log shows {denied} 403s for the agent");
    assert!(c.node().is_some_and(|n| {
        !labels(&c.object(&format!("/api/v1/nodes/{OTHER_NODE}")).expect("other")).contains_key(nodeprep::labels::IOMMU)
            && n["metadata"]["name"] == NODE
    }));
    let before = agent_requests(&c).len();

    // Inside it: the agent labels its node, watches it and posts Events, with no 403.
    let mut agent = start_agent(&tree, dir.path(), &config, &kubeconfig, "agent.log");
    assert!(agent.wait_ready(WAIT), "never ready: {:?}\n{}", agent.get("/readyz"), agent.logs());
    let want = expected_labels(tree.root(), true);
    let node = c.node().expect("node");
    let got = labels(&node);
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "{k} on the Node: {got:?}\n{}", agent.logs());
    }
    replace_file(&config, "hugepages:\n  - size: 3Mi\n    pages: 1\n");
    let events = c.wait_for("the ConfigRefused Event", WAIT, |c| {
        let out = c.kubectl_ok(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={NODE}"),
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let items = v["items"].as_array()?.clone();
        items.iter().any(|e| e["reason"] == "ConfigRefused").then_some(items)
    });
    let refused = events.iter().find(|e| e["reason"] == "ConfigRefused").expect("event");
    assert_eq!(refused["type"], "Warning");
    assert_eq!(refused["involvedObject"]["kind"], "Node");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("3Mi")), "{refused}");
    let mine: Vec<_> = agent_requests(&c).into_iter().skip(before).collect();
    assert!(mine.iter().any(|a| a.verb == "watch" && a.resource == "nodes"), "{mine:#?}");
    assert!(mine.iter().any(|a| a.verb == "patch" && a.resource == "nodes" && a.code == 200), "{mine:#?}");
    assert!(mine.iter().any(|a| a.verb == "create" && a.resource == "events" && a.code == 201), "{mine:#?}");
    assert!(mine.iter().all(|a| a.user_agent == nodeprep::cluster::USER_AGENT), "{mine:#?}");
    // Every request is authorized and none fails. The node's pods are watched; NodeMaintenance
    // (OpenShift's Node Maintenance Operator, absent here) is looked for only on a cordoned node.
    assert!(mine.iter().any(|a| a.verb == "watch" && a.resource == "pods" && a.code == 200), "{mine:#?}");
    let failed: Vec<_> = mine.iter().filter(|a| a.code >= 400).collect();
    assert!(failed.is_empty(), "the agent's own requests failed: {failed:#?}");
    assert!(!mine.iter().any(|a| a.resource == "nodemaintenances"), "{mine:#?}");
    assert_eq!(agent.terminate(), Some(0), "{}", agent.logs());
}

#[test]
fn server_side_apply_of_the_labels_on_the_real_api_server() {
    let c = installed();
    let tree = intel_gpu_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let kubeconfig = agent_kubeconfig(&c, "nodeprep");
    let mut agent = start_agent(&tree, dir.path(), &config, &kubeconfig, "agent.log");
    assert!(agent.wait_ready(WAIT), "never ready: {:?}\n{}", agent.get("/readyz"), agent.logs());
    let want = expected_labels(tree.root(), true);
    let carries = |c: &Cluster, want: &BTreeMap<String, String>| {
        c.node().filter(|n| {
            let l = labels(n);
            want.iter().all(|(k, v)| l.get(k) == Some(v))
        })
    };
    let node = c.wait_for("the labels", WAIT, |c| carries(c, &want));

    // Owned by the field manager "nodeprep", through Apply, and by nothing else.
    let own = owners(&node);
    for k in want.keys() {
        assert_eq!(own.get(k), Some(&vec!["nodeprep/Apply".to_owned()]), "{k}: {own:?}");
    }
    assert_eq!(labels(&node).get("kubernetes.io/hostname").map(String::as_str), Some(NODE));

    // Someone else overwrites one of its labels: theirs now; nodeprep leaves it alone.
    let key = nodeprep::labels::IOMMU;
    let theirs = format!("{key}=admin-says");
    c.kubectl_ok(&["label", "node", NODE, "--overwrite", &theirs]);
    let node = c.node().expect("node");
    assert_eq!(owners(&node).get(key), Some(&vec!["kubectl-label/Update".to_owned()]), "{:?}", owners(&node));
    let writes = agent_writes(&c).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(labels(&c.node().expect("node")).get(key).map(String::as_str), Some("admin-says"));
    assert_eq!(agent_writes(&c).len(), writes, "nodeprep fought over a label someone else owns");
    // Released (removed by its owner): nodeprep takes it back.
    c.kubectl_ok(&["label", "node", NODE, &format!("{key}-")]);
    let node = c.wait_for("the label taken back", WAIT, |c| carries(c, &want));
    assert_eq!(owners(&node).get(key), Some(&vec!["nodeprep/Apply".to_owned()]));

    // One of its own labels removed by someone: put back.
    c.kubectl_ok(&["label", "node", NODE, &format!("{}-", nodeprep::labels::KVM)]);
    c.wait_for("the removed label put back", WAIT, |c| carries(c, &want));

    // A config change releases a key: the real server removes it with nodeprep's ownership.
    replace_file(&config, "nodeLabels:\n  kata: false\n");
    let node = c.wait_for("the Kata key released", WAIT, |c| {
        c.node().filter(|n| !labels(n).contains_key(nodeprep::labels::KATA))
    });
    let fewer = expected_labels(tree.root(), false);
    assert_eq!(
        labels(&node)
            .into_iter()
            .filter(|(k, _)| k.starts_with("nodeprep.io/") || k.starts_with("feature.node"))
            .collect::<BTreeMap<_, _>>(),
        fewer
    );
    assert!(!owners(&node).contains_key(nodeprep::labels::KATA));

    // A restarted agent sends no write when nothing changed. (SIGKILL: a SIGTERM withdraws
    // `ready` on purpose, so the start after it writes that one label back.)
    c.wait_for("the labels settled", WAIT, |c| carries(c, &fewer));
    std::thread::sleep(Duration::from_secs(1));
    let settled = agent_writes(&c).len();
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let mut agent = start_agent(&tree, dir.path(), &config, &kubeconfig, "agent2.log");
    assert!(agent.wait_ready(WAIT), "{}", agent.logs());
    let reads_at = agent_requests(&c).len();
    assert!(
        agent_requests(&c).iter().filter(|a| a.verb == "get" && a.resource == "nodes").count() >= 2,
        "the restarted agent read its Node"
    );

    // Idle: over 60 s the audit log shows no write from the agent.
    let idle = Duration::from_secs(std::env::var("NODEPREP_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let start = Instant::now();
    std::thread::sleep(idle);
    let writes = agent_writes(&c);
    assert_eq!(
        writes.len(),
        settled,
        "writes after a restart with nothing changed or while idle: {:#?}",
        &writes[settled..]
    );
    let reads = agent_requests(&c).len() - reads_at;
    eprintln!(
        "restart and idle {:.0} s: 0 writes, {reads} other requests from the agent",
        start.elapsed().as_secs_f64()
    );
    // SIGTERM: `ready` withdrawn, in one write.
    assert_eq!(agent.terminate(), Some(0), "{}", agent.logs());
    c.wait_for("ready withdrawn", WAIT, |c| c.node().filter(|n| !labels(n).contains_key(nodeprep::labels::READY)));
    assert_eq!(agent_writes(&c).len(), settled + 1);
}

#[test]
fn the_checkup_writes_its_verdict_under_its_own_role() {
    let c = installed();
    c.kubectl_ok(&["apply", "-k", &repo("daemonset/checkup").display().to_string()]);
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "nodeprep-checkup-config",
        "-n",
        "nodeprep",
        "--type=merge",
        "-p",
        r#"{"data":{"spec.param.requirements":"iommu,passthrough,kata,hugepages,vfio","spec.timeout":"30s"}}"#,
    ]);
    let kubeconfig = agent_kubeconfig(&c, "nodeprep-checkup");
    let tree = intel_gpu_server();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .arg("--host-root")
        .arg(tree.root())
        .arg("checkup")
        .env("KUBECONFIG", &kubeconfig)
        .env("CONFIGMAP_NAMESPACE", "nodeprep")
        .env("CONFIGMAP_NAME", "nodeprep-checkup-config")
        .env("NODE_NAME", NODE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run nodeprep checkup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cm = c.object("/api/v1/namespaces/nodeprep/configmaps/nodeprep-checkup-config").expect("configmap");
    let data = &cm["data"];
    assert_eq!(data["status.succeeded"], "true", "{data}");
    assert_eq!(data["status.failureReason"], "", "{data}");
    assert!(data["status.completionTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{data}");
    // Its writes are merge patches by its own ServiceAccount, all accepted.
    let user = "system:serviceaccount:nodeprep:nodeprep-checkup";
    let mine: Vec<_> = c.audit().into_iter().filter(|a| a.user == user).collect();
    assert!(mine.iter().any(|a| a.verb == "patch" && a.resource == "configmaps" && a.code == 200), "{mine:#?}");
    assert!(mine.iter().all(|a| a.code < 400), "{mine:#?}");
    // And nothing beyond its role: the agent's ConfigMap is out of its reach.
    let other = support::k8s::kubectl_at(&kubeconfig, &["get", "configmap", "nodeprep-config", "-n", "nodeprep"]);
    assert!(String::from_utf8_lossy(&other.stderr).contains("Forbidden"));
}
