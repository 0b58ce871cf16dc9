//! The `nodeprep` command line: parses arguments, calls the library, prints, sets the exit
//! status. `anyhow` lives here only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nodeprep::bind::{self, Applier, DeviceOutcome, HostKernel, State};
use nodeprep::config::Config;
use nodeprep::eligibility::{self, Requirement};
use nodeprep::host::{self, HostRoot};
use nodeprep::machineconfig::{self, HugepageRequest, IommuVendor, MachineConfigRequest};
use nodeprep::model::PciAddress;

/// Exit status for "the node is not fit for what was asked".
const EXIT_UNFIT: u8 = 1;
/// Exit status for usage errors and host read errors (clap also uses 2 for usage errors).
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "nodeprep",
    version,
    about = "Prepares Kubernetes/OpenShift worker nodes for VMs (KubeVirt) and Kata containers",
    after_help = "Examples:\n  nodeprep scan\n  nodeprep --host-root /host check --require kata,passthrough\n  nodeprep scan -o json | jq '.[] | select(.driver == \"vfio-pci\")'"
)]
struct Cli {
    /// Where the host's `/` is: every sysfs, procfs and /dev path is read under it
    /// (`/host` in the DaemonSet, a copied tree in tests).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    host_root: PathBuf,

    /// Log level on standard error: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    log_level: tracing::Level,

    /// Log format: text (for people) or json (one object per line, for log collectors).
    #[arg(long, global = true, default_value = "text", value_name = "FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// List every PCI function grouped by IOMMU group, like `lspci -nnk` with the grouping
    /// passthrough needs.
    #[command(after_help = "Each function shows its address, [vendor:device] ids and names, class, driver, \
NUMA node, SR-IOV PF/VF relation, what the host uses through it (interfaces, disks, mounts, \
default route) and any file that could not be read.\n\nExamples:\n  nodeprep scan\n  \
nodeprep scan -o json | jq '.[] | {address, driver, iommuGroup}'\n  \
nodeprep --host-root /host scan -o yaml")]
    Scan {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Report whether the node is fit for Kata, device passthrough and hugepages, with the facts
    /// behind each verdict.
    #[command(after_help = "Exit status: 0 when the node is fit for everything --require names (always, \
when nothing is required), 1 when it is not, 2 on a usage error or when the host cannot be read.\n\n\
Examples:\n  nodeprep check\n  nodeprep check --require kata,passthrough,hugepages\n  \
nodeprep check -o json | jq .kata")]
    Check {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
        /// What the node must be fit for, comma-separated: kata, passthrough, hugepages, iommu,
        /// kvm, vfio.
        #[arg(long, value_delimiter = ',', value_name = "LIST")]
        require: Vec<Requirement>,
    },
    /// Bind the devices the config selects to vfio-pci, now, without a reboot.
    #[command(after_help = "Whole IOMMU groups are bound (a GPU's audio function goes with it); a group \
with a device the host or a pod uses is refused with the reason. Original drivers are recorded in \
var/lib/nodeprep/bindings.json under the host root before anything is touched, so `nodeprep unbind` \
restores them and a rerun after a crash converges. A device already on vfio-pci causes no write.\n\n\
Exit status: 0 when every selected device is on vfio-pci (or left as configured), 1 when some were \
refused or failed, 2 when the config or the host cannot be read (nothing changed).\n\n\
Examples:\n  nodeprep bind --config /etc/nodeprep/config.yaml --dry-run\n  \
nodeprep --host-root /host bind --config config.yaml -o json")]
    Bind {
        #[command(flatten)]
        args: BindArgs,
    },
    /// Give devices nodeprep bound back their original drivers.
    #[command(after_help = "Without addresses, every device recorded in var/lib/nodeprep/bindings.json is \
restored; a device the kubelet allocated to a pod is refused (it would break a running VM).\n\n\
Examples:\n  nodeprep unbind\n  nodeprep unbind 0000:3b:00.0 0000:3b:00.1\n  nodeprep unbind --dry-run")]
    Unbind {
        /// Only these devices (PCI addresses); default: every recorded device.
        addresses: Vec<PciAddress>,
        /// The kubelet's device-plugin directory, where its checkpoint of what pods hold is
        /// read (default: var/lib/kubelet/device-plugins under the host root).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show what nodeprep manages here: each device's driver now and at rest, the resource or
    /// DRA pool it serves and who holds it, the changes waiting for a holder, the last refusals.
    #[command(after_help = "Reads the report the agent keeps (var/lib/nodeprep/status.json under the host \
root) and refreshes each device's driver and holders from the host; with --config the device table is \
built from that config instead (a node without an agent). Holders come from the kubelet's device-plugin \
checkpoint and nodeprep's DRA claims. STATE is ready, held, pending-release (the config no longer wants \
it on vfio-pci; it goes back once free), rename-pending (a pod holds it under its old resource name), kept (release: manual), refused, not-bound or gone.\n\n\
Exit status: 0, or 2 when there is neither a report nor --config, or the host cannot be read.\n\n\
Examples:\n  oc debug node/worker-0 -- chroot /host nodeprep status\n  \
nodeprep status -o json | jq '.devices[] | {address, driver, heldBy}'")]
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
        /// Build the device table from this config instead of the agent's report.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The kubelet's device-plugin directory (default: var/lib/kubelet/device-plugins under
        /// the host root).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
    },
    /// Work with the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the node agent: bind per config, serve the device plugins, label the node, react to events.
    #[command(after_help = "Reserves the config's huge pages, binds what the config selects, serves one \
kubelet device plugin per resource (sockets in the kubelet's plugin directory, registered with \
kubelet.sock; Kubernetes 1.26 or newer), and keeps them right: kernel uevents and /dev/vfio changes \
are seen in milliseconds, a kubelet restart is answered by registering again, the config file is \
reloaded when it changes (an invalid one is refused and the last good one keeps running), and a \
periodic rescan is the safety net. With a cluster (--kubeconfig, KUBECONFIG, the in-cluster service \
account or ~/.kube/config) it server-side applies the node labels (field manager nodeprep, only \
when they differ) and posts Events on the Node; without one (or with --no-kube) it logs the labels. \
SIGTERM withdraws the devices, removes the sockets and the nodeprep.io/ready label.\n\nExamples:\n  \
nodeprep --host-root /host run --config /etc/nodeprep/config.yaml\n  \
nodeprep run --config config.yaml --no-bind --log-level info")]
    Run {
        /// The config file (YAML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The kubelet's device-plugin directory (default: var/lib/kubelet/device-plugins under
        /// the host root).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
        /// The kubelet's root directory, where the DRA driver's sockets go (plugins_registry/,
        /// plugins/<driver>/), when it is not var/lib/kubelet under the host root; the path
        /// must be the same for the kubelet.
        #[arg(long, value_name = "DIR")]
        kubelet_dir: Option<PathBuf>,
        /// Advertise only: do not bind devices to vfio-pci.
        #[arg(long)]
        no_bind: bool,
        /// Seconds between safety-net rescans.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        resync: u64,
        /// Where to serve /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:9437", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// This node's name in the cluster (the DaemonSet sets NODE_NAME from the downward API;
        /// default: the host name, as the kubelet's).
        #[arg(long, env = "NODE_NAME", value_name = "NAME")]
        node_name: Option<String>,
        /// The kubeconfig to use (default: KUBECONFIG, then the in-cluster service account,
        /// then ~/.kube/config).
        #[arg(long, value_name = "FILE", conflicts_with = "no_kube")]
        kubeconfig: Option<PathBuf>,
        /// Run without the Kubernetes API: labels are logged, not applied, and no Events posted.
        #[arg(long)]
        no_kube: bool,
    },
    /// Device-plugin tools.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// DRA driver tools: the devices offered, and Prepare/Unprepare by hand.
    #[command(subcommand)]
    Dra(DraCommand),
    /// Render OpenShift MachineConfigs for boot-time IOMMU, vfio-pci and hugepage settings.
    #[command(after_help = "Applying these reboots every node of the pool (10-60 minutes a node); \
`nodeprep bind` does the vfio-pci part at run time instead.\n\n\
Examples:\n  nodeprep machineconfig --role worker --iommu intel --hugepages 1Gi:16\n  \
nodeprep machineconfig --iommu amd --vfio-ids 10de:2230,10de:1aef\n  \
nodeprep machineconfig --iommu intel --config config.yaml   # vfio ids from the config's selectors")]
    Machineconfig {
        /// The MachineConfigPool role.
        #[arg(long, default_value = machineconfig::DEFAULT_ROLE)]
        role: String,
        /// IOMMU kernel arguments for this CPU vendor: intel or amd.
        #[arg(long)]
        iommu: Option<IommuVendor>,
        /// vendor:device ids for vfio-pci early binding, comma-separated.
        #[arg(long, value_name = "IDS", value_parser = parse_ids)]
        vfio_ids: Option<std::vec::Vec<(u16, u16)>>,
        /// Also take vfio ids from the config's entries that bind vendor:device selections.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Hugepages reserved at boot: SIZE:COUNT, comma-separated (1Gi:16,2Mi:1024).
        #[arg(long, value_name = "LIST", value_parser = parse_pages)]
        hugepages: Option<std::vec::Vec<HugepageRequest>>,
    },
    /// Set the huge page pools the config's `hugepages:` section names, now, without a reboot.
    #[command(after_help = "Only the config's hugepages section is applied (what `nodeprep run` also does). \
Each pool is set to exactly its count (a smaller count shrinks it; the kernel frees only free pages), \
then read back: `reserved` when the kernel granted it all, `unchanged` when it already was (no write), \
`short` when it granted fewer (memory too fragmented: reserve at boot with `nodeprep machineconfig \
--hugepages`), `refused` for a size or NUMA node the kernel does not have, `failed` when a file could \
not be read or written.\n\n\
Exit status: 0 when every pool is as configured, 1 when any is short, refused or failed, 2 when the \
config or the host cannot be read.\n\n\
Examples:\n  nodeprep hugepages --config /etc/nodeprep/config.yaml\n  \
nodeprep --host-root /host hugepages --config config.yaml -o json")]
    Hugepages {
        /// The config file (YAML) whose `hugepages:` section names the pools.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Run as an OpenShift Virtualization checkup: read the input ConfigMap, judge this node,
    /// write the result into the same ConfigMap.
    #[command(after_help = "Reads spec.timeout (a Go duration: 30s, 5m, 1h30m) and the optional \
spec.param.nodeName (the node this must run on), spec.param.requirements (default kvm,iommu,passthrough) \
and spec.param.resources (extended resources that must be allocatable on the Node; waited for until \
the timeout). Writes status.startTimestamp at once, then status.succeeded, status.failureReason, \
status.completionTimestamp and status.result.* with the facts behind each verdict.\n\n\
Exit status: 0 when the result was written into the ConfigMap, whatever it says; 2 when the \
ConfigMap cannot be read or written (or no API server is found).\n\n\
Examples:\n  CONFIGMAP_NAMESPACE=nodeprep CONFIGMAP_NAME=nodeprep-checkup-config NODE_NAME=worker-0 \
nodeprep --host-root /host checkup\n  \
nodeprep checkup --namespace nodeprep --name nodeprep-checkup-config --node-name worker-0 --kubeconfig ~/.kube/config")]
    Checkup {
        /// The namespace of the checkup's ConfigMap.
        #[arg(long, env = "CONFIGMAP_NAMESPACE", value_name = "NAMESPACE")]
        namespace: String,
        /// The name of the checkup's ConfigMap.
        #[arg(long, env = "CONFIGMAP_NAME", value_name = "NAME")]
        name: String,
        /// The node this runs on (the Job sets NODE_NAME from the downward API's spec.nodeName).
        #[arg(long, env = "NODE_NAME", value_name = "NAME")]
        node_name: Option<String>,
        /// The kubeconfig to use (default: KUBECONFIG, then the in-cluster service account,
        /// then ~/.kube/config).
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Talk to a device-plugin socket like the kubelet does and print what it advertises.
    #[command(after_help = "Dials with :authority localhost (as kubelets since 1.26 do), calls \
GetDevicePluginOptions and ListAndWatch, and with --allocate asks what a container given those \
devices would get (DeviceSpecs and environment). Prints JSON.\n\nExamples:\n  \
nodeprep plugins probe /var/lib/kubelet/device-plugins/nvidia.com-TU104GL_TESLA_T4.sock\n  \
nodeprep plugins probe --allocate 0000:3b:00.0 SOCKET\n  \
nodeprep plugins probe --updates 2 --timeout 30 SOCKET   # wait for the next change")]
    Probe {
        /// The plugin's socket.
        socket: PathBuf,
        /// How many ListAndWatch messages to wait for (the first is the full list).
        #[arg(long, default_value_t = 1)]
        updates: usize,
        /// Seconds to wait for them.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Device ids (PCI addresses) to Allocate for one container, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "IDS")]
        allocate: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DraCommand {
    /// The devices the config offers through DRA on this host, one per IOMMU group, with their
    /// attributes and health (JSON).
    #[command(after_help = "Examples:\n  nodeprep dra devices --config config.yaml\n  \
nodeprep --host-root /host dra devices --config /etc/nodeprep/config.yaml | jq '.[].name'")]
    Devices {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The pool (node) name shown.
        #[arg(long, env = "NODE_NAME", default_value = "localhost")]
        node_name: String,
    },
    /// Prepare a claim as the kubelet's NodePrepareResources would, from the ResourceClaim's
    /// JSON (`kubectl get resourceclaim NAME -o json`): binds its devices' IOMMU groups to
    /// vfio-pci and writes the CDI spec, the device metadata and the checkpoint. Prints the
    /// prepared devices (JSON); a refusal exits 1 with the reason, as a refused bind does.
    Prepare {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The ResourceClaim, as JSON.
        #[arg(long, value_name = "FILE")]
        claim: PathBuf,
        #[command(flatten)]
        at: DraPaths,
    },
    /// Unprepare a claim by UID: its `atRest: host` devices go back to their drivers.
    Unprepare {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        uid: String,
        #[command(flatten)]
        at: DraPaths,
    },
}

/// Where the DRA driver writes, as the host names it.
#[derive(Args)]
struct DraPaths {
    /// The pool (node) name.
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    node_name: String,
    /// The CDI spec directory.
    #[arg(long, default_value = "/var/run/cdi", value_name = "DIR")]
    cdi_dir: String,
    /// The kubelet's root directory (plugins/<driver> holds the device metadata).
    #[arg(long, default_value = "/var/lib/kubelet", value_name = "DIR")]
    kubelet_dir: String,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; with a readable host, also show what each entry selects.
    #[command(after_help = "A config with any problem is refused as a whole and every problem is listed. \
Exit status: 0 valid, 1 invalid, 2 unreadable.\n\nExamples:\n  nodeprep config check config.yaml\n  \
nodeprep --host-root /host config check /etc/nodeprep/config.yaml")]
    Check {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct BindArgs {
    /// The config file (YAML) that selects the devices.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The kubelet's device-plugin directory, where its checkpoint of what pods hold is read
    /// (default: var/lib/kubelet/device-plugins under the host root).
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

fn parse_ids(s: &str) -> Result<Vec<(u16, u16)>, String> {
    machineconfig::parse_pci_ids(s).map_err(|e| e.to_string())
}

fn parse_pages(s: &str) -> Result<Vec<HugepageRequest>, String> {
    machineconfig::parse_hugepages(s).map_err(|e| e.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(cli.log_level).with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodeprep: {}", error_text(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = HostRoot::new(&cli.host_root);
    match cli.command {
        Command::Scan { output } => {
            let inv = discover(&root)?;
            let text = match output {
                Format::Text => nodeprep::render::scan::render(&inv),
                Format::Json => serde_json::to_string_pretty(&inv.devices)? + "\n",
                Format::Yaml => serde_yaml::to_string(&inv.devices)?,
            };
            emit(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { output, require } => {
            let inv = discover(&root)?;
            let facts = host::system::read_system(&root).with_context(|| {
                format!(
                    "cannot read host facts under host root {} (is --host-root the host's /?)",
                    root.path().display()
                )
            })?;
            let report = eligibility::evaluate(&facts, &inv);
            let text = match output {
                Format::Text => nodeprep::render::check::render(&report),
                Format::Json => serde_json::to_string_pretty(&report)? + "\n",
                Format::Yaml => serde_yaml::to_string(&report)?,
            };
            emit(&text)?;
            let unmet = report.unmet(&require);
            if unmet.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                let names: Vec<String> = unmet.iter().map(ToString::to_string).collect();
                eprintln!("nodeprep: node is not fit for: {}", names.join(", "));
                Ok(ExitCode::from(EXIT_UNFIT))
            }
        }
        Command::Bind { args } => run_bind(&root, args),
        Command::Unbind { addresses, plugin_dir, dry_run, output } => {
            let plugin_dir = host::kubelet::plugin_dir(&root, plugin_dir.as_deref());
            run_unbind(&root, &addresses, &plugin_dir, dry_run, output)
        }
        Command::Config(ConfigCommand::Check { file }) => run_config_check(&root, &file),
        Command::Status { output, config, plugin_dir } => {
            let plugin_dir = host::kubelet::plugin_dir(&root, plugin_dir.as_deref());
            run_status(&root, config.as_deref(), &plugin_dir, output)
        }
        Command::Run { config, plugin_dir, kubelet_dir, no_bind, resync, listen, node_name, kubeconfig, no_kube } => {
            runtime()?.block_on(async {
                let cluster =
                    if no_kube { None } else { cluster_options(&root, kubeconfig.as_deref(), node_name).await? };
                let opts = nodeprep::agent::AgentOptions {
                    root: root.clone(),
                    config_path: config,
                    plugin_dir,
                    bind: !no_bind,
                    rescan_interval: std::time::Duration::from_secs(resync.max(1)),
                    listen,
                    cluster,
                    kubelet_dir,
                    kernel: bind::host_kernels(),
                };
                nodeprep::agent::run(opts, terminated()).await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dra(cmd) => run_dra(&root, cmd),
        Command::Plugins(PluginsCommand::Probe { socket, updates, timeout, allocate }) => {
            let report = runtime()?.block_on(nodeprep::deviceplugin::probe::probe(
                &socket,
                updates,
                std::time::Duration::from_secs_f64(timeout.max(0.0)),
                &allocate,
            ))?;
            emit(&(serde_json::to_string_pretty(&report)? + "\n"))?;
            Ok(if report.allocate_error.is_some() { ExitCode::from(EXIT_UNFIT) } else { ExitCode::SUCCESS })
        }
        Command::Machineconfig { role, iommu, vfio_ids, config, hugepages } => {
            let mut ids = vfio_ids.unwrap_or_default();
            if let Some(path) = config {
                let config = Config::load(&path)?;
                for e in config.entries.iter().filter(|e| e.bind == nodeprep::config::BindPolicy::VfioPci) {
                    if let ([v], [d]) = (e.selector.vendors.as_slice(), e.selector.devices.as_slice()) {
                        ids.push((*v, *d));
                    }
                }
            }
            let req = MachineConfigRequest { role, iommu, vfio_ids: ids, hugepages: hugepages.unwrap_or_default() };
            emit(&machineconfig::render(&req)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hugepages { config, output } => run_hugepages(&root, &config, output),
        Command::Checkup { namespace, name, node_name, kubeconfig } => {
            run_checkup(&root, &namespace, &name, node_name.as_deref(), kubeconfig.as_deref())
        }
    }
}

/// The error and its causes, each once: the library's errors already include their source in
/// their own message, so a cause already shown is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

/// The cluster the agent talks to, if any (see `cluster::pick_source`), and its node name.
async fn cluster_options(
    root: &HostRoot,
    kubeconfig: Option<&std::path::Path>,
    node_name: Option<String>,
) -> anyhow::Result<Option<nodeprep::agent::ClusterOptions>> {
    use nodeprep::cluster;
    let Some(source) = cluster::source_from_env(kubeconfig) else {
        tracing::info!("no Kubernetes API found (no kubeconfig, not in a pod): labels are logged, not applied");
        return Ok(None);
    };
    let client = cluster::connect(&source).await?;
    let node_name = match node_name.filter(|n| !n.is_empty()) {
        Some(n) => n,
        None => {
            let path = root.join("proc/sys/kernel/hostname");
            let name = std::fs::read_to_string(&path).with_context(|| {
                format!("no --node-name or NODE_NAME, and cannot read the host name from {}", path.display())
            })?;
            let name = name.trim().to_lowercase();
            tracing::warn!(node = %name, "no --node-name or NODE_NAME: using the host name, as the kubelet does");
            name
        }
    };
    tracing::info!(%source, node = %node_name, "Kubernetes API connection");
    Ok(Some(nodeprep::agent::ClusterOptions { client, labeler: cluster::node::LabelerOptions::new(node_name) }))
}

/// Discovers the host's PCI devices; a failure names the host root, the likeliest mistake.
fn discover(root: &HostRoot) -> anyhow::Result<nodeprep::model::PciInventory> {
    host::pci::discover(root).with_context(|| {
        format!("cannot discover PCI devices under host root {} (is --host-root the host's /?)", root.path().display())
    })
}

fn run_config_check(root: &HostRoot, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(file) {
        Ok(c) => c,
        Err(nodeprep::config::ConfigError::Read { path, source }) => {
            anyhow::bail!("read config {}: {source}", path.display())
        }
        Err(e) => {
            eprintln!("nodeprep: {e}");
            return Ok(ExitCode::from(EXIT_UNFIT));
        }
    };
    let mut out = format!("{}: valid, {} entries\n", file.display(), config.entries.len());
    match host::pci::discover(root) {
        Ok(inv) => match config.claims(&inv) {
            Ok(claims) => {
                for (i, e) in config.entries.iter().enumerate() {
                    let mine: Vec<String> = claims
                        .iter()
                        .filter(|c| c.entry == i)
                        .map(|c| format!("{} as {}", c.address, c.resource_name))
                        .collect();
                    let what =
                        if mine.is_empty() { "selects nothing on this host".to_owned() } else { mine.join(", ") };
                    out.push_str(&format!("  {}: {what}\n", e.name));
                }
            }
            Err(problems) => {
                eprintln!("nodeprep: config {} refused on this host, nothing changed:", file.display());
                for p in problems {
                    eprintln!("  - {p}");
                }
                return Ok(ExitCode::from(EXIT_UNFIT));
            }
        },
        Err(e) => out.push_str(&format!("  (host not read, selections not shown: {e})\n")),
    }
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn outcome_text(outcomes: &[DeviceOutcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let node = o.vfio_device.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
        let detail = o.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        let writes = if o.writes > 0 { format!(" ({} writes)", o.writes) } else { String::new() };
        out.push_str(&format!("{:<14}{}{node}{writes}{detail}\n", o.outcome, o.address));
    }
    out
}

fn run_bind(root: &HostRoot, args: BindArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let config = Config::load(&args.config)?;
    let plugin_dir = host::kubelet::plugin_dir(root, args.plugin_dir.as_deref());
    if args.dry_run {
        let plan = bind::plan_for(root, &config, &plugin_dir)?;
        match args.output {
            Format::Text => emit(&plan.to_string())?,
            Format::Json => emit(&(serde_json::to_string_pretty(&plan)? + "\n"))?,
            Format::Yaml => emit(&serde_yaml::to_string(&plan)?)?,
        }
        return Ok(if plan.refused().next().is_some() { ExitCode::from(EXIT_UNFIT) } else { ExitCode::SUCCESS });
    }
    let (_, outcomes) = bind::bind_per_config(root, &config, &plugin_dir, &mut HostKernel::new(root))?;
    let writes: usize = outcomes.iter().map(|o| o.writes).sum();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    match args.output {
        Format::Text => {
            let mut text = outcome_text(&outcomes);
            let count = |k: &str| outcomes.iter().filter(|o| o.outcome == k).count();
            text.push_str(&format!(
                "{} bound, {} already bound, {} refused, {} failed; {writes} sysfs writes in {elapsed_ms:.1} ms\n",
                count("bound"),
                count("already-bound"),
                count("refused"),
                count("failed") + count("rolled-back"),
            ));
            emit(&text)?;
        }
        Format::Json | Format::Yaml => {
            let v = serde_json::json!({ "outcomes": outcomes, "writes": writes, "elapsedMs": elapsed_ms });
            let text = if matches!(args.output, Format::Json) {
                serde_json::to_string_pretty(&v)? + "\n"
            } else {
                serde_yaml::to_string(&v)?
            };
            emit(&text)?;
        }
    }
    Ok(if outcomes.iter().any(DeviceOutcome::is_failure) { ExitCode::from(EXIT_UNFIT) } else { ExitCode::SUCCESS })
}

fn run_dra(root: &HostRoot, cmd: DraCommand) -> anyhow::Result<ExitCode> {
    use nodeprep::dra::prepare;
    let settings = |config: &Config, at: &DraPaths| {
        let driver = &config.dra.driver_name;
        let data_dir = format!("{}/plugins/{driver}", at.kubelet_dir.trim_end_matches('/'));
        let dp_dir = host::kubelet::plugin_dir(root, None);
        prepare::settings_for(driver, &at.node_name, &at.cdi_dir, &data_dir, &dp_dir)
    };
    match cmd {
        DraCommand::Devices { config, node_name } => {
            let config = Config::load(&config)?;
            let devices = prepare::offered_report(root, &config, &node_name).map_err(anyhow::Error::msg)?;
            emit(&(serde_json::to_string_pretty(&devices)? + "\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        DraCommand::Prepare { config, claim, at } => {
            let config = Config::load(&config)?;
            let text = std::fs::read_to_string(&claim).with_context(|| format!("read {}", claim.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", claim.display()))?;
            let alloc = prepare::claim_allocation(&value, &config.dra.driver_name).map_err(anyhow::Error::msg)?;
            let s = settings(&config, &at);
            match prepare::prepare(root, &s, &config, &alloc, &mut bind::HostKernel::new(root)) {
                Ok(devices) => {
                    emit(&(serde_json::to_string_pretty(&devices)? + "\n"))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(reason) => {
                    eprintln!("nodeprep: claim {} refused: {reason}", alloc.claim);
                    Ok(ExitCode::from(EXIT_UNFIT))
                }
            }
        }
        DraCommand::Unprepare { config, uid, at } => {
            let config = Config::load(&config)?;
            let s = settings(&config, &at);
            prepare::unprepare(root, &s, &uid, &mut bind::HostKernel::new(root)).map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_status(
    root: &HostRoot,
    config: Option<&std::path::Path>,
    plugin_dir: &std::path::Path,
    output: Format,
) -> anyhow::Result<ExitCode> {
    use nodeprep::status::StatusReport;
    let claims = nodeprep::giveback::dra_holders(root).map_err(|e| anyhow::anyhow!(e))?;
    let report = match config {
        Some(path) => {
            let config = Config::load(path)?;
            let g = nodeprep::status::gather(root, None, &config, plugin_dir, &Default::default(), claims)?;
            StatusReport::build(&config, &g, Vec::new(), Default::default())
        }
        None => {
            let Some(mut r) = StatusReport::load(root)? else {
                anyhow::bail!(
                    "no agent report at {} (is the agent running on this node?); give --config to build one",
                    root.join(nodeprep::status::REPORT_FILE).display()
                );
            };
            let inv = discover(root)?;
            let allocations =
                host::kubelet::read_allocations(plugin_dir).context("cannot tell which devices pods hold")?;
            // The agent's view of which pods are gone is not known here: every allocation counts.
            let holders = nodeprep::bind::release::holders(&allocations, &Default::default(), claims);
            r.refresh(&inv, &holders);
            r
        }
    };
    match output {
        Format::Text => emit(&nodeprep::render::status::render(&report))?,
        Format::Json => emit(&(serde_json::to_string_pretty(&report)? + "\n"))?,
        Format::Yaml => emit(&serde_yaml::to_string(&report)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn run_unbind(
    root: &HostRoot,
    only: &[PciAddress],
    plugin_dir: &std::path::Path,
    dry_run: bool,
    output: Format,
) -> anyhow::Result<ExitCode> {
    let inv = discover(root)?;
    let allocations =
        host::kubelet::read_allocations(plugin_dir).context("cannot tell which devices pods hold; nothing changed")?;
    let mut state = State::lock(root)?;
    for a in only {
        if !state.devices.contains_key(a) {
            anyhow::bail!("{a} was not bound by nodeprep (not in {}); nothing changed", State::path(root).display());
        }
    }
    let plan = bind::plan_unbind(&inv, &state, &allocations, only);
    let outcomes = if dry_run {
        if matches!(output, Format::Text) {
            let mut text = String::new();
            for p in &plan {
                text.push_str(&format!("{} {}\n", p.address, serde_json::to_string(&p.action)?));
            }
            if plan.is_empty() {
                text.push_str("nothing to restore\n");
            }
            emit(&text)?;
        } else {
            emit(&(serde_json::to_string_pretty(&plan)? + "\n"))?;
        }
        let refused = plan.iter().any(|p| matches!(p.action, bind::plan::RestoreAction::Refused { .. }));
        return Ok(if refused { ExitCode::from(EXIT_UNFIT) } else { ExitCode::SUCCESS });
    } else {
        let mut kernel = HostKernel::new(root);
        Applier::new(root, &mut kernel).apply_unbind(&plan, &mut state)?
    };
    match output {
        Format::Text => {
            let mut text = outcome_text(&outcomes);
            if outcomes.is_empty() {
                text.push_str("nothing to restore\n");
            }
            emit(&text)?;
        }
        Format::Json => emit(&(serde_json::to_string_pretty(&serde_json::json!({ "outcomes": outcomes }))? + "\n"))?,
        Format::Yaml => emit(&serde_yaml::to_string(&serde_json::json!({ "outcomes": outcomes }))?)?,
    }
    Ok(if outcomes.iter().any(DeviceOutcome::is_failure) { ExitCode::from(EXIT_UNFIT) } else { ExitCode::SUCCESS })
}

/// `nodeprep hugepages`: the config's pools, set and read back, as a table or JSON/YAML.
fn run_hugepages(root: &HostRoot, config: &std::path::Path, output: Format) -> anyhow::Result<ExitCode> {
    use nodeprep::hugepages::{self, HugepageOutcome};
    let config = Config::load(config)?;
    let outcomes = hugepages::reserve(root, &config.hugepages)?;
    let writes: usize = outcomes.iter().map(|o| o.writes).sum();
    match output {
        Format::Text if outcomes.is_empty() => emit("the config reserves no huge pages (no hugepages: section)\n")?,
        Format::Text => {
            let count = |o: Option<u64>| o.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let mut text = format!(
                "{:<10} {:<5} {:<7} {:>9} {:>9} {:>9}\n",
                "OUTCOME", "SIZE", "POOL", "REQUESTED", "BEFORE", "GRANTED"
            );
            for o in &outcomes {
                text.push_str(&format!(
                    "{:<10} {:<5} {:<7} {:>9} {:>9} {:>9}\n",
                    o.outcome.as_str(),
                    o.size(),
                    o.pool(),
                    o.requested,
                    count(o.before),
                    count(o.granted)
                ));
                if let Some(d) = &o.detail {
                    text.push_str(&format!("  {d}\n"));
                }
            }
            text.push_str(&format!("{writes} sysfs writes\n"));
            emit(&text)?;
        }
        Format::Json => emit(
            &(serde_json::to_string_pretty(&serde_json::json!({ "outcomes": outcomes, "writes": writes }))? + "\n"),
        )?,
        Format::Yaml => emit(&serde_yaml::to_string(&serde_json::json!({ "outcomes": outcomes, "writes": writes }))?)?,
    }
    Ok(if outcomes.iter().any(HugepageOutcome::is_failure) { ExitCode::from(EXIT_UNFIT) } else { ExitCode::SUCCESS })
}

/// `nodeprep checkup`: 0 once the result is in the ConfigMap (whatever it says), an error (2)
/// when the ConfigMap cannot be read or written.
fn run_checkup(
    root: &HostRoot,
    namespace: &str,
    name: &str,
    node_name: Option<&str>,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use nodeprep::cluster;
    if namespace.is_empty() || name.is_empty() {
        anyhow::bail!(
            "the checkup's ConfigMap needs a namespace and a name (--namespace/CONFIGMAP_NAMESPACE, --name/CONFIGMAP_NAME)"
        );
    }
    let Some(source) = cluster::source_from_env(kubeconfig) else {
        anyhow::bail!("no Kubernetes API found (no --kubeconfig, KUBECONFIG, service account or ~/.kube/config)");
    };
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let client = cluster::connect(&source).await?;
        anyhow::Ok(nodeprep::checkup::run_checkup(client, namespace, name, root, node_name).await?)
    });
    // A host read stuck past the timeout must not hold the exit (the result is already written).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let outcome = outcome?;
    let verdict =
        if outcome.succeeded { "succeeded".to_owned() } else { format!("failed: {}", outcome.failure_reason) };
    emit(&format!("checkup {namespace}/{name} on {}: {verdict}\n", node_name.unwrap_or("?")))?;
    Ok(ExitCode::SUCCESS)
}

/// The agent's runtime: one thread is plenty for a node agent and keeps its memory small.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM; stopping only on ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to standard output"),
    }
}
