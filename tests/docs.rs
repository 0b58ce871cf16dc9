//! Every command in README.md and docs/*.md is run here, so none can go stale.
//!
//! Each shell block (```sh, ```bash, ```shell, ```console) carries, on the line before it, an
//! HTML comment that GitHub does not show and that says how it is tested; a shell block without
//! one, or with one this file does not know, fails [`every_block_is_classified`]:
//!
//! - `<!-- test: cli HOST -->`: `nodeprep` commands, run on a fixture host (`intel`, `amd`,
//!   `nested`: `support::machines`) or, for `real`, on this machine (`cargo run --release --`
//!   stands for the binary under test), from a directory holding the page's `file` blocks. The
//!   exit status must be 0, or the N of a trailing `# exit status N` comment. In a `console`
//!   block, `$ ` starts a command and the lines below it are output: each must be a line of the
//!   output (`...` stands for any text within it).
//! - `<!-- test: cli HOST agent=FILE -->`: the same, beside `nodeprep run --config FILE` and a
//!   kubelet stand-in; `/var/lib/kubelet/device-plugins` is mapped to their plugin directory.
//! - `<!-- test: cli HOST daemon -->`: a command that runs until stopped: it must still run
//!   after 2 s and exit 0 on SIGTERM.
//! - `<!-- test: cluster -->`: `oc` and `kubectl` commands, run in order as the upstream
//!   `kubectl` (`oc` takes the same subcommands) on a real cluster (`support::k8s`), one cluster
//!   per page, from the repository's root; `NODE` is the test's node. `oc debug node/NODE ... --
//!   chroot /host CMD` runs CMD on a fixture host (its absolute paths under the fixture's root;
//!   a `nodeprep` with `--host-root` the fixture), and so does `oc debug node/NODE ... --
//!   /usr/bin/nodeprep --host-root /host ARGS`: the fixture stands for the node.
//! - `<!-- test: ci -->`: test and build commands: `scripts/test.sh` (or `.ci/run`, CI's entry)
//!   must run them; one test binary or filter (`cargo nextest run --test X`, `-E
//!   'binary(X)'`) must name a binary that exists.
//! - `<!-- test: file NAME -->` before a `yaml` block: written as NAME for the page's `cli`
//!   commands. `<!-- test: config -->`: `nodeprep config check` must accept it.
//!
//! `text` blocks and unmarked `yaml` blocks are not run, and a `text` block must not hold a `$ `
//! command. Relative links and their anchors must resolve.
//!
//! The cluster tests (`test(cluster)`) need the Kubernetes build (`tests/k8s/build.sh`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::agent::{Agent, AgentSpec, spawn_kubelet};
use support::k8s::{Cluster, NODE, Spec};
use support::tree::driver_of;
use support::{HostTree, machines};

const SHELL: &[&str] = &["sh", "bash", "shell", "console"];
/// What a fenced block may be besides a shell block; anything else (or nothing) fails.
const OTHER: &[&str] = &["text", "yaml", "json", "rust", "go", "toml", "proto"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(repo()).expect("under the repo").to_owned())
        .collect();
    docs.sort();
    out.extend(docs);
    out
}

/// One fenced block.
#[derive(Debug, Clone)]
struct Block {
    page: PathBuf,
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    /// The `test: ...` marker on the line before, without `test:`.
    marker: Option<String>,
    body: String,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.page.display(), self.line)
    }
}

fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(repo().join(page)).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let marker = i
                .checked_sub(1)
                .and_then(|p| lines[p].trim().strip_prefix("<!-- test:"))
                .and_then(|m| m.strip_suffix("-->"))
                .map(|m| m.trim().to_owned());
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
                i += 1;
            }
            assert!(i < lines.len(), "{}:{}: unclosed fence", page.display(), start + 1);
            out.push(Block {
                page: page.to_owned(),
                line: start + 1,
                info: info.trim().to_owned(),
                marker,
                body: body.join("\n"),
            });
        }
        i += 1;
    }
    out
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|p| blocks(p)).collect()
}

/// How a block is tested.
#[derive(Debug, Clone, PartialEq)]
enum Class {
    Cli {
        host: String,
        agent: Option<String>,
        daemon: bool,
    },
    Cluster,
    Ci,
    File(String),
    Config,
    /// Not run: output, a manifest, a fragment.
    Shown,
}

const HOSTS: &[&str] = &["intel", "amd", "nested", "real"];

fn classify(b: &Block) -> Result<Class, String> {
    let lang = b.info.split_whitespace().next().unwrap_or("");
    if lang.is_empty() {
        return Err("a fence without an info string: say what it is (text, yaml, sh, ...)".into());
    }
    let marker: Vec<&str> = b.marker.as_deref().map(|m| m.split_whitespace().collect()).unwrap_or_default();
    if SHELL.contains(&lang) {
        let class = match marker.as_slice() {
            [] => return Err(format!("a ```{lang} block without a <!-- test: ... --> marker: no test runs it")),
            ["cli", host, rest @ ..] if HOSTS.contains(host) => {
                let mut agent = None;
                let mut daemon = false;
                for r in rest {
                    match r.strip_prefix("agent=") {
                        Some(f) => agent = Some(f.to_owned()),
                        None if *r == "daemon" => daemon = true,
                        None => return Err(format!("unknown cli option {r:?}")),
                    }
                }
                Class::Cli { host: (*host).to_owned(), agent, daemon }
            }
            ["cluster"] => Class::Cluster,
            ["ci"] => Class::Ci,
            other => return Err(format!("unknown marker for a shell block: {other:?}")),
        };
        return Ok(class);
    }
    if !OTHER.contains(&lang) {
        return Err(format!("unknown info string {lang:?}"));
    }
    match (lang, marker.as_slice()) {
        (_, []) => {
            if let Some(l) = b.body.lines().find(|l| l.trim_start().starts_with("$ ")) {
                return Err(format!("a command in a ```{lang} block, which nothing runs: {l:?}"));
            }
            Ok(Class::Shown)
        }
        ("yaml", ["file", name]) => Ok(Class::File((*name).to_owned())),
        ("yaml", ["config"]) => Ok(Class::Config),
        (_, m) => Err(format!("marker {m:?} on a ```{lang} block")),
    }
}

// ---- commands ----------------------------------------------------------------------------------

/// One command of a block: its words, the status it must exit with, the output it must show.
#[derive(Debug)]
struct Cmd {
    words: Vec<String>,
    status: i32,
    expect: Vec<String>,
    text: String,
}

/// Splits at `&&` too: each part is a command of its own, run in order.
fn commands(b: &Block) -> Vec<Cmd> {
    let console = b.info.starts_with("console");
    let mut out: Vec<Cmd> = Vec::new();
    let mut pending = String::new();
    let mut in_output = false;
    for raw in b.body.lines() {
        let line = if console {
            match raw.strip_prefix("$ ") {
                Some(c) => {
                    in_output = false;
                    c
                }
                None if in_output || pending.is_empty() => {
                    if let Some(last) = out.last_mut().filter(|_| in_output) {
                        if !raw.trim().is_empty() {
                            last.expect.push(raw.trim_end().to_owned());
                        }
                        continue;
                    }
                    assert!(raw.trim().is_empty(), "{}: output before any `$ ` command: {raw:?}", b.at());
                    continue;
                }
                None => raw,
            }
        } else {
            raw
        };
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let (cmd, comment) = match full.find(" #") {
            Some(i) => (full[..i].trim().to_owned(), full[i + 2..].trim().to_owned()),
            None => (full.trim().to_owned(), String::new()),
        };
        let status = comment
            .split_once("exit status ")
            .map(|(_, s)| s.chars().take_while(char::is_ascii_digit).collect::<String>())
            .map(|s| s.parse().unwrap_or_else(|_| panic!("{}: bad exit status in {comment:?}", b.at())))
            .unwrap_or(0);
        for part in cmd.split(" && ") {
            let words = split_words(part).unwrap_or_else(|e| panic!("{}: {e}: {part}", b.at()));
            assert!(
                !words.iter().any(|w| w == "|" || w == ";" || w == ">"),
                "{}: pipes and redirections are not run: {part}",
                b.at()
            );
            out.push(Cmd { words, status, expect: Vec::new(), text: part.to_owned() });
        }
        in_output = console;
    }
    assert!(pending.is_empty(), "{}: a continued line with nothing after it", b.at());
    out
}

/// Shell words: white space separates, single and double quotes group (no expansions).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut started = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(x) => cur.push(x),
                        None => return Err("unclosed quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                started = true;
                cur.push(c);
            }
        }
    }
    if started {
        out.push(cur);
    }
    Ok(out)
}

/// An expected output line matches an output line equal to it, or holding its `...`-separated
/// parts in order.
fn line_matches(expected: &str, actual: &str) -> bool {
    if !expected.contains("...") {
        return expected == actual.trim_end();
    }
    let mut rest = actual;
    for part in expected.split("...") {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `Err` with what differs: the exit status, or an output line the doc shows that is missing.
fn check_output(b: &Block, c: &Cmd, o: &Output) -> Result<(), String> {
    if o.status.code() != Some(c.status) {
        return Err(format!("{}: `{}`: want exit status {}, got {}", b.at(), c.text, c.status, show(o)));
    }
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    match c.expect.iter().find(|e| !all.lines().any(|l| line_matches(e, l))) {
        Some(e) => Err(format!("{}: `{}` did not print\n{e}\n{}", b.at(), c.text, show(o))),
        None => Ok(()),
    }
}

// ---- cli ---------------------------------------------------------------------------------------

fn host(name: &str) -> Option<HostTree> {
    match name {
        "intel" => Some(machines::intel_gpu_server()),
        "amd" => Some(machines::amd_iommu_off()),
        "nested" => Some(machines::nested_vm()),
        "real" => None,
        other => panic!("unknown host {other}"),
    }
}

/// The page's `file` blocks, written into a fresh directory.
fn page_files(page: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for b in blocks(page) {
        if let Ok(Class::File(name)) = classify(&b) {
            std::fs::write(dir.path().join(&name), format!("{}\n", b.body)).expect("write file");
        }
    }
    dir
}

/// `nodeprep ARGS` (or `cargo run --release -- ARGS`) as the binary under test, with the host
/// root inserted; `None` for anything else.
fn nodeprep_command(words: &[String], root: Option<&Path>) -> Option<Command> {
    let args: &[String] = match words {
        [first, rest @ ..] if first == "nodeprep" || first == "/usr/bin/nodeprep" => rest,
        [c, r, rel, dd, rest @ ..] if c == "cargo" && r == "run" && rel == "--release" && dd == "--" => rest,
        _ => return None,
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodeprep"));
    let mut args: Vec<String> = args.to_vec();
    if let Some(root) = root {
        // A `--host-root /host` the doc gives (as `oc debug` runs it) is the fixture too.
        if let Some(i) = args.iter().position(|a| a == "--host-root") {
            args.drain(i..i + 2);
        }
        cmd.arg("--host-root").arg(root);
    }
    cmd.args(args).env_remove("KUBECONFIG").env_remove("KUBERNETES_SERVICE_HOST");
    Some(cmd)
}

/// Runs every `cli` block of `page`; returns how many commands ran, and what failed.
fn run_cli_page(page: &Path, failed: &mut Vec<String>) -> usize {
    let files = page_files(page);
    let mut ran = 0;
    for b in blocks(page) {
        let Ok(Class::Cli { host: name, agent, daemon }) = classify(&b) else { continue };
        let tree = host(&name);
        let root = tree.as_ref().map(HostTree::root);
        let kubelet_dir = tempfile::tempdir().expect("tempdir");
        let _agent = agent.map(|config| {
            let plugins = kubelet_dir.path().to_owned();
            let kubelet = spawn_kubelet(plugins.clone());
            let a = Agent::start(AgentSpec {
                host_root: root.expect("an agent needs a fixture host"),
                config: &files.path().join(config),
                plugin_dir: &plugins,
                kubeconfig: None,
                node_name: NODE,
                log: files.path().join("agent.log"),
                extra: &[],
            });
            assert!(a.wait_ready(Duration::from_secs(30)), "{}: the agent did not get ready:\n{}", b.at(), a.logs());
            (kubelet, a)
        });
        for c in commands(&b) {
            let words: Vec<String> = c
                .words
                .iter()
                .map(|w| w.replace("/var/lib/kubelet/device-plugins", &kubelet_dir.path().display().to_string()))
                .collect();
            let mut cmd = nodeprep_command(&words, root)
                .unwrap_or_else(|| panic!("{}: a cli block runs nodeprep commands only: {}", b.at(), c.text));
            cmd.current_dir(files.path());
            if daemon {
                let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
                std::thread::sleep(Duration::from_secs(2));
                assert!(child.try_wait().expect("try_wait").is_none(), "{}: `{}` stopped on its own", b.at(), c.text);
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
                let start = Instant::now();
                let status = loop {
                    if let Some(s) = child.try_wait().expect("try_wait") {
                        break s;
                    }
                    assert!(start.elapsed() < Duration::from_secs(10), "{}: `{}` ignored SIGTERM", b.at(), c.text);
                    std::thread::sleep(Duration::from_millis(20));
                };
                let o = child.wait_with_output().expect("output");
                if status.code() != Some(c.status) {
                    failed.push(format!("{}: `{}` on SIGTERM: {}", b.at(), c.text, show(&o)));
                }
            } else {
                let o = cmd.output().expect("run nodeprep");
                failed.extend(check_output(&b, &c, &o).err());
            }
            ran += 1;
        }
    }
    ran
}

// ---- the tests ---------------------------------------------------------------------------------

#[test]
fn every_block_is_classified() {
    let mut problems = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for b in all_blocks() {
        match classify(&b) {
            Ok(c) => {
                let key = format!("{c:?}").split([' ', '(', '{']).next().unwrap_or("").to_owned();
                *counts.entry(key).or_default() += 1;
            }
            Err(e) => problems.push(format!("{}: {e}", b.at())),
        }
    }
    assert!(problems.is_empty(), "blocks no test runs:\n{}", problems.join("\n"));
    eprintln!("blocks by class: {counts:?}");
}

#[test]
fn cli_commands_run_on_fixture_hosts() {
    let mut ran = 0;
    let mut failed = Vec::new();
    for page in pages() {
        ran += run_cli_page(&page, &mut failed);
    }
    eprintln!("{ran} nodeprep commands run");
    assert!(failed.is_empty(), "{} of {ran} commands failed:\n\n{}", failed.len(), failed.join("\n\n"));
}

#[test]
fn config_examples_are_valid() {
    let tree = machines::intel_gpu_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    for b in all_blocks() {
        if classify(&b) != Ok(Class::Config) {
            continue;
        }
        let path = dir.path().join(format!("config-{n}.yaml"));
        std::fs::write(&path, &b.body).expect("write");
        let o = support::cli::nodeprep(tree.root(), &["config", "check", path.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(0), "{}: nodeprep config check refuses it: {}", b.at(), show(&o));
        n += 1;
    }
    eprintln!("{n} config examples valid");
}

/// A script line's words without what only CI adds (`exec`, `--locked`, variables).
fn ci_words(line: &str) -> Vec<String> {
    split_words(line)
        .unwrap_or_default()
        .into_iter()
        .skip_while(|w| w == "exec" || (w.contains('=') && !w.starts_with('-')))
        .filter(|w| w != "--locked")
        .collect()
}

#[test]
fn ci_commands_are_run_by_ci() {
    let script = std::fs::read_to_string(repo().join("scripts/test.sh")).expect("scripts/test.sh");
    let entry = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let ci: Vec<Vec<String>> = script.lines().chain(entry.lines()).map(ci_words).filter(|w| !w.is_empty()).collect();
    let exists = |dir: &str, name: &str| repo().join(dir).join(format!("{name}.rs")).is_file();
    let mut n = 0;
    for b in all_blocks() {
        if classify(&b) != Ok(Class::Ci) {
            continue;
        }
        for c in commands(&b) {
            let w = ci_words(&c.text);
            let ok = match w.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                _ if ci.contains(&w) => true,
                // CI's entry point itself.
                ["bash", ".ci/run"] => true,
                // The binary `cargo run` builds is what every test runs; CI builds it.
                ["cargo", "run", "--release", "--", ..] => {
                    ci.iter().any(|l| l.starts_with(&["cargo".into(), "nextest".into()]))
                }
                // One part of what CI runs: the binaries named must exist.
                ["cargo", "nextest", "run", "--test", name] => exists("tests", name),
                ["cargo", "nextest", "run", "-E", expr] => {
                    let names: Vec<&str> = expr.split("binary(").skip(1).filter_map(|s| s.split(')').next()).collect();
                    !names.is_empty() && names.iter().all(|n| exists("tests", n))
                }
                _ => false,
            };
            assert!(ok, "{}: `{}` is not run by scripts/test.sh or .ci/run", b.at(), c.text);
            n += 1;
        }
    }
    eprintln!("{n} ci commands found in CI");
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation but `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap_or_default();
    let mut in_fence = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && l.starts_with('#') {
            out.push(anchor(l.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn links_resolve() {
    let mut problems = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(repo().join(&page)).expect("page");
        let dir = repo().join(&page).parent().expect("dir").to_owned();
        for (i, l) in text.lines().enumerate() {
            for part in l.split("](").skip(1) {
                let Some(target) = part.split(')').next() else { continue };
                if target.starts_with("http") {
                    continue;
                }
                let (file, frag) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() { repo().join(&page) } else { dir.join(file) };
                if !path.exists() {
                    problems.push(format!("{}:{}: {target}: no such file", page.display(), i + 1));
                } else if !frag.is_empty() && !anchors(&path).iter().any(|a| a == frag) {
                    problems.push(format!("{}:{}: {target}: no such heading", page.display(), i + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

// ---- cluster -----------------------------------------------------------------------------------

/// The pages whose `cluster` blocks the tests below run, each on a cluster of its own.
const CLUSTER_PAGES: &[&str] = &["README.md", "docs/checkup.md", "docs/dra.md"];

fn cluster_blocks(page: &str) -> Vec<Block> {
    blocks(Path::new(page)).into_iter().filter(|b| classify(b) == Ok(Class::Cluster)).collect()
}

#[test]
fn every_page_of_oc_commands_has_a_test() {
    for b in all_blocks() {
        if classify(&b) == Ok(Class::Cluster) {
            let page = b.page.display().to_string();
            assert!(CLUSTER_PAGES.contains(&page.as_str()), "{}: no cluster test runs this page's blocks", b.at());
        }
    }
}

/// A command of a `cluster` block, as it runs here: `oc`/`kubectl` as the admin's kubectl from the
/// repository's root, `oc debug node/NODE` on the fixture host `root` that stands for the node.
fn cluster_command(c: &Cluster, words: &[String], root: &Path) -> Command {
    let words: Vec<String> = words.iter().map(|w| w.replace("NODE", NODE)).collect();
    assert!(words[0] == "oc" || words[0] == "kubectl", "a cluster block runs oc and kubectl only: {words:?}");
    if words[1] == "debug" {
        let i = words.iter().position(|w| w == "--").expect("oc debug node/NODE ... -- COMMAND");
        let inner: &[String] = match &words[i + 1..] {
            [chroot, host, rest @ ..] if chroot == "chroot" && host == "/host" => rest,
            rest => rest,
        };
        if let Some(cmd) = nodeprep_command(inner, Some(root)) {
            return cmd;
        }
        let mut cmd = Command::new(&inner[0]);
        for a in &inner[1..] {
            match a.strip_prefix('/') {
                Some(rel) => cmd.arg(root.join(rel)),
                None => cmd.arg(a),
            };
        }
        return cmd;
    }
    let mut cmd = Command::new(support::k8s::binary());
    cmd.arg("kubectl")
        .arg(format!("--kubeconfig={}", c.admin_kubeconfig().display()))
        .args(&words[1..])
        .current_dir(repo())
        .env_remove("KUBECONFIG")
        // `oc edit`: an editor that changes nothing ("Edit cancelled, no changes made.").
        .env("KUBE_EDITOR", "true");
    cmd
}

/// Runs `b`'s commands in order; `after` sees each command and what it printed, and does what
/// the cluster would do in reaction that the fake runtime does not (start or stop the agent).
fn run_cluster_block(c: &Cluster, b: &Block, root: &Path, after: &mut dyn FnMut(&str, &str)) {
    for cmd in commands(b) {
        let start = Instant::now();
        let o = cluster_command(c, &cmd.words, root).output().expect("run");
        if let Err(e) = check_output(b, &cmd, &o) {
            panic!("{e}");
        }
        eprintln!("{}: `{}`: {:.1} s", b.at(), cmd.text, start.elapsed().as_secs_f64());
        after(&cmd.text, &String::from_utf8_lossy(&o.stdout));
    }
}

/// `nodeprep run` as the DaemonSet's pod would run it, on `root`, as the DaemonSet's
/// ServiceAccount with a token bound to a pod on the node, on the DaemonSet's port (the
/// kubelet's readiness probe reaches it there: the pod has the host's network).
fn start_daemonset_agent(c: &Cluster, root: &Path, dir: &Path, config: &str) -> std::process::Child {
    let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).expect("config");
    let plugins = c.plugin_dir();
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .arg("--host-root")
        .arg(root)
        .args(["--log-level", "info", "run", "--no-bind", "--listen", "0.0.0.0:9437", "--config"])
        .arg(&path)
        .arg("--plugin-dir")
        .arg(&plugins)
        .env("KUBECONFIG", &kubeconfig)
        .env("NODE_NAME", NODE)
        .env("HOME", dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nodeprep run")
}

fn terminate(child: &mut std::process::Child) -> Option<i32> {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn cluster_readme_install_verify_uninstall() {
    let blocks = cluster_blocks("README.md");
    assert_eq!(blocks.len(), 3, "install, verify, uninstall: a new block needs its place here");
    let c = Cluster::start(Spec { kubelet: true, controllers: true });
    let tree = machines::intel_gpu_server();
    let dir = tempfile::tempdir().expect("tempdir");
    // Huge pages, so there is an Event to see.
    let config = "hugepages:\n  - size: 2Mi\n    pages: 16\n";
    let mut agent: Option<std::process::Child> = None;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for b in &blocks {
        run_cluster_block(&c, b, tree.root(), &mut |cmd, out| {
            seen.insert(cmd.to_owned(), out.to_owned());
            if cmd == "oc apply -k daemonset/" {
                // The fake runtime runs no process for the pod: this is the agent it would run.
                agent = Some(start_daemonset_agent(&c, tree.root(), dir.path(), config));
            }
            if cmd == "oc -n nodeprep rollout status ds/nodeprep" {
                // Rolled out at once: the node is no worker yet, so the DaemonSet wants no pod (its
                // pod could never be Ready here: its probes go to the node's address, which on this
                // machine is not where the agent listens). Now it becomes one, so the DaemonSet's
                // pod is there for `get pods` and `logs` (the fake runtime keeps no log: kubectl
                // says so and exits 0).
                c.kubectl_ok(&["label", "node", NODE, "node-role.kubernetes.io/worker="]);
                c.wait_for("the DaemonSet's pod", Duration::from_secs(60), |c| {
                    let out = c.kubectl_ok(&[
                        "get",
                        "pods",
                        "-n",
                        "nodeprep",
                        "-l",
                        "app.kubernetes.io/name=nodeprep",
                        "-o",
                        "name",
                    ]);
                    (!out.trim().is_empty()).then_some(())
                });
            }
            if cmd == "oc -n nodeprep delete ds/nodeprep" {
                // The kubelet would SIGTERM the pod's agent.
                let code = agent.as_mut().and_then(terminate);
                assert_eq!(code, Some(0), "the agent on SIGTERM");
            }
        });
    }
    let describe = &seen["oc describe node NODE"];
    assert!(describe.contains("HugepagesReserved"), "{describe}");
    let events = &seen["oc get events -n default --field-selector source=nodeprep"];
    assert!(events.contains("HugepagesReserved"), "{events}");
    // Uninstalled: none of nodeprep's labels is left on the Node.
    let node = c.node().expect("the Node");
    let left: Vec<&String> = node["metadata"]["labels"]
        .as_object()
        .map(|m| m.keys().filter(|k| k.starts_with("nodeprep.io/") || k.contains("runtime.kata")).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "labels left after the uninstall: {left:?}");
}

/// The Job's pod, once the Job controller made it.
fn job_pod(c: &Cluster) -> String {
    c.wait_for("the checkup Job's pod", Duration::from_secs(60), |c| {
        let out = c.kubectl(&["get", "pods", "-n", "nodeprep", "-l", "job-name=nodeprep-checkup", "-o", "name"]);
        let name = String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_owned);
        name.filter(|n| !n.is_empty())
    })
}

/// What the checkup Job's pod does on a node, here on the fixture: `nodeprep checkup` as the
/// checkup's ServiceAccount; then its pod is marked Succeeded, as the kubelet would once the
/// container exited 0 (no kubelet runs here), so the Job controller completes the Job.
fn run_checkup_job(c: &Cluster, root: &Path) {
    let pod = job_pod(c);
    if c.object(&format!("/api/v1/namespaces/nodeprep/pods/nodeprep-checkup-on-{NODE}")).is_none() {
        c.create(&support::k8s::token_holder("nodeprep", "nodeprep-checkup", NODE));
    }
    let kubeconfig = c.holder_kubeconfig("nodeprep", "nodeprep-checkup", NODE);
    let o = Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .arg("--host-root")
        .arg(root)
        .arg("checkup")
        .env("KUBECONFIG", &kubeconfig)
        .env("CONFIGMAP_NAMESPACE", "nodeprep")
        .env("CONFIGMAP_NAME", "nodeprep-checkup-config")
        .env("NODE_NAME", NODE)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run nodeprep checkup");
    assert!(o.status.success(), "nodeprep checkup: {}", show(&o));
    let now = "2026-01-01T00:00:00Z";
    let status = serde_json::json!({"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "checkup", "image": "quay.io/nodeprep/nodeprep:latest", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}]}});
    c.kubectl_ok(&["patch", &pod, "-n", "nodeprep", "--subresource=status", "--type=merge", "-p", &status.to_string()]);
}

#[test]
fn cluster_checkup_runs_on_demand() {
    let blocks = cluster_blocks("docs/checkup.md");
    assert_eq!(blocks.len(), 2, "run, remove: a new block needs its place here");
    // No kubelet: the Job's pod is played by this test (see run_checkup_job).
    let c = Cluster::start(Spec { kubelet: false, controllers: true });
    c.create(&support::k8s::node_object(NODE));
    c.kubectl_ok(&["apply", "-k", &repo().join("daemonset").display().to_string()]);
    let tree = machines::intel_gpu_server();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    run_cluster_block(&c, &blocks[0], tree.root(), &mut |cmd, out| {
        seen.insert(cmd.to_owned(), out.to_owned());
        if cmd == "oc apply -k daemonset/checkup" {
            run_checkup_job(&c, tree.root());
        }
    });
    let result = &seen["oc -n nodeprep get configmap nodeprep-checkup-config -o yaml"];
    for key in ["status.succeeded", "status.completionTimestamp", "status.result.iommu"] {
        assert!(result.contains(key), "{key} missing:\n{result}");
    }
    run_cluster_block(&c, &blocks[1], tree.root(), &mut |_, _| {});
    // The agent's side is still there.
    c.kubectl_ok(&["get", "namespace", "nodeprep"]);
    c.kubectl_ok(&["-n", "nodeprep", "get", "daemonset", "nodeprep"]);
}

#[test]
fn cluster_dra_walk_through() {
    use support::machines::intel::{GPU_B, GPU_B_AUDIO};
    let page = Path::new("docs/dra.md");
    let blocks = cluster_blocks("docs/dra.md");
    assert_eq!(blocks.len(), 3, "the pool, the checks, the clean-up: a new block needs its place here");
    let all = self::blocks(page);
    let config = all.iter().find(|b| classify(b) == Ok(Class::Config)).expect("the walk-through's config");
    let files = page_files(page);

    let c = Cluster::start(Spec { kubelet: true, controllers: true });
    c.kubectl_ok(&["apply", "-k", &repo().join("daemonset").display().to_string()]);
    // The fake runtime runs no agent for the DaemonSet's pod: this test runs it, in-process, over
    // the simulated kernel, so that Prepare's binds change the fixture as Linux would.
    c.kubectl_ok(&["-n", "nodeprep", "delete", "daemonset", "nodeprep"]);
    let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
    let tree = machines::intel_gpu_server();
    let root = tree.root().to_owned();
    let config_path = files.path().join("walk-through-config.yaml");
    std::fs::write(&config_path, &config.body).expect("config");
    let agent = support::inprocess::InProcessAgent::start(&root, &config_path, &kubeconfig, &c);
    c.wait_for("the ResourceSlice", Duration::from_secs(60), |c| {
        let out = c.kubectl_ok(&["get", "resourceslices", "-o", "name"]);
        (!out.trim().is_empty()).then_some(())
    });

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    run_cluster_block(&c, &blocks[0], &root, &mut |cmd, out| {
        seen.insert(cmd.to_owned(), out.to_owned());
    });
    let gpu = nodeprep::dra::devices::device_name(&GPU_B.parse().expect("address"));
    let pool = &seen["oc get resourceslices --field-selector spec.driver=vfio.nodeprep.io -o yaml"];
    assert!(pool.contains(&gpu), "{pool}");

    // The claim template from the page, and the pod KubeVirt would make for the VM (no KubeVirt
    // here): its virt-launcher, with the VM's claim and label.
    c.kubectl_ok(&["create", "namespace", "vms"]);
    c.kubectl_ok(&["apply", "-f", &files.path().join("claim-template.yaml").display().to_string()]);
    let launcher = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "virt-launcher-vm-gpu", "namespace": "vms", "labels": {"kubevirt.io/domain": "vm-gpu"}},
        "spec": {"automountServiceAccountToken": false, "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "quadro", "resourceClaimTemplateName": "quadro"}],
            "containers": [{"name": "compute", "image": "example.invalid/virt-launcher:1",
                "resources": {"claims": [{"name": "quadro"}]}}]}});
    c.create(&launcher);
    c.wait_for("the virt-launcher pod Running", Duration::from_secs(60), |c| {
        let p = c.object("/api/v1/namespaces/vms/pods/virt-launcher-vm-gpu")?;
        (p["status"]["phase"] == "Running").then_some(())
    });

    run_cluster_block(&c, &blocks[1], &root, &mut |cmd, out| {
        seen.insert(cmd.to_owned(), out.to_owned());
    });
    let driver = seen.iter().find(|(k, _)| k.contains("/driver")).map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(driver.trim_end().ends_with("/vfio-pci"), "{driver}");
    let claims = seen.iter().find(|(k, _)| k.contains("dra-claims.json")).map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(claims.contains(GPU_B), "{claims}");

    // "Delete the VM and the group goes back to its drivers".
    c.kubectl_ok(&["delete", "pod", "-n", "vms", "virt-launcher-vm-gpu", "--wait=false"]);
    c.wait_for("the GPU back on nouveau", Duration::from_secs(60), |_| {
        (driver_of(&root, GPU_B).as_deref() == Some("nouveau")
            && driver_of(&root, GPU_B_AUDIO).as_deref() == Some("snd_hda_intel"))
        .then_some(())
    });

    // Uninstalled: the agent is gone, its slices removed at once.
    drop(agent);
    run_cluster_block(&c, &blocks[2], &root, &mut |_, _| {});
    let left = c.kubectl_ok(&["get", "resourceslices", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
}
