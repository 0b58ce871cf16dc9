//! The deployment manifests (`daemonset/`, and the checkup's in `daemonset/checkup/`) and the
//! `Containerfile`: every YAML file parses, and their references line up with each other, with the
//! binary's flags and with the image: the kustomization's resources, namespaces, the service
//! account and its token, the RBAC rules (verb for verb what the agent sends) and bindings,
//! volumes and mounts, the config map and the `--config` path, the plugin directory, the health
//! port and the probes, the entrypoint. The shipped config (and each
//! example in it, uncommented) is accepted by `nodeprep config check`; the checkup's ConfigMap
//! (with its commented example too) by the checkup's own spec parser.
//!
//! No cluster runs here: these are static checks, plus the real binary for what it must accept.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

use support::cli::{stderr, stdout};

const NAMESPACE: &str = "nodeprep";
const CONFIG_MAP: &str = "nodeprep-config";
const CONFIG_KEY: &str = "config.yaml";

/// Kinds that live outside namespaces; every other kind the manifests use must be listed in
/// [`NAMESPACED`], so a new kind makes the test say which one it is.
const CLUSTER_SCOPED: &[&str] = &[
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "DeviceClass",
];
const NAMESPACED: &[&str] = &["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "DaemonSet"];

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset")
}

/// One YAML document of one file.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        text(&self.value["kind"], &format!("{}: kind", self.file))
    }

    fn name(&self) -> &str {
        text(&self.value["metadata"]["name"], &format!("{}: metadata.name", self.file))
    }

    fn at(&self) -> String {
        format!("{} ({} {})", self.file, self.kind(), self.name())
    }
}

/// Every document of every `*.yaml`/`*.yml` file directly in `daemonset/`, in file order; empty
/// documents (a trailing `---`) are skipped.
fn load_all() -> Vec<Doc> {
    load_dir(&manifest_dir())
}

/// Every document of every `*.yaml`/`*.yml` file directly in `dir` (not in its subdirectories).
fn load_dir(dir: &Path) -> Vec<Doc> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML under {}", dir.display());
    let mut docs = Vec::new();
    for path in files {
        let file = path.file_name().expect("file name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: document {i}: not YAML: {e}"));
            if !value.is_null() {
                docs.push(Doc { file: file.clone(), value });
            }
        }
    }
    docs
}

/// The documents that are Kubernetes objects (everything but the kustomization itself).
fn objects() -> Vec<Doc> {
    load_all().into_iter().filter(|d| d.kind() != "Kustomization").collect()
}

fn kustomization() -> Value {
    let mut k: Vec<Doc> =
        load_all().into_iter().filter(|d| d.value["kind"].as_str() == Some("Kustomization")).collect();
    assert_eq!(k.len(), 1, "exactly one Kustomization");
    assert_eq!(k[0].file, "kustomization.yaml");
    k.remove(0).value
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Doc> {
    docs.iter().find(|d| d.kind() == kind && d.name() == name)
}

fn one<'a>(docs: &'a [Doc], kind: &str) -> &'a Doc {
    let all: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind).collect();
    assert_eq!(all.len(), 1, "expected exactly one {kind}, found {}", all.len());
    all[0]
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    seq(v, what).iter().map(|s| text(s, what).to_owned()).collect()
}

fn int(v: &Value, what: &str) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("{what}: expected an integer, got {v:?}"))
}

/// The DaemonSet's one container.
fn container(ds: &Doc) -> &Value {
    let containers = seq(&ds.value["spec"]["template"]["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1, "the DaemonSet runs one container");
    &containers[0]
}

fn pod_spec(ds: &Doc) -> &Value {
    &ds.value["spec"]["template"]["spec"]
}

fn args(ds: &Doc) -> Vec<String> {
    strings(&container(ds)["args"], "container args")
}

/// The value after `flag` in the args (`--flag VALUE` or `--flag=VALUE`).
fn flag(args: &[String], name: &str) -> String {
    let eq = format!("{name}=");
    for (i, a) in args.iter().enumerate() {
        if a == name {
            return args.get(i + 1).unwrap_or_else(|| panic!("{name} has no value in {args:?}")).clone();
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return v.to_owned();
        }
    }
    panic!("the DaemonSet's args have no {name}: {args:?}")
}

/// volume name -> mountPath, for the container's mounts.
fn mounts(ds: &Doc) -> BTreeMap<String, Value> {
    seq(&container(ds)["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| (text(&m["name"], "volumeMount name").to_owned(), m.clone()))
        .collect()
}

fn volumes(ds: &Doc) -> BTreeMap<String, Value> {
    seq(&pod_spec(ds)["volumes"], "volumes")
        .iter()
        .map(|v| (text(&v["name"], "volume name").to_owned(), v.clone()))
        .collect()
}

// ---- kustomization and objects ---------------------------------------------------------------

#[test]
fn kustomization_lists_every_manifest_and_nothing_else() {
    let k = kustomization();
    let resources: Vec<String> = strings(&k["resources"], "kustomization resources");
    let listed: BTreeSet<&str> = resources.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), resources.len(), "a resource listed twice: {resources:?}");
    for r in &resources {
        assert!(manifest_dir().join(r).is_file(), "kustomization lists {r}, which does not exist in daemonset/");
    }
    let files: BTreeSet<String> = objects().into_iter().map(|d| d.file).collect();
    for f in &files {
        assert!(listed.contains(f.as_str()), "daemonset/{f} is not in the kustomization's resources");
    }
    for d in objects() {
        assert!(d.value["apiVersion"].as_str().is_some_and(|v| !v.is_empty()), "{}: no apiVersion", d.at());
        assert!(!d.name().is_empty(), "{}: empty name", d.file);
    }
    let kinds_names: Vec<(String, String)> =
        objects().iter().map(|d| (d.kind().to_owned(), d.name().to_owned())).collect();
    let unique: BTreeSet<&(String, String)> = kinds_names.iter().collect();
    assert_eq!(unique.len(), kinds_names.len(), "two objects with the same kind and name: {kinds_names:?}");
}

#[test]
fn every_object_is_in_the_namespace_or_cluster_scoped() {
    let k = kustomization();
    assert_eq!(k["namespace"].as_str(), Some(NAMESPACE), "kustomization namespace");
    let docs = objects();
    assert!(find(&docs, "Namespace", NAMESPACE).is_some(), "the Namespace {NAMESPACE} is not created");
    for d in &docs {
        let ns = &d.value["metadata"]["namespace"];
        if CLUSTER_SCOPED.contains(&d.kind()) {
            assert!(ns.is_null(), "{}: a cluster-scoped object with a namespace", d.at());
        } else {
            assert!(
                NAMESPACED.contains(&d.kind()),
                "{}: kind not known to this test; add it to NAMESPACED or CLUSTER_SCOPED",
                d.at()
            );
            // Stated in the file too, so `oc apply -f` of one file lands in the same place.
            assert_eq!(ns.as_str(), Some(NAMESPACE), "{}: metadata.namespace", d.at());
        }
    }
}

#[test]
fn common_labels_and_the_daemonset_selector_agree() {
    let k = kustomization();
    assert_eq!(k["commonLabels"]["app.kubernetes.io/name"].as_str(), Some("nodeprep"), "commonLabels");
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let selector = ds.value["spec"]["selector"]["matchLabels"].as_mapping().expect("DaemonSet selector.matchLabels");
    let labels = ds.value["spec"]["template"]["metadata"]["labels"].as_mapping().expect("pod template labels");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(labels.get(key), Some(value), "pod template lacks selector label {key:?}");
    }
}

// ---- service account and RBAC ----------------------------------------------------------------

#[test]
fn the_service_account_exists_and_the_bindings_point_at_it() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let sa = text(&pod_spec(ds)["serviceAccountName"], "serviceAccountName");
    let account = find(&docs, "ServiceAccount", sa).unwrap_or_else(|| panic!("ServiceAccount {sa} does not exist"));
    assert_eq!(account.value["metadata"]["namespace"].as_str(), Some(NAMESPACE));

    for (binding_kind, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let b = one(&docs, binding_kind);
        let role_ref = &b.value["roleRef"];
        assert_eq!(role_ref["apiGroup"].as_str(), Some("rbac.authorization.k8s.io"), "{}: roleRef.apiGroup", b.at());
        assert_eq!(role_ref["kind"].as_str(), Some(role_kind), "{}: roleRef.kind", b.at());
        let role_name = text(&role_ref["name"], "roleRef.name");
        let role = find(&docs, role_kind, role_name)
            .unwrap_or_else(|| panic!("{}: refers to {role_kind} {role_name}, which does not exist", b.at()));
        if role_kind == "Role" {
            assert_eq!(
                role.value["metadata"]["namespace"], b.value["metadata"]["namespace"],
                "Role and RoleBinding namespaces"
            );
        }
        let subjects = seq(&b.value["subjects"], "subjects");
        assert_eq!(subjects.len(), 1, "{}: one subject, the agent", b.at());
        let s = &subjects[0];
        assert_eq!(s["kind"].as_str(), Some("ServiceAccount"), "{}: subject kind", b.at());
        assert_eq!(s["name"].as_str(), Some(sa), "{}: subject name", b.at());
        // A ServiceAccount subject without its namespace matches nothing.
        assert_eq!(s["namespace"].as_str(), Some(NAMESPACE), "{}: subject namespace", b.at());
    }
}

/// (apiGroup, resource, resourceNames) -> verbs, for every rule of a role.
fn rules(role: &Doc) -> BTreeMap<(String, String, Vec<String>), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String, Vec<String>), BTreeSet<String>> = BTreeMap::new();
    for r in seq(&role.value["rules"], "rules") {
        let names =
            if r["resourceNames"].is_null() { Vec::new() } else { strings(&r["resourceNames"], "resourceNames") };
        for g in strings(&r["apiGroups"], "apiGroups") {
            for res in strings(&r["resources"], "resources") {
                out.entry((g.clone(), res, names.clone())).or_default().extend(strings(&r["verbs"], "verbs"));
            }
        }
    }
    out
}

fn expect_rules(rows: &[(&str, &str, &[&str], &[&str])]) -> BTreeMap<(String, String, Vec<String>), BTreeSet<String>> {
    rows.iter()
        .map(|(g, r, names, verbs)| {
            (
                (g.to_string(), r.to_string(), names.iter().map(ToString::to_string).collect()),
                verbs.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let docs = objects();
    for d in docs.iter().filter(|d| d.kind() == "ClusterRole" || d.kind() == "Role") {
        for r in seq(&d.value["rules"], "rules") {
            for key in ["apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"] {
                if let Some(list) = r[key].as_sequence() {
                    assert!(
                        list.iter().all(|v| !v.as_str().unwrap_or_default().contains('*')),
                        "{}: wildcard in {key}: {list:?}",
                        d.at()
                    );
                }
            }
            assert!(r["nonResourceURLs"].is_null(), "{}: nonResourceURLs", d.at());
        }
    }

    // Cluster-wide, exactly the agent's requests (src/cluster/): GET of its Node, a WATCH of
    // /api/v1/nodes with fieldSelector=metadata.name=<node> (so no "list"), the server-side apply
    // PATCH of its labels (the Node exists: no "create"), and a POST of each core/v1 Event on the
    // Node, which lands in "default" (never updated: no "patch"; never events.k8s.io).
    //
    // DRA (src/cluster/slices.rs, src/dra/driver.rs): its ResourceSlices listed and watched by
    // field selector, server-side applied (patch; and create, which kube-apiserver checks when
    // the apply creates the slice), deleted one by one (no deletecollection, no get, no update);
    // the claim the kubelet names read by name (no list, no watch). Giving devices back
    // (src/cluster/pods.rs): its node's pods and the NodeMaintenances, listed and watched only.
    let cluster = one(&docs, "ClusterRole");
    assert_eq!(
        rules(cluster),
        expect_rules(&[
            ("", "nodes", &[], &["get", "watch", "patch"]),
            ("", "events", &[], &["create"]),
            ("resource.k8s.io", "resourceslices", &[], &["list", "watch", "create", "patch", "delete"]),
            ("resource.k8s.io", "resourceclaims", &[], &["get"]),
            ("", "pods", &[], &["list", "watch"]),
            ("nodemaintenance.medik8s.io", "nodemaintenances", &[], &["list", "watch"]),
        ]),
        "{}",
        cluster.at()
    );
    // Its namespace only: reading its own ConfigMap (by name; the agent itself reads the mounted
    // volume), and on OpenShift the privileged SCC.
    let role = one(&docs, "Role");
    assert_eq!(
        rules(role),
        expect_rules(&[
            ("", "configmaps", &[CONFIG_MAP], &["get"]),
            ("security.openshift.io", "securitycontextconstraints", &["privileged"], &["use"]),
        ]),
        "{}",
        role.at()
    );
    // The ConfigMap the Role names is the one the DaemonSet mounts.
    let ds = one(&docs, "DaemonSet");
    let volumes = volumes(ds);
    let mounted: Vec<&str> = volumes.values().filter_map(|v| v["configMap"]["name"].as_str()).collect();
    assert_eq!(mounted, [CONFIG_MAP], "the ConfigMap the DaemonSet mounts");
}

/// The agent finds the API server as a pod does (`KUBERNETES_SERVICE_HOST` and the service
/// account's token) and its Node by `NODE_NAME`: nothing in the args may take that away.
#[test]
fn the_agent_reaches_the_api_server_as_its_service_account() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let pod = pod_spec(ds);
    // The pod's setting wins over the service account's; both must leave the token mounted.
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(true), "the pod mounts its token");
    let sa = find(&docs, "ServiceAccount", text(&pod["serviceAccountName"], "serviceAccountName")).expect("account");
    assert_ne!(sa.value["automountServiceAccountToken"].as_bool(), Some(false), "{}", sa.at());

    let args = args(ds);
    for f in ["--no-kube", "--kubeconfig", "--node-name"] {
        assert!(
            !args.iter().any(|a| a == f || a.starts_with(&format!("{f}="))),
            "{f} in the DaemonSet's args: the in-cluster service account and NODE_NAME are enough: {args:?}"
        );
    }
    let c = container(ds);
    let env = seq(&c["env"], "env");
    let names: Vec<&str> = env.iter().filter_map(|e| e["name"].as_str()).collect();
    // KUBECONFIG would win over the in-cluster config.
    assert!(!names.contains(&"KUBECONFIG"), "KUBECONFIG in the env: {names:?}");
    let node_name = env.iter().find(|e| e["name"].as_str() == Some("NODE_NAME")).expect("NODE_NAME in env");
    assert!(node_name["value"].is_null(), "NODE_NAME must come from the downward API, not a fixed value");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"), "NODE_NAME source");
}

// ---- the DaemonSet: volumes, config, plugin directory, host root -----------------------------

#[test]
fn every_mount_has_a_volume_and_every_volume_is_mounted() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let (mounts, volumes) = (mounts(ds), volumes(ds));
    assert_eq!(mounts.len(), seq(&container(ds)["volumeMounts"], "volumeMounts").len(), "a volume mounted twice");
    for name in mounts.keys() {
        assert!(volumes.contains_key(name), "volumeMount {name} has no volume");
    }
    for name in volumes.keys() {
        assert!(mounts.contains_key(name), "volume {name} is not mounted");
    }
    let paths: BTreeSet<&str> = mounts.values().map(|m| text(&m["mountPath"], "mountPath")).collect();
    assert_eq!(paths.len(), mounts.len(), "two mounts at one path");
}

#[test]
fn the_config_map_is_mounted_as_a_directory_and_holds_the_config_file() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let (mounts, volumes) = (mounts(ds), volumes(ds));
    let config_volumes: Vec<(&String, &Value)> = volumes.iter().filter(|(_, v)| !v["configMap"].is_null()).collect();
    assert_eq!(config_volumes.len(), 1, "one ConfigMap volume");
    let (vol_name, vol) = config_volumes[0];
    assert_eq!(vol["configMap"]["name"].as_str(), Some(CONFIG_MAP), "the ConfigMap volume's name");
    let cm = find(&docs, "ConfigMap", CONFIG_MAP).unwrap_or_else(|| panic!("ConfigMap {CONFIG_MAP} does not exist"));
    assert!(cm.value["data"][CONFIG_KEY].is_string(), "ConfigMap {CONFIG_MAP} has no key {CONFIG_KEY}");

    let mount = &mounts[vol_name];
    // With subPath the kubelet never updates the file: reloads would never happen.
    assert!(mount["subPath"].is_null() && mount["subPathExpr"].is_null(), "the config is mounted with subPath");
    assert!(vol["configMap"]["items"].is_null(), "items would rename or drop keys");
    let dir = Path::new(text(&mount["mountPath"], "config mountPath"));
    let config = flag(&args(ds), "--config");
    let config = Path::new(&config);
    assert_eq!(
        config.parent(),
        Some(dir),
        "--config {} is not directly in the ConfigMap's mount {}",
        config.display(),
        dir.display()
    );
    assert_eq!(
        config.file_name().and_then(|n| n.to_str()),
        Some(CONFIG_KEY),
        "--config names a key the ConfigMap has not"
    );
}

#[test]
fn the_plugin_dir_and_the_host_root_are_host_paths() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let (mounts, volumes) = (mounts(ds), volumes(ds));
    let host_path_mount = |host: &str| -> (&String, &Value) {
        let (name, _) = volumes
            .iter()
            .find(|(_, v)| v["hostPath"]["path"].as_str() == Some(host))
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"));
        (name, &mounts[name])
    };
    let args = args(ds);

    // --plugin-dir: the kubelet's directory, at the same path inside as on the host.
    let plugin_dir = flag(&args, "--plugin-dir");
    let (name, mount) = host_path_mount(&plugin_dir);
    assert_eq!(mount["mountPath"].as_str(), Some(plugin_dir.as_str()), "plugin dir mount");
    assert_eq!(volumes[name]["hostPath"]["type"].as_str(), Some("DirectoryOrCreate"), "plugin dir hostPath type");
    assert_eq!(plugin_dir, "/var/lib/kubelet/device-plugins", "the kubelet's device-plugin directory");

    // --host-root: the host's /, with the host's later mounts propagated.
    let host_root = flag(&args, "--host-root");
    let (_, mount) = host_path_mount("/");
    assert_eq!(mount["mountPath"].as_str(), Some(host_root.as_str()), "--host-root is where / is mounted");
    assert_eq!(mount["mountPropagation"].as_str(), Some("HostToContainer"), "host root mountPropagation");
    assert_ne!(mount["readOnly"].as_bool(), Some(true), "nodeprep writes to the host's sysfs");

    let (_, mount) = host_path_mount("/dev");
    assert_eq!(mount["mountPath"].as_str(), Some("/dev"));
}

/// The kubelet dials the DRA plugin at the absolute path the registration names, as the host
/// sees it: its two directories are mounted at the same paths inside, created when missing; the
/// CDI directory the runtime reads as well.
#[test]
fn the_kubelets_dra_directories_and_cdi_are_mounted_at_their_host_paths() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let (mounts, volumes) = (mounts(ds), volumes(ds));
    // The agent puts its sockets under --kubelet-dir and registers them under that path.
    let kubelet_dir = flag(&args(ds), "--kubelet-dir");
    assert_eq!(kubelet_dir, "/var/lib/kubelet", "the kubelet's root directory");
    let registry = format!("{kubelet_dir}/plugins_registry");
    let plugins = format!("{kubelet_dir}/plugins");
    for path in [registry.as_str(), plugins.as_str(), "/var/run/cdi"] {
        let found: Vec<&String> =
            volumes.iter().filter(|(_, v)| v["hostPath"]["path"].as_str() == Some(path)).map(|(n, _)| n).collect();
        assert_eq!(found.len(), 1, "one hostPath volume for {path}: {found:?}");
        let name = found[0];
        assert_eq!(volumes[name]["hostPath"]["type"].as_str(), Some("DirectoryOrCreate"), "{path}: hostPath type");
        let mount = mounts.get(name).unwrap_or_else(|| panic!("volume {name} ({path}) is not mounted"));
        assert_eq!(mount["mountPath"].as_str(), Some(path), "{path} is mounted elsewhere inside");
        assert_ne!(mount["readOnly"].as_bool(), Some(true), "{path}: nodeprep creates its sockets and specs there");
        assert!(mount["subPath"].is_null(), "{path}: a subPath would hide sockets created later");
    }
}

/// The DeviceClass claims name selects exactly the devices of nodeprep's driver.
#[test]
fn the_device_class_selects_the_driver() {
    let docs = objects();
    let class = find(&docs, "DeviceClass", nodeprep::dra::DEFAULT_DRIVER)
        .unwrap_or_else(|| panic!("no DeviceClass {}", nodeprep::dra::DEFAULT_DRIVER));
    assert_eq!(class.file, "deviceclass.yaml");
    assert_eq!(class.value["apiVersion"].as_str(), Some("resource.k8s.io/v1"), "{}: GA API", class.at());
    let selectors = seq(&class.value["spec"]["selectors"], "DeviceClass selectors");
    assert_eq!(selectors.len(), 1, "{}: one selector", class.at());
    let expression = text(&selectors[0]["cel"]["expression"], "selector cel.expression");
    // The expression, up to white space and quote style, is `device.driver == "<driver>"`.
    let normalized: String = expression.chars().filter(|c| !c.is_whitespace()).collect::<String>().replace('\'', "\"");
    assert_eq!(normalized, format!("device.driver==\"{}\"", nodeprep::dra::DEFAULT_DRIVER), "{}", class.at());
    assert!(class.value["spec"]["config"].is_null(), "{}: no opaque config", class.at());
}

/// The admission policies tie writes to the agent's own node: Nodes by name, ResourceSlices by
/// `spec.nodeName` (of the old object when deleting), both from the token's node claim, each
/// with a binding that denies.
#[test]
fn the_node_policies_cover_nodes_and_resource_slices() {
    const CLAIM: &str = "authentication.kubernetes.io/node-name";
    let docs = objects();
    let policies: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "ValidatingAdmissionPolicy").collect();
    let mut covered = BTreeSet::new();
    for p in &policies {
        assert_eq!(p.file, "nodepolicy.yaml", "{}", p.at());
        let spec = &p.value["spec"];
        assert_eq!(spec["failurePolicy"].as_str(), Some("Fail"), "{}: fail closed", p.at());
        let conditions = seq(&spec["matchConditions"], "matchConditions");
        assert!(
            conditions.iter().any(|c| text(&c["expression"], "expression")
                .contains(&format!("system:serviceaccount:{NAMESPACE}:nodeprep"))),
            "{}: matches the agent's ServiceAccount",
            p.at()
        );
        let validations = seq(&spec["validations"], "validations");
        assert!(
            validations.iter().any(|v| text(&v["expression"], "expression").contains(CLAIM)),
            "{}: reads the token's node claim",
            p.at()
        );
        for rule in seq(&spec["matchConstraints"]["resourceRules"], "resourceRules") {
            for (g, r) in strings(&rule["apiGroups"], "apiGroups")
                .iter()
                .flat_map(|g| strings(&rule["resources"], "resources").into_iter().map(move |r| (g.clone(), r)))
            {
                covered.insert((g, r, strings(&rule["operations"], "operations")));
            }
        }
        let binding = docs
            .iter()
            .find(|d| {
                d.kind() == "ValidatingAdmissionPolicyBinding"
                    && d.value["spec"]["policyName"].as_str() == Some(p.name())
            })
            .unwrap_or_else(|| panic!("{}: no binding", p.at()));
        assert_eq!(
            strings(&binding.value["spec"]["validationActions"], "validationActions"),
            ["Deny"],
            "{}",
            binding.at()
        );
    }
    let expect: BTreeSet<(String, String, Vec<String>)> = [
        ("", "nodes", vec!["UPDATE", "DELETE"]),
        ("resource.k8s.io", "resourceslices", vec!["CREATE", "UPDATE", "DELETE"]),
    ]
    .into_iter()
    .map(|(g, r, ops)| (g.to_owned(), r.to_owned(), ops.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(covered, expect, "what the policies guard");
    // The slice policy compares spec.nodeName, and on DELETE that of the object being deleted.
    let slices =
        find(&docs, "ValidatingAdmissionPolicy", "nodeprep-own-resourceslices-only").expect("the slice policy");
    let all: String = ["variables", "validations"]
        .iter()
        .flat_map(|k| seq(&slices.value["spec"][*k], k).iter().map(|e| text(&e["expression"], "expression").to_owned()))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in ["oldObject.spec.nodeName", "object.spec.nodeName", "request.operation == 'DELETE'"] {
        assert!(all.contains(needle), "{}: no {needle}", slices.at());
    }
}

// ---- the DaemonSet: port, probes, security, scheduling ---------------------------------------

/// A probe's port, resolving a named port to its containerPort.
fn probe_port(c: &Value, probe: &Value, what: &str) -> i64 {
    let port = &probe["httpGet"]["port"];
    match port.as_str() {
        Some(name) => seq(&c["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(|p| int(&p["containerPort"], "containerPort"))
            .unwrap_or_else(|| panic!("{what}: port {name:?} is not a declared container port")),
        None => int(port, what),
    }
}

#[test]
fn the_listen_port_is_the_probes_and_a_container_port() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let c = container(ds);
    let listen = flag(&args(ds), "--listen");
    let (host, port) = listen.rsplit_once(':').unwrap_or_else(|| panic!("--listen {listen}: no port"));
    assert_eq!(host, "0.0.0.0", "--listen must take every address: the kubelet probes the node's IP");
    let port: i64 = port.parse().unwrap_or_else(|e| panic!("--listen {listen}: {e}"));
    assert_eq!(port, 9437, "the agent's port");

    let declared: Vec<i64> =
        seq(&c["ports"], "ports").iter().map(|p| int(&p["containerPort"], "containerPort")).collect();
    assert!(declared.contains(&port), "--listen port {port} is not a containerPort ({declared:?})");

    for (kind, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let probe = &c[kind];
        assert_eq!(probe["httpGet"]["path"].as_str(), Some(path), "{kind} path");
        assert_eq!(probe_port(c, probe, kind), port, "{kind} port != --listen port");
        // Kubernetes defaults: period 10, timeout 1.
        let period = probe["periodSeconds"].as_i64().unwrap_or(10);
        let timeout = probe["timeoutSeconds"].as_i64().unwrap_or(1);
        assert!(period > timeout, "{kind}: periodSeconds {period} must exceed timeoutSeconds {timeout}");
    }
}

#[test]
fn the_agent_runs_privileged_on_the_host_network_and_knows_its_node() {
    let docs = objects();
    let ds = one(&docs, "DaemonSet");
    let (pod, c) = (pod_spec(ds), container(ds));
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true), "privileged");
    // proc/net/* (default route, addresses: what keeps nodeprep off the host's NIC) is read in the
    // reader's own network namespace.
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true), "hostNetwork");
    assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"), "dnsPolicy with hostNetwork");
    assert_ne!(pod["hostPID"].as_bool(), Some(true), "hostPID is not needed");
    assert_eq!(pod["priorityClassName"].as_str(), Some("system-node-critical"));

    let env = seq(&c["env"], "env");
    let node_name = env.iter().find(|e| e["name"].as_str() == Some("NODE_NAME")).expect("NODE_NAME in env");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"), "NODE_NAME source");

    let tolerations = seq(&pod["tolerations"], "tolerations");
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            tolerations.iter().any(|t| t["operator"].as_str() == Some("Exists")
                && t["key"].is_null()
                && t["effect"].as_str() == Some(effect)),
            "no toleration of every {effect} taint"
        );
    }
    assert_eq!(pod["nodeSelector"]["node-role.kubernetes.io/worker"].as_str(), Some(""), "worker nodeSelector");

    let strategy = &ds.value["spec"]["updateStrategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"].as_i64(), Some(1));
    assert_eq!(pod["terminationGracePeriodSeconds"].as_i64(), Some(30));

    let res = &c["resources"];
    for key in ["cpu", "memory"] {
        assert!(res["requests"][key].is_string(), "resources.requests.{key}");
    }
    assert!(res["limits"]["memory"].is_string(), "resources.limits.memory");
}

/// The DaemonSet's arguments are ones the binary accepts: with `--help` appended, clap parses
/// every flag before it (an unknown flag or a bad value is an error) and then prints help.
#[test]
fn the_binary_accepts_the_daemonset_arguments() {
    let docs = objects();
    let mut args = args(one(&docs, "DaemonSet"));
    assert!(args.iter().any(|a| a == "run"), "the DaemonSet runs `nodeprep run`: {args:?}");
    args.push("--help".into());
    let out = Command::new(env!("CARGO_BIN_EXE_nodeprep")).args(&args).output().expect("run nodeprep");
    assert!(out.status.success(), "nodeprep {} refused the DaemonSet's arguments:\n{}", args.join(" "), stderr(&out));
}

// ---- the config: as shipped, and every example uncommented ----------------------------------

fn shipped_config() -> String {
    let docs = objects();
    let cm = find(&docs, "ConfigMap", CONFIG_MAP).expect("config map");
    text(&cm.value["data"][CONFIG_KEY], "config.yaml").to_owned()
}

fn config_check(config: &str, host_root: Option<&Path>) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(CONFIG_KEY);
    std::fs::write(&file, config).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeprep"));
    if let Some(root) = host_root {
        cmd.arg("--host-root").arg(root);
    }
    cmd.arg("config").arg("check").arg(&file).output().expect("run nodeprep config check")
}

#[test]
fn the_shipped_config_is_valid_and_selects_nothing() {
    let config = shipped_config();
    let out = config_check(&config, None);
    assert!(
        out.status.success(),
        "nodeprep config check refused the shipped config:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("valid, 0 entries"), "{}", stdout(&out));
    // Applying the manifests as shipped changes nothing on any node.
    let parsed = nodeprep::config::Config::parse(&config).expect("parse");
    assert!(parsed.entries.is_empty() && parsed.counted.is_empty(), "the shipped config is active: {parsed:?}");
    assert!(parsed.hugepages.is_empty() && parsed.node_labels.kata, "the shipped config is active: {parsed:?}");
}

/// The config with every example line (`# ...`) uncommented; explanations (`## ...`) stay.
fn uncommented(config: &str) -> String {
    config
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) => rest,
            None if l == "#" => "",
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_config_examples_are_valid_once_uncommented() {
    let config = uncommented(&shipped_config());
    let parsed =
        nodeprep::config::Config::parse(&config).unwrap_or_else(|e| panic!("examples refused: {e:?}\n{config}"));
    let gpu = &parsed.entries[0];
    assert_eq!(gpu.name.0, "pciHostDevices[0]");
    assert!(gpu.external_resource_provider, "the KubeVirt example sets externalResourceProvider");
    assert_eq!(gpu.resource_name.as_deref(), Some("nvidia.com/TU104GL_Tesla_T4"));
    assert_eq!(parsed.entries[1].name.0, "devices[0]");
    assert_eq!(parsed.entries[2].name.0, "dra.devices[0]");
    assert_eq!(parsed.entries[2].front, nodeprep::config::Front::Dra(nodeprep::config::AtRest::Host));
    assert_eq!(parsed.entries.len(), 3);
    assert_eq!(parsed.counted.len(), 1);
    assert_eq!(parsed.counted[0].resource_name, "kata.peerpods.io/vm");
    let pools: Vec<String> = parsed.hugepages.iter().map(ToString::to_string).collect();
    assert_eq!(pools, ["512 x 2Mi", "4 x 1Gi on NUMA node 0"]);
    assert!(!parsed.node_labels.kata, "the example leaves the Kata label to NFD");
    let cdi = parsed.cdi.as_ref().expect("the CDI example");
    assert_eq!((cdi.kind.as_str(), cdi.spec_dir.as_str()), ("nodeprep.io/vfio", "/var/run/cdi"));

    // On a machine with a T4 and C62x QAT VFs, each example takes what it says.
    use support::machines::intel::*;
    let host = support::intel_gpu_server();
    let out = config_check(&config, Some(host.root()));
    let text = stdout(&out);
    assert!(out.status.success(), "config check refused the examples on the intel fixture:\n{text}{}", stderr(&out));
    assert!(text.contains(&format!("{GPU_A} as nvidia.com/TU104GL_Tesla_T4")), "{text}");
    for vf in QAT_VFS {
        assert!(text.contains(&format!("{vf} as intel.com/qat_vf")), "{text}");
    }
    assert!(text.contains(&format!("{GPU_B} as nvidia.com/quadro")), "{text}");
}

// ---- the image -------------------------------------------------------------------------------

/// The Containerfile's instructions, one per logical line (continuations joined).
fn containerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Containerfile"))
        .expect("read Containerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn the_image_entrypoint_is_what_the_daemonset_runs() {
    let instructions = containerfile();
    let last_from = instructions.iter().rposition(|(op, _)| op == "FROM").expect("a FROM");
    let final_stage = &instructions[last_from..];

    let entrypoints: Vec<&String> = final_stage.iter().filter(|(op, _)| op == "ENTRYPOINT").map(|(_, r)| r).collect();
    assert_eq!(entrypoints.len(), 1, "one ENTRYPOINT in the final stage");
    // Exec form: no shell in a distroless image, and signals reach nodeprep directly.
    let entrypoint: Vec<String> = serde_json::from_str(entrypoints[0]).expect("ENTRYPOINT in JSON (exec) form");
    assert_eq!(
        entrypoint,
        ["/usr/bin/nodeprep"],
        "the entrypoint is the binary alone; the DaemonSet passes the arguments"
    );

    // The binary is copied to exactly that path from the build stage.
    let copied = final_stage.iter().any(|(op, rest)| {
        op == "COPY" && rest.starts_with("--from=") && rest.split_whitespace().last() == Some(entrypoint[0].as_str())
    });
    assert!(copied, "the final stage does not COPY the binary to {}", entrypoint[0]);
    let build = instructions[..last_from]
        .iter()
        .find(|(op, r)| op == "RUN" && r.contains("cargo build"))
        .expect("a cargo build");
    for needle in ["--release", "--locked", "+crt-static", "--target x86_64-unknown-linux-gnu"] {
        assert!(build.1.contains(needle), "the build step lacks {needle}: {}", build.1);
    }

    // The DaemonSet sets no command, so the entrypoint runs with its args.
    let docs = objects();
    let c = container(one(&docs, "DaemonSet"));
    assert!(c["command"].is_null(), "the DaemonSet overrides the image's entrypoint: {:?}", c["command"]);
    assert!(c["image"].as_str().is_some_and(|i| i.contains("nodeprep")), "image {:?}", c["image"]);
}

// ---- the checkup (daemonset/checkup/) --------------------------------------------------------

const CHECKUP_SA: &str = "nodeprep-checkup";
const CHECKUP_CONFIG_MAP: &str = "nodeprep-checkup-config";

fn checkup_dir() -> PathBuf {
    manifest_dir().join("checkup")
}

fn checkup_objects() -> Vec<Doc> {
    load_dir(&checkup_dir()).into_iter().filter(|d| d.kind() != "Kustomization").collect()
}

fn checkup_job(docs: &[Doc]) -> &Doc {
    one(docs, "Job")
}

/// The Job's one container.
fn checkup_container(job: &Doc) -> &Value {
    let containers = seq(&job.value["spec"]["template"]["spec"]["containers"], "Job containers");
    assert_eq!(containers.len(), 1, "the checkup Job runs one container");
    &containers[0]
}

/// The Job's environment variable `name`.
fn checkup_env<'a>(job: &'a Doc, name: &str) -> &'a Value {
    seq(&checkup_container(job)["env"], "Job env")
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("the checkup Job has no {name} in its env"))
}

/// The checkup ConfigMap's data as strings.
fn checkup_data(docs: &[Doc]) -> BTreeMap<String, String> {
    let cm = find(docs, "ConfigMap", CHECKUP_CONFIG_MAP)
        .unwrap_or_else(|| panic!("ConfigMap {CHECKUP_CONFIG_MAP} does not exist in daemonset/checkup/"));
    cm.value["data"]
        .as_mapping()
        .expect("checkup ConfigMap data")
        .iter()
        .map(|(k, v)| (text(k, "data key").to_owned(), text(v, "data value (quote numbers)").to_owned()))
        .collect()
}

#[test]
fn the_checkup_has_its_own_kustomization_and_is_not_in_the_daemonsets() {
    let main: Vec<String> = strings(&kustomization()["resources"], "kustomization resources");
    assert!(
        main.iter().all(|r| !r.starts_with("checkup")),
        "the checkup is applied on demand, not with the DaemonSet: {main:?}"
    );
    let all = load_dir(&checkup_dir());
    let k: Vec<&Doc> = all.iter().filter(|d| d.value["kind"].as_str() == Some("Kustomization")).collect();
    assert_eq!(k.len(), 1, "exactly one Kustomization in daemonset/checkup/");
    assert_eq!(k[0].file, "kustomization.yaml");
    let k = &k[0].value;
    assert_eq!(k["namespace"].as_str(), Some(NAMESPACE), "the checkup's namespace");
    // The pod must not match the DaemonSet's selector (app.kubernetes.io/name: nodeprep).
    assert_eq!(k["commonLabels"]["app.kubernetes.io/name"].as_str(), Some("nodeprep-checkup"));

    let resources = strings(&k["resources"], "checkup kustomization resources");
    let listed: BTreeSet<&str> = resources.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), resources.len(), "a resource listed twice: {resources:?}");
    for r in &resources {
        assert!(checkup_dir().join(r).is_file(), "the checkup kustomization lists {r}, which does not exist");
    }
    let docs = checkup_objects();
    for d in &docs {
        assert!(listed.contains(d.file.as_str()), "daemonset/checkup/{} is not in its kustomization", d.file);
        assert!(d.value["apiVersion"].as_str().is_some_and(|v| !v.is_empty()), "{}: no apiVersion", d.at());
        let ns = &d.value["metadata"]["namespace"];
        if CLUSTER_SCOPED.contains(&d.kind()) {
            assert!(ns.is_null(), "{}: a cluster-scoped object with a namespace", d.at());
        } else {
            assert!(NAMESPACED.contains(&d.kind()) || d.kind() == "Job", "{}: kind not known to this test", d.at());
            assert_eq!(ns.as_str(), Some(NAMESPACE), "{}: metadata.namespace", d.at());
        }
    }
    assert!(find(&docs, "Namespace", NAMESPACE).is_none(), "deleting the checkup must not delete the namespace");
    // Its names are its own: deleting the checkup leaves the agent's objects alone.
    let agent = objects();
    for d in &docs {
        assert!(find(&agent, d.kind(), d.name()).is_none(), "{} is also one of the agent's objects", d.at());
    }
}

#[test]
fn the_checkup_service_account_is_the_jobs_and_the_bindings_point_at_it() {
    let docs = checkup_objects();
    let job = checkup_job(&docs);
    let sa = text(&job.value["spec"]["template"]["spec"]["serviceAccountName"], "Job serviceAccountName");
    assert_eq!(sa, CHECKUP_SA);
    assert!(find(&docs, "ServiceAccount", sa).is_some(), "ServiceAccount {sa} does not exist");
    for (binding_kind, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let b = one(&docs, binding_kind);
        let role_ref = &b.value["roleRef"];
        assert_eq!(role_ref["apiGroup"].as_str(), Some("rbac.authorization.k8s.io"), "{}: roleRef.apiGroup", b.at());
        assert_eq!(role_ref["kind"].as_str(), Some(role_kind), "{}: roleRef.kind", b.at());
        let role_name = text(&role_ref["name"], "roleRef.name");
        assert!(find(&docs, role_kind, role_name).is_some(), "{}: {role_kind} {role_name} does not exist", b.at());
        let subjects = seq(&b.value["subjects"], "subjects");
        assert_eq!(subjects.len(), 1, "{}: one subject, the checkup", b.at());
        assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"), "{}", b.at());
        assert_eq!(subjects[0]["name"].as_str(), Some(sa), "{}: subject name", b.at());
        assert_eq!(subjects[0]["namespace"].as_str(), Some(NAMESPACE), "{}: subject namespace", b.at());
    }
}

#[test]
fn the_checkup_rbac_is_its_configmap_and_reading_nodes() {
    let docs = checkup_objects();
    // The ConfigMap the Job is told about is the one the Role grants, and the one shipped.
    let job = checkup_job(&docs);
    let name = checkup_env(job, "CONFIGMAP_NAME");
    assert_eq!(name["value"].as_str(), Some(CHECKUP_CONFIG_MAP), "CONFIGMAP_NAME");
    assert!(find(&docs, "ConfigMap", CHECKUP_CONFIG_MAP).is_some());
    assert_eq!(
        rules(one(&docs, "Role")),
        expect_rules(&[
            ("", "configmaps", &[CHECKUP_CONFIG_MAP], &["get", "update", "patch"]),
            ("security.openshift.io", "securitycontextconstraints", &["privileged"], &["use"]),
        ]),
    );
    assert_eq!(rules(one(&docs, "ClusterRole")), expect_rules(&[("", "nodes", &[], &["get"])]));
}

#[test]
fn the_checkup_job_follows_the_framework_and_reads_the_host() {
    let docs = checkup_objects();
    let job = checkup_job(&docs);
    let spec = &job.value["spec"];
    let pod = &spec["template"]["spec"];
    let c = checkup_container(job);
    assert_eq!(job.value["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    assert_eq!(spec["backoffLimit"].as_i64(), Some(0));

    // The framework's variables and the node, from the downward API.
    let ns = checkup_env(job, "CONFIGMAP_NAMESPACE");
    assert_eq!(ns["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("metadata.namespace"));
    let node = checkup_env(job, "NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("spec.nodeName"));

    // It runs where the ConfigMap says it must.
    let data = checkup_data(&docs);
    assert_eq!(
        pod["nodeSelector"]["kubernetes.io/hostname"].as_str(),
        data.get("spec.param.nodeName").map(String::as_str),
        "the Job's nodeSelector and spec.param.nodeName name the same node"
    );

    // The host's / read-only at --host-root.
    let args = strings(&c["args"], "Job args");
    assert_eq!(args.last().map(String::as_str), Some("checkup"), "{args:?}");
    let host_root = flag(&args, "--host-root");
    let volumes = seq(&pod["volumes"], "Job volumes");
    assert_eq!(volumes.len(), 1, "one volume, the host's /");
    assert_eq!(volumes[0]["hostPath"]["path"].as_str(), Some("/"));
    let mounts = seq(&c["volumeMounts"], "Job volumeMounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["name"], volumes[0]["name"], "the mount is the hostPath volume");
    assert_eq!(mounts[0]["mountPath"].as_str(), Some(host_root.as_str()), "--host-root is where / is mounted");
    assert_eq!(mounts[0]["readOnly"].as_bool(), Some(true), "the checkup changes nothing on the host");

    // /dev/kvm opens only in a privileged container; the same image as the agent's.
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true), "privileged");
    assert_eq!(
        job.value["spec"]["template"]["metadata"]["annotations"]["openshift.io/required-scc"].as_str(),
        Some("privileged")
    );
    let agent = objects();
    assert_eq!(c["image"], container(one(&agent, "DaemonSet"))["image"], "the checkup's image is the agent's");
    assert!(c["command"].is_null(), "the image's entrypoint runs");

    // The Job's own deadline is a safety net above the checkup's timeout.
    let timeout = nodeprep::checkup::parse_go_duration(&data["spec.timeout"]).expect("spec.timeout");
    let deadline = int(&spec["activeDeadlineSeconds"], "activeDeadlineSeconds");
    assert!(deadline as u64 > timeout.as_secs() + 60, "activeDeadlineSeconds {deadline} vs spec.timeout {timeout:?}");

    // And the binary accepts the arguments.
    let mut args = args;
    args.push("--help".into());
    let out = Command::new(env!("CARGO_BIN_EXE_nodeprep")).args(&args).output().expect("run nodeprep");
    assert!(out.status.success(), "nodeprep {} refused the Job's arguments:\n{}", args.join(" "), stderr(&out));
}

#[test]
fn the_checkup_configmap_is_a_valid_spec_with_its_example_uncommented_too() {
    let docs = checkup_objects();
    let data = checkup_data(&docs);
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["spec.param.nodeName", "spec.param.requirements", "spec.timeout"], "no status.* as shipped");
    let spec = nodeprep::checkup::parse_spec(&data).unwrap_or_else(|e| panic!("the shipped spec is refused: {e:?}"));
    assert_eq!(spec.timeout_text, "5m");
    use nodeprep::eligibility::Requirement;
    assert_eq!(spec.requirements, [Requirement::Kvm, Requirement::Iommu, Requirement::Passthrough]);
    assert!(spec.resources.is_empty());

    // The commented spec.param.resources line, uncommented, is valid as well.
    let text = std::fs::read_to_string(checkup_dir().join("configmap.yaml")).expect("read configmap.yaml");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("# spec.param.resources:"))
        .expect("a commented spec.param.resources example");
    let mut data = data;
    data.insert("spec.param.resources".into(), line.trim().into());
    let spec = nodeprep::checkup::parse_spec(&data).unwrap_or_else(|e| panic!("the example is refused: {e:?}"));
    assert_eq!(spec.resources, ["nvidia.com/TU104GL_Tesla_T4"]);
}
