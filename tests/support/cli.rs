//! Running the `nodeprep` binary under test against a host tree.

use std::path::Path;
use std::process::{Command, Output};

/// `nodeprep --host-root ROOT ARGS...`, run to completion.
pub fn nodeprep(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodeprep")).arg("--host-root").arg(root).args(args).output().expect("run nodeprep")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
