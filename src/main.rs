//! The `nodeprep` command line: parses arguments, calls the library, prints, sets the exit
//! status. `anyhow` lives here only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use nodeprep::eligibility::{self, Requirement};
use nodeprep::host::{self, HostRoot};

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

    #[command(subcommand)]
    command: Command,
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
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(cli.log_level).with_target(false).init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodeprep: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = HostRoot::new(&cli.host_root);
    match cli.command {
        Command::Scan { output } => {
            let inv = host::pci::discover(&root)
                .with_context(|| format!("cannot discover PCI devices under host root {}", root.path().display()))?;
            let text = match output {
                Format::Text => nodeprep::render::scan::render(&inv),
                Format::Json => serde_json::to_string_pretty(&inv.devices)? + "\n",
                Format::Yaml => serde_yaml::to_string(&inv.devices)?,
            };
            emit(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { output, require } => {
            let inv = host::pci::discover(&root)
                .with_context(|| format!("cannot discover PCI devices under host root {}", root.path().display()))?;
            let facts = host::system::read_system(&root)
                .with_context(|| format!("cannot read host facts under host root {}", root.path().display()))?;
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
