//! `nodeprep checkup` as the OpenShift Virtualization checkup framework runs it: the real binary,
//! given its ConfigMap by `CONFIGMAP_NAMESPACE`/`CONFIGMAP_NAME` and its node by `NODE_NAME`,
//! against the API-server stand-in (real TCP, every request recorded as it arrived) and a fixture
//! host tree. Each test checks every request on the wire (GET, then JSON merge patches of
//! `data` holding only `status.*` keys) and the ConfigMap's final content: a fit node, unmet
//! requirements, an invalid spec, the wrong node, a resource that never appears (the timeout) and
//! one that appears while the checkup waits, server errors retried, and the exit status.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use nodeprep::checkup::is_configmap_key;
use support::apiserver::{ApiServer, Fault, Request};
use support::cli::{stderr, stdout};

const NS: &str = "vm-checks";
const CM: &str = "nodeprep-checkup-config";
const NODE: &str = "worker-0";
const CM_PATH: &str = "/api/v1/namespaces/vm-checks/configmaps/nodeprep-checkup-config";
const NODE_PATH: &str = "/api/v1/nodes/worker-0";
/// What the intel fixture is fit for (its `dev/kvm` is a plain file, so not `kvm`).
const FIT: &str = "iommu,passthrough,kata,hugepages,vfio";

/// The stand-in with the checkup's ConfigMap holding `data`.
fn server(data: &[(&str, &str)]) -> ApiServer {
    let api = ApiServer::start(NODE, &[("kubernetes.io/hostname", NODE)]);
    api.set_configmap(NS, CM, data);
    api
}

/// `nodeprep --host-root ROOT checkup` as the Job runs it: everything from the environment.
fn checkup_command(api: &ApiServer, root: &Path, node: Option<&str>, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeprep"));
    cmd.arg("--host-root")
        .arg(root)
        .arg("checkup")
        .env("KUBECONFIG", api.write_kubeconfig(dir))
        .env("CONFIGMAP_NAMESPACE", NS)
        .env("CONFIGMAP_NAME", CM)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NODE_NAME");
    if let Some(n) = node {
        cmd.env("NODE_NAME", n);
    }
    cmd
}

fn run(api: &ApiServer, root: &Path, node: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    checkup_command(api, root, node, dir.path()).output().expect("run nodeprep checkup")
}

fn configmap(api: &ApiServer) -> BTreeMap<String, String> {
    api.configmap(NS, CM).expect("the ConfigMap is still there")
}

fn get<'a>(d: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    d.get(key).map(String::as_str).unwrap_or_else(|| panic!("no {key} in {d:#?}"))
}

fn status_keys(d: &BTreeMap<String, String>) -> Vec<&str> {
    d.keys().filter(|k| k.starts_with("status.")).map(String::as_str).collect()
}

/// A timestamp as the framework writes it: RFC 3339, UTC, whole seconds.
fn parse_time(text: &str) -> Timestamp {
    assert!(
        text.len() == 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
        "{text:?} is not YYYY-MM-DDTHH:MM:SSZ"
    );
    text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Every request to the ConfigMap, checked as it arrived: first a GET (more than one only when
/// the API server failed), then only merge patches of `data` with `status.*` keys (strings, or
/// null to remove a previous run's key). Returns the patches' `data` objects.
fn checked_patches(api: &ApiServer) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let reqs: Vec<Request> = api.requests().into_iter().filter(|r| r.path.starts_with("/api/v1/namespaces")).collect();
    assert!(!reqs.is_empty(), "no request to the ConfigMap");
    assert_eq!((reqs[0].method.as_str(), reqs[0].path.as_str()), ("GET", CM_PATH), "first the ConfigMap is read");
    let reads = reqs.iter().take_while(|r| r.method == "GET").count();
    let mut out = Vec::new();
    for r in &reqs[reads..] {
        assert_eq!(r.path, CM_PATH, "{r:?}");
        assert_eq!(r.method, "PATCH", "only PATCH after the GET: {r:?}");
        assert_eq!(r.content_type.as_deref(), Some("application/merge-patch+json"), "{r:?}");
        let body = r.json();
        let obj = body.as_object().unwrap_or_else(|| panic!("body is not an object: {}", r.body));
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["data"], "the body is only data: {}", r.body);
        let data = obj["data"].as_object().unwrap_or_else(|| panic!("data is not an object: {}", r.body)).clone();
        for (k, v) in &data {
            assert!(k.starts_with("status."), "{k}: the checkup writes only status.* keys");
            assert!(is_configmap_key(k), "{k} is not a valid ConfigMap key");
            assert!(v.is_string() || v.is_null(), "{k}: {v}");
        }
        out.push(data);
    }
    // Nothing else is written anywhere.
    let others: Vec<Request> = api
        .requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/api/v1/namespaces"))
        .filter(|r| r.method != "GET" || r.path != NODE_PATH)
        .collect();
    assert!(others.is_empty(), "unexpected requests: {others:?}");
    out
}

/// The patches of a run without faults: the start, then the result.
fn start_and_result(
    api: &ApiServer,
) -> (serde_json::Map<String, serde_json::Value>, serde_json::Map<String, serde_json::Value>) {
    let mut p = checked_patches(api);
    assert_eq!(p.len(), 2, "one start patch and one result patch: {p:#?}");
    let result = p.pop().expect("result");
    let start = p.pop().expect("start");
    (start, result)
}

fn node_gets(api: &ApiServer) -> Vec<Request> {
    api.requests().into_iter().filter(|r| r.path == NODE_PATH).collect()
}

#[test]
fn a_fit_node_succeeds_with_the_facts_behind_each_verdict() {
    let host = support::intel_gpu_server();
    let api = server(&[
        ("spec.timeout", "5m"),
        ("spec.param.nodeName", NODE),
        ("spec.param.requirements", FIT),
        // A previous run's result: removed by the start patch, so runs never mix.
        ("status.succeeded", "false"),
        ("status.failureReason", "old"),
        ("status.result.kvm", "false"),
    ]);
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), format!("checkup {NS}/{CM} on {NODE}: succeeded\n"));

    let (start, result) = start_and_result(&api);
    assert_eq!(
        start.keys().map(String::as_str).collect::<Vec<_>>(),
        ["status.failureReason", "status.result.kvm", "status.startTimestamp", "status.succeeded"]
    );
    assert!(start["status.startTimestamp"].is_string());
    for k in ["status.failureReason", "status.result.kvm", "status.succeeded"] {
        assert!(start[k].is_null(), "{k} of the previous run is removed first");
    }
    assert!(result.values().all(|v| v.is_string()), "the result removes nothing");
    assert!(!result.contains_key("status.startTimestamp"), "the start is written once");

    let cm = configmap(&api);
    // The input is untouched.
    assert_eq!(get(&cm, "spec.timeout"), "5m");
    assert_eq!(get(&cm, "spec.param.requirements"), FIT);
    assert_eq!(get(&cm, "status.succeeded"), "true");
    assert_eq!(get(&cm, "status.failureReason"), "");
    let (started, completed) =
        (parse_time(get(&cm, "status.startTimestamp")), parse_time(get(&cm, "status.completionTimestamp")));
    assert!(started <= completed, "{started} > {completed}");
    assert!(!cm.contains_key("status.result.kvm"), "the stale key is gone and kvm was not asked");
    assert_eq!(get(&cm, "status.result.nodeName"), NODE);
    assert_eq!(get(&cm, "status.result.kernel"), support::machines::intel::OSRELEASE);
    assert_eq!(get(&cm, "status.result.iommuGroups"), "21");
    assert_eq!(get(&cm, "status.result.vfioPciDevices"), "1", "the T4 is on vfio-pci");
    assert_eq!(get(&cm, "status.result.hugepagePools"), "2Mi:2048,1Gi:16");
    for r in FIT.split(',') {
        assert_eq!(get(&cm, &format!("status.result.{r}")), "true", "{r}");
        assert!(!get(&cm, &format!("status.result.{r}Facts")).is_empty(), "{r}Facts");
    }
    assert!(
        get(&cm, "status.result.iommuFacts").starts_with("2 IOMMU units (dmar0, dmar1); 21 IOMMU groups"),
        "{}",
        get(&cm, "status.result.iommuFacts")
    );
    assert!(get(&cm, "status.result.iommuFacts").contains("; kernel command line: intel_iommu=on iommu=pt"));
    assert!(get(&cm, "status.result.passthroughFacts").starts_with("IOMMU on; vfio-pci available"));
    // Every key written is the checkup's: the keys of the result patch, plus the start.
    let mut written: Vec<&str> = result.keys().map(String::as_str).collect();
    written.push("status.startTimestamp");
    written.sort_unstable();
    assert_eq!(status_keys(&cm), written);
    assert!(node_gets(&api).is_empty(), "no resources asked: the Node is not read");
}

#[test]
fn unmet_requirements_fail_with_their_problems_and_exit_0() {
    let host = support::amd_iommu_off();
    let api = server(&[("spec.timeout", "5m"), ("spec.param.requirements", "iommu,kata")]);
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(0), "the result was written: {}", stderr(&out));
    let (_, result) = start_and_result(&api);
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "false");
    let reason = get(&cm, "status.failureReason");
    assert_eq!(
        reason,
        "iommu: no IOMMU units: enable the IOMMU (AMD-Vi) in the firmware; the kernel turns the AMD IOMMU on by itself"
    );
    assert_eq!(stdout(&out), format!("checkup {NS}/{CM} on {NODE}: failed: {reason}\n"));
    assert_eq!(get(&cm, "status.result.iommu"), "false");
    assert_eq!(
        get(&cm, "status.result.iommuFacts"),
        "no IOMMU units in sys/class/iommu; no IOMMU groups; no IOMMU arguments on the kernel command line"
    );
    assert_eq!(get(&cm, "status.result.kata"), "true", "kata holds on this host and is not in the reason");
    assert!(get(&cm, "status.result.kataFacts").contains("svm"), "{}", get(&cm, "status.result.kataFacts"));
    assert_eq!(get(&cm, "status.result.iommuGroups"), "0");
    assert_eq!(get(&cm, "status.result.hugepagePools"), "2Mi:0,1Gi:0");
    assert!(result.contains_key("status.completionTimestamp"));

    // The default requirements: kvm, iommu, passthrough, each problem named by its requirement.
    let api = server(&[("spec.timeout", "5m")]);
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    start_and_result(&api);
    let cm = configmap(&api);
    let reason = get(&cm, "status.failureReason");
    for r in ["kvm", "iommu", "passthrough"] {
        assert_eq!(get(&cm, &format!("status.result.{r}")), "false", "{r}");
        assert!(reason.contains(&format!("{r}: ")), "{r} not in {reason}");
    }
    // In the order asked; passthrough explains itself with the IOMMU's problem.
    let no_iommu =
        "no IOMMU units: enable the IOMMU (AMD-Vi) in the firmware; the kernel turns the AMD IOMMU on by itself";
    assert_eq!(
        reason,
        format!(
            "kvm: /dev/kvm exists but is not a character device (a test fixture or a broken /dev): no VM can use it; \
             iommu: {no_iommu}; passthrough: {no_iommu}"
        )
    );
    assert_eq!(get(&cm, "status.result.kvmFacts"), "svm; kvm, kvm_amd loaded; nested on (kvm_amd)");
    assert!(!cm.contains_key("status.result.kata"), "only what was asked");
}

#[test]
fn an_invalid_spec_is_written_back_as_a_failure() {
    let host = support::intel_gpu_server();
    let api = server(&[
        ("spec.timeout", "5"),
        ("spec.param.requirements", "kvm,gpu"),
        ("spec.param.color", "blue"),
        ("spec.param.resources", "nvidia.com/T4"),
    ]);
    // The flags instead of the environment, this time.
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .arg("--host-root")
        .arg(host.root())
        .args(["checkup", "--namespace", NS, "--name", CM, "--node-name", NODE, "--kubeconfig"])
        .arg(&kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("CONFIGMAP_NAMESPACE")
        .env_remove("CONFIGMAP_NAME")
        .env_remove("NODE_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run nodeprep checkup");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, result) = start_and_result(&api);
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "false");
    assert_eq!(
        get(&cm, "status.failureReason"),
        "invalid spec: spec.timeout: \"5\": missing unit after 5; a Go duration like 30s, 5m or 1h30m; \
         unknown parameter spec.param.color (known: spec.param.nodeName, spec.param.requirements, spec.param.resources); \
         spec.param.requirements: unknown requirement \"gpu\": valid requirements are kata, passthrough, hugepages, iommu, kvm, vfio"
    );
    // No verdicts, no host facts, no Node read: nothing was checked.
    let mut keys: Vec<&str> = result.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["status.completionTimestamp", "status.failureReason", "status.result.nodeName", "status.succeeded"]
    );
    assert!(node_gets(&api).is_empty());
    assert!(stdout(&out).contains(": failed: invalid spec: "), "{}", stdout(&out));
}

#[test]
fn the_wrong_node_is_a_failure_and_so_is_an_unknown_one() {
    let host = support::intel_gpu_server();
    let api = server(&[("spec.timeout", "5m"), ("spec.param.nodeName", "worker-1"), ("spec.param.requirements", FIT)]);
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, result) = start_and_result(&api);
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "false");
    assert_eq!(
        get(&cm, "status.failureReason"),
        "wrong node: spec.param.nodeName is worker-1 but this checkup ran on worker-0: the Job's nodeSelector \
         (kubernetes.io/hostname) must select worker-1"
    );
    assert_eq!(get(&cm, "status.result.nodeName"), NODE);
    assert!(!result.contains_key("status.result.iommu"), "another node's host is not reported: {result:?}");
    assert!(!result.contains_key("status.result.kernel"));

    // Without NODE_NAME the checkup cannot tell, and says so.
    let api = server(&[("spec.timeout", "5m"), ("spec.param.nodeName", "worker-1")]);
    let out = run(&api, host.root(), None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    start_and_result(&api);
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "false");
    assert!(
        get(&cm, "status.failureReason").contains("cannot tell which node it runs on: NODE_NAME is not set"),
        "{}",
        get(&cm, "status.failureReason")
    );
    assert_eq!(get(&cm, "status.result.nodeName"), "");
}

#[test]
fn a_resource_that_never_appears_times_out_and_the_result_is_still_written() {
    let host = support::intel_gpu_server();
    let api = server(&[
        ("spec.timeout", "2s"),
        ("spec.param.requirements", "iommu,passthrough"),
        ("spec.param.resources", "example.com/widget,devices.kubevirt.io/kvm"),
    ]);
    api.set_allocatable("cpu", Some("8"));
    api.set_allocatable("devices.kubevirt.io/kvm", Some("1k"));
    let t0 = Instant::now();
    let out = run(&api, host.root(), Some(NODE));
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(took >= Duration::from_secs(2), "it waited the timeout: {took:?}");
    assert!(took < Duration::from_secs(8), "and not much longer: {took:?}");
    start_and_result(&api);
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "false");
    assert_eq!(
        get(&cm, "status.failureReason"),
        "timed out after 2s waiting for example.com/widget (not listed) in the status.allocatable of Node worker-0"
    );
    assert_eq!(get(&cm, "status.result.allocatable.example.com_widget"), "0");
    assert_eq!(get(&cm, "status.result.allocatable.devices.kubevirt.io_kvm"), "1k");
    assert_eq!(get(&cm, "status.result.iommu"), "true", "the host was judged before the wait");
    let (started, completed) =
        (parse_time(get(&cm, "status.startTimestamp")), parse_time(get(&cm, "status.completionTimestamp")));
    assert!(completed.as_second() - started.as_second() >= 1, "{started} .. {completed}");

    // The Node was polled about once a second, by name.
    let gets = node_gets(&api);
    assert!((1..=4).contains(&gets.len()), "{} Node reads in 2 s", gets.len());
    for pair in gets.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // A second between reads (more on a loaded machine), never a busy loop.
        assert!(gap >= Duration::from_millis(900) && gap < Duration::from_secs(3), "poll gap {gap:?}");
    }
    assert!(gets.iter().all(|r| r.method == "GET" && r.query.is_empty()), "{gets:?}");
}

#[test]
fn a_resource_that_appears_while_waiting_succeeds() {
    let host = support::intel_gpu_server();
    let api = server(&[
        ("spec.timeout", "30s"),
        ("spec.param.nodeName", NODE),
        ("spec.param.requirements", "passthrough"),
        ("spec.param.resources", "nvidia.com/TU104GL_Tesla_T4"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let child = checkup_command(&api, host.root(), Some(NODE), dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nodeprep checkup");
    assert!(api.wait_until(Duration::from_secs(10), |s| s.requests.iter().any(|r| r.path == NODE_PATH)));
    // The device plugin registers: the kubelet puts the resource in the Node's allocatable.
    api.set_allocatable("nvidia.com/TU104GL_Tesla_T4", Some("1"));
    let t = Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(t.elapsed() < Duration::from_secs(5), "seen at the next poll: {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    start_and_result(&api);
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "true", "{}", get(&cm, "status.failureReason"));
    assert_eq!(get(&cm, "status.failureReason"), "");
    assert_eq!(get(&cm, "status.result.allocatable.nvidia.com_TU104GL_Tesla_T4"), "1");
    assert!(node_gets(&api).len() >= 2);
}

#[test]
fn an_unmet_requirement_does_not_wait_for_resources() {
    let host = support::amd_iommu_off();
    let api = server(&[
        ("spec.timeout", "30s"),
        ("spec.param.requirements", "passthrough"),
        ("spec.param.resources", "example.com/widget"),
    ]);
    let t0 = Instant::now();
    let out = run(&api, host.root(), Some(NODE));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    start_and_result(&api);
    let cm = configmap(&api);
    let reason = get(&cm, "status.failureReason");
    assert!(reason.starts_with("passthrough: "), "{reason}");
    assert!(reason.ends_with("; example.com/widget: not in the status.allocatable of Node worker-0"), "{reason}");
    assert_eq!(node_gets(&api).len(), 1, "read once, for the record");
    assert_eq!(get(&cm, "status.result.allocatable.example.com_widget"), "0");
}

#[test]
fn server_errors_are_retried_and_the_result_still_lands() {
    let host = support::intel_gpu_server();
    let api = server(&[("spec.timeout", "5m"), ("spec.param.requirements", FIT)]);
    api.fail_next("GET", CM_PATH, Fault::Status(503));
    api.fail_next("PATCH", CM_PATH, Fault::Status(500)); // the start
    api.fail_after("PATCH", CM_PATH, 1, Fault::Status(500)); // the first result write
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(api.faults_pending(), 0);
    let reqs: Vec<(String, String)> = api.requests().into_iter().map(|r| (r.method, r.path)).collect();
    let want: Vec<(String, String)> = ["GET", "GET", "PATCH", "PATCH", "PATCH", "PATCH"]
        .iter()
        .map(|m| ((*m).to_owned(), CM_PATH.to_owned()))
        .collect();
    assert_eq!(reqs, want, "GET retried, the start retried, the result retried");
    let patches = checked_patches(&api);
    assert_eq!(patches[0], patches[1], "the same start patch again");
    assert_eq!(patches[2], patches[3], "the same result patch again");
    let cm = configmap(&api);
    assert_eq!(get(&cm, "status.succeeded"), "true");
    assert!(cm.contains_key("status.completionTimestamp"));
}

#[test]
fn exit_status_is_non_zero_only_when_the_configmap_cannot_be_read_or_written() {
    let host = support::intel_gpu_server();

    // No such ConfigMap: a 404 is not retried.
    let api = ApiServer::start(NODE, &[]);
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "nodeprep: cannot read the checkup's ConfigMap (after 1 attempt): GET {CM_PATH}: configmaps \"{CM}\" not found\n"
        )
    );
    assert_eq!(api.requests().len(), 1);
    assert!(stdout(&out).is_empty());

    // Every write fails: tried 5 times with backoff, then given up.
    let api = server(&[("spec.timeout", "5m")]);
    for _ in 0..5 {
        api.fail_next("PATCH", CM_PATH, Fault::Status(500));
    }
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "cannot write status.startTimestamp into the checkup's ConfigMap (after 5 attempts): PATCH {CM_PATH}: injected 500"
        )),
        "{}",
        stderr(&out)
    );
    let patches: Vec<Request> = api.writes();
    assert_eq!(patches.len(), 5);
    assert!(patches.windows(2).all(|p| p[1].at - p[0].at >= Duration::from_millis(70)), "backoff between tries");
    assert!(!configmap(&api).contains_key("status.startTimestamp"));

    // A 403 on the result write (no patch permission) is not retried.
    let api = server(&[("spec.timeout", "5m")]);
    api.fail_after("PATCH", CM_PATH, 1, Fault::Status(403));
    let out = run(&api, host.root(), Some(NODE));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write the result into the checkup's ConfigMap (after 1 attempt)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(api.writes().len(), 2);

    // No API server configured, or no ConfigMap named: usage errors, nothing sent.
    let out = Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .arg("--host-root")
        .arg(host.root())
        .args(["checkup", "--namespace", NS, "--name", CM])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no Kubernetes API found"), "{}", stderr(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .args(["checkup", "--namespace", NS])
        .env_remove("CONFIGMAP_NAME")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--name <NAME>"), "{}", stderr(&out));
}
