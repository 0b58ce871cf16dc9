//! `nodeprep::machineconfig`: the checked-in examples under `machineconfigs/` stay byte-for-byte
//! what the generator writes, and every document is a MachineConfig the Machine Config Operator
//! accepts, read back with a YAML parser and an independent base64 decoder.
//!
//! To regenerate the examples after changing the generator:
//! `NODEPREP_UPDATE_MACHINECONFIGS=1 cargo test --test machineconfig`.

use std::path::PathBuf;
use std::sync::Once;

use nodeprep::machineconfig::{
    HugepageRequest, HugepageSize, IommuVendor, MachineConfig, MachineConfigError, MachineConfigRequest, command_line,
    render, render_objects,
};
use serde::Deserialize;
use serde_yaml::Value;

const UPDATE_VAR: &str = "NODEPREP_UPDATE_MACHINECONFIGS";

/// What one checked-in example must contain.
struct Example {
    file: &'static str,
    request: MachineConfigRequest,
    /// `(metadata.name, spec.kernelArguments)` of each document, in order.
    documents: Vec<(&'static str, Vec<&'static str>)>,
    /// The decoded text of `/etc/modprobe.d/vfio.conf`, when there is a vfio document.
    modprobe: Option<&'static str>,
}

/// The examples in `machineconfigs/`. 10de:2230 is GA102GL [RTX A6000], 10de:1aef its GA102 High
/// Definition Audio Controller: the two functions share an IOMMU group and go to a VM together.
fn examples() -> Vec<Example> {
    vec![
        Example {
            file: "worker-intel.yaml",
            request: MachineConfigRequest {
                role: "worker".into(),
                iommu: Some(IommuVendor::Intel),
                vfio_ids: vec![(0x10de, 0x2230), (0x10de, 0x1aef)],
                hugepages: vec![HugepageRequest { size: HugepageSize::OneGi, count: 16 }],
            },
            documents: vec![
                ("100-worker-iommu", vec!["intel_iommu=on", "iommu=pt"]),
                ("100-worker-vfiopci", vec![]),
                ("100-worker-hugepages", vec!["default_hugepagesz=1G", "hugepagesz=1G", "hugepages=16"]),
            ],
            modprobe: Some("options vfio-pci ids=10de:1aef,10de:2230\n"),
        },
        Example {
            file: "worker-amd.yaml",
            request: MachineConfigRequest {
                role: "worker".into(),
                iommu: Some(IommuVendor::Amd),
                vfio_ids: vec![],
                hugepages: vec![HugepageRequest { size: HugepageSize::TwoMi, count: 1024 }],
            },
            documents: vec![
                ("100-worker-iommu", vec!["amd_iommu=on", "iommu=pt"]),
                ("100-worker-hugepages", vec!["default_hugepagesz=2M", "hugepagesz=2M", "hugepages=1024"]),
            ],
            modprobe: None,
        },
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("machineconfigs")
}

fn rendered(e: &Example) -> String {
    render(&e.request).unwrap_or_else(|err| panic!("{}: {err}", e.file))
}

fn update_requested() -> bool {
    std::env::var_os(UPDATE_VAR).is_some_and(|v| v == "1")
}

/// With `NODEPREP_UPDATE_MACHINECONFIGS=1`, rewrites every example once, before any test reads
/// one (tests run in parallel).
fn update_if_requested() {
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        if update_requested() {
            for e in examples() {
                let path = dir().join(e.file);
                std::fs::write(&path, rendered(&e)).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            }
        }
    });
}

fn checked_in(file: &str) -> String {
    update_if_requested();
    let path = dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!("{}: {err}; regenerate it with `{UPDATE_VAR}=1 cargo test --test machineconfig`", path.display())
    })
}

/// The documents of a YAML stream, parsed.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("YAML does not parse: {e}\n{text}")))
        .collect()
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| v.get(k).unwrap_or_else(|| panic!("missing {} in\n{v:?}", path.join("."))))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).as_str().unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_mapping().expect("a mapping").keys().map(|k| k.as_str().expect("string key")).collect()
}

/// RFC 4648 base64 decoding, written independently of the encoder under test.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("{:?} is not a base64 character in {s:?}", c as char),
        }
    };
    assert_eq!(s.len() % 4, 0, "base64 length {} is not a multiple of 4: {s:?}", s.len());
    let mut out = Vec::new();
    for quad in s.as_bytes().chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        assert!(pad <= 2, "too much padding in {s:?}");
        let n = quad[..4 - pad].iter().enumerate().fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    out
}

fn decode_source(source: &str) -> String {
    let payload = source
        .strip_prefix("data:text/plain;charset=utf-8;base64,")
        .unwrap_or_else(|| panic!("not a base64 text data URL: {source:?}"));
    String::from_utf8(base64_decode(payload)).expect("UTF-8 payload")
}

#[test]
fn checked_in_examples_match_the_generator() {
    update_if_requested();
    for e in examples() {
        let want = rendered(&e);
        let have = std::fs::read_to_string(dir().join(e.file)).unwrap_or_default();
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(have.lines().count().min(want.lines().count()));
            panic!(
                "machineconfigs/{} is not what `render` produces now (first difference at line {}); regenerate it \
                 with `{UPDATE_VAR}=1 cargo test --test machineconfig` and review the diff",
                e.file,
                line + 1
            );
        }
    }
}

#[test]
fn the_decoder_in_this_test_is_itself_right() {
    for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
        assert_eq!(base64_decode(encoded), plain.as_bytes(), "{encoded}");
    }
    assert_eq!(base64_decode("+/+/"), [0xfb, 0xff, 0xbf]);
}

#[test]
fn every_document_is_a_machineconfig_with_the_expected_kernel_arguments() {
    for e in examples() {
        let text = checked_in(e.file);
        let docs = documents(&text);
        let names: Vec<&str> = docs.iter().map(|d| str_at(d, &["metadata", "name"])).collect();
        let want_names: Vec<&str> = e.documents.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, want_names, "{}", e.file);
        for (doc, (name, args)) in docs.iter().zip(&e.documents) {
            assert_eq!(keys(doc), ["apiVersion", "kind", "metadata", "spec"], "{name}");
            assert_eq!(str_at(doc, &["apiVersion"]), "machineconfiguration.openshift.io/v1", "{name}");
            assert_eq!(str_at(doc, &["kind"]), "MachineConfig", "{name}");
            assert_eq!(str_at(doc, &["metadata", "labels", "machineconfiguration.openshift.io/role"]), "worker");
            assert_eq!(get(doc, &["metadata", "labels"]).as_mapping().map(|m| m.len()), Some(1), "{name}");
            // A string, not a number: Ignition refuses a numeric version.
            assert_eq!(str_at(doc, &["spec", "config", "ignition", "version"]), "3.2.0", "{name}");
            let have: Vec<&str> = match doc["spec"].get("kernelArguments") {
                Some(a) => a.as_sequence().expect("a list").iter().map(|a| a.as_str().expect("a string")).collect(),
                None => Vec::new(),
            };
            assert_eq!(have, *args, "{name} kernelArguments");
        }
    }
}

#[test]
fn vfio_files_decode_to_the_exact_modprobe_and_modules_load_text() {
    for e in examples() {
        let text = checked_in(e.file);
        let docs = documents(&text);
        let vfio: Vec<&Value> =
            docs.iter().filter(|d| str_at(d, &["metadata", "name"]).ends_with("-vfiopci")).collect();
        let Some(modprobe) = e.modprobe else {
            assert!(vfio.is_empty(), "{}: no vfio ids were asked for", e.file);
            assert!(!text.contains("storage:"), "{}", e.file);
            continue;
        };
        assert_eq!(vfio.len(), 1, "{}", e.file);
        let files = get(vfio[0], &["spec", "config", "storage", "files"]).as_sequence().expect("a list");
        let paths: Vec<&str> = files.iter().map(|f| str_at(f, &["path"])).collect();
        assert_eq!(paths, ["/etc/modprobe.d/vfio.conf", "/etc/modules-load.d/vfio-pci.conf"]);
        for f in files {
            assert_eq!(keys(f), ["path", "mode", "overwrite", "contents"]);
            assert_eq!(get(f, &["mode"]).as_u64(), Some(0o644), "mode must be 420 (0644)");
            assert_eq!(get(f, &["overwrite"]).as_bool(), Some(true));
        }
        assert_eq!(decode_source(str_at(&files[0], &["contents", "source"])), modprobe);
        assert_eq!(decode_source(str_at(&files[1], &["contents", "source"])), "vfio-pci\n");
    }
}

#[test]
fn every_byte_length_round_trips_through_the_encoder() {
    // The modprobe text grows by 10 bytes per id, so its length goes through every remainder
    // mod 3: no padding, `=` and `==`.
    for n in 1..=12u16 {
        let ids: Vec<(u16, u16)> = (0..n).map(|i| (0x8086, 0x1570 + i)).collect();
        let req = MachineConfigRequest { vfio_ids: ids.clone(), ..Default::default() };
        let objs = render_objects(&req).expect("renders");
        let files = &objs[0].spec.config.storage.as_ref().expect("storage").files;
        let want: Vec<String> = ids.iter().map(|(v, d)| format!("{v:04x}:{d:04x}")).collect();
        assert_eq!(decode_source(&files[0].contents.source), format!("options vfio-pci ids={}\n", want.join(",")));
    }
}

#[test]
fn the_yaml_reads_back_into_the_typed_objects() {
    for e in examples() {
        let text = checked_in(e.file);
        let typed: Vec<MachineConfig> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| MachineConfig::deserialize(d).unwrap_or_else(|err| panic!("{}: {err}", e.file)))
            .collect();
        assert_eq!(typed, render_objects(&e.request).expect("renders"), "{}", e.file);
    }
}

#[test]
fn headers_and_readme_give_the_command_line_and_the_reboot_cost() {
    let readme = std::fs::read_to_string(dir().join("README.md")).expect("machineconfigs/README.md");
    for e in examples() {
        let text = checked_in(e.file);
        let cmd = command_line(&e.request);
        assert!(text.starts_with(&format!("# Generated by `{cmd}`.\n")), "{}:\n{text}", e.file);
        assert!(text.contains("reboot every node\n# in the \"worker\" MachineConfigPool"), "{}", e.file);
        assert!(text.contains("`nodeprep bind`"), "{}", e.file);
        assert!(readme.contains(e.file), "README.md does not describe {}", e.file);
        assert!(readme.contains(&cmd), "README.md does not give `{cmd}` for {}", e.file);
    }
    assert_eq!(
        command_line(&examples()[0].request),
        "nodeprep machineconfig --role worker --iommu intel --vfio-ids 10de:1aef,10de:2230 --hugepages 1Gi:16"
    );
    assert!(readme.to_lowercase().contains("reboot"));
}

#[test]
fn output_does_not_depend_on_id_order_or_duplicates() {
    let a = MachineConfigRequest { vfio_ids: vec![(0x10de, 0x2230), (0x10de, 0x1aef)], ..Default::default() };
    let b = MachineConfigRequest {
        vfio_ids: vec![(0x10de, 0x1aef), (0x10de, 0x2230), (0x10de, 0x1aef)],
        ..Default::default()
    };
    assert_eq!(render(&a), render(&b));
    assert_eq!(render(&a), render(&a.clone()));
}

#[test]
fn other_roles_name_and_label_every_object() {
    let req = MachineConfigRequest { role: "master".into(), ..examples().remove(0).request };
    let text = render(&req).expect("renders");
    let docs = documents(&text);
    let names: Vec<&str> = docs.iter().map(|d| str_at(d, &["metadata", "name"])).collect();
    assert_eq!(names, ["100-master-iommu", "100-master-vfiopci", "100-master-hugepages"]);
    for d in &docs {
        assert_eq!(str_at(d, &["metadata", "labels", "machineconfiguration.openshift.io/role"]), "master");
    }
    assert!(text.contains("in the \"master\" MachineConfigPool"));
}

#[test]
fn bad_requests_fail_with_messages_that_say_what_to_do() {
    let empty = MachineConfigRequest::default();
    let err = render(&empty).unwrap_err();
    assert_eq!(err, MachineConfigError::Empty);
    assert!(err.to_string().contains("--hugepages SIZE:COUNT"), "{err}");

    for role in ["", "Worker", "gpu_nodes", "-gpu", &"w".repeat(64)] {
        let req = MachineConfigRequest { role: role.to_owned(), iommu: Some(IommuVendor::Intel), ..Default::default() };
        let err = render(&req).unwrap_err();
        assert!(matches!(err, MachineConfigError::InvalidRole { .. }), "{role:?}: {err:?}");
        assert!(err.to_string().contains("DNS-1123 label"), "{err}");
    }

    let zero = MachineConfigRequest {
        hugepages: vec![HugepageRequest { size: HugepageSize::OneGi, count: 0 }],
        ..Default::default()
    };
    let err = render(&zero).unwrap_err();
    assert_eq!(err, MachineConfigError::ZeroHugepages { size: HugepageSize::OneGi });
    assert!(err.to_string().contains("leave the size out"), "{err}");

    let dup = MachineConfigRequest {
        hugepages: vec![
            HugepageRequest { size: HugepageSize::TwoMi, count: 512 },
            HugepageRequest { size: HugepageSize::OneGi, count: 4 },
            HugepageRequest { size: HugepageSize::TwoMi, count: 512 },
        ],
        ..Default::default()
    };
    let err = render_objects(&dup).unwrap_err();
    assert_eq!(err, MachineConfigError::DuplicateHugepageSize { size: HugepageSize::TwoMi });
    assert!(err.to_string().contains("give each size once"), "{err}");

    assert!("4Mi:2".parse::<HugepageRequest>().is_err());
    assert!("arm".parse::<IommuVendor>().unwrap_err().to_string().contains("expected intel or amd"));
}
