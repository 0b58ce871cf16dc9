//! The one configurable host root every host path goes through.
//!
//! nodeprep never opens `/sys/...` or `/proc/...` directly: it asks a [`HostRoot`] for the
//! kernel's relative path (`sys/bus/pci/devices`, `proc/cpuinfo`, `dev/kvm`, ...). On a node the
//! root is `/`; in the DaemonSet it is `/host`; in tests it is a fixture tree laid out like the
//! kernel's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What went wrong reading a host file, with the path and the operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

impl HostError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        HostError::Io { op, path: path.into(), source }
    }

    pub fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        HostError::Invalid { path: path.into(), problem: problem.into() }
    }

    /// True when the file simply does not exist (as opposed to being unreadable or garbage).
    pub fn is_not_found(&self) -> bool {
        matches!(self, HostError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The root of the host's file system as nodeprep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot::new("/")
    }
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A host path given as the kernel's path relative to `/` (`"sys/bus/pci/devices"`).
    /// A leading `/` is tolerated so callers can pass absolute kernel paths too.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.root.join(rel)
    }

    /// Reads a whole text file.
    pub fn read_string(&self, rel: impl AsRef<Path>) -> Result<String, HostError> {
        read_string(&self.join(rel))
    }

    /// Reads a sysfs attribute: the whole file with trailing white space removed.
    pub fn read_attr(&self, rel: impl AsRef<Path>) -> Result<String, HostError> {
        read_attr(&self.join(rel))
    }

    /// Reads a text file, `None` when it does not exist.
    pub fn read_optional(&self, rel: impl AsRef<Path>) -> Result<Option<String>, HostError> {
        match self.read_string(rel) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// True when the path exists (following symlinks).
    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.join(rel).exists()
    }

    /// The names in a directory, sorted; an empty list when the directory does not exist.
    pub fn list_dir(&self, rel: impl AsRef<Path>) -> Result<Vec<String>, HostError> {
        list_dir(&self.join(rel))
    }

    /// A host path to write to, with the symlinks on the way taken as the host takes them: an
    /// absolute target (`/var/run -> /run` on Debian) is followed under the root, not in
    /// nodeprep's own file system. Components that do not exist yet are kept as they are.
    pub fn resolve(&self, rel: impl AsRef<Path>) -> PathBuf {
        let mut todo: Vec<std::ffi::OsString> =
            self.join(rel).strip_prefix(&self.root).map_or_else(|_| Vec::new(), |r| r.iter().map(Into::into).collect());
        todo.reverse();
        let mut at = self.root.clone();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            let next = at.join(&c);
            match std::fs::read_link(&next) {
                Ok(target) if hops < 16 => {
                    hops += 1;
                    if target.is_absolute() {
                        at = self.root.clone();
                    }
                    todo.extend(
                        target.iter().filter(|t| *t != "/").map(Into::into).collect::<Vec<_>>().into_iter().rev(),
                    );
                }
                _ if c == ".." => {
                    if at != self.root {
                        at.pop();
                    }
                }
                _ => at = next,
            }
        }
        at
    }
}

/// Reads a whole text file at an absolute path.
pub fn read_string(path: &Path) -> Result<String, HostError> {
    let bytes = fs::read(path).map_err(|e| HostError::io("read", path, e))?;
    String::from_utf8(bytes).map_err(|_| HostError::invalid(path, "not UTF-8 text"))
}

/// Reads a sysfs attribute at an absolute path, trailing white space removed.
pub fn read_attr(path: &Path) -> Result<String, HostError> {
    let mut s = read_string(path)?;
    let keep = s.trim_end().len();
    s.truncate(keep);
    Ok(s)
}

/// The last component of a symlink's target (`driver -> ../../../bus/pci/drivers/e1000e` gives
/// `e1000e`).
pub fn link_name(path: &Path) -> Result<String, HostError> {
    let target = fs::read_link(path).map_err(|e| HostError::io("readlink", path, e))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| HostError::invalid(path, format!("link target {} has no name", target.display())))
}

/// Sorted names in a directory; empty when it does not exist.
pub fn list_dir(path: &Path) -> Result<Vec<String>, HostError> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io("read directory", path, e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| HostError::io("read directory", path, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Distinguishes the temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that readers, and the file after a crash, hold the old contents
/// or the new ones, never a part: the directory is created if needed, a temporary file next to
/// `path` (named after this process) is written and fsynced, renamed into place, and the
/// directory fsynced. On error no temporary file is left behind. The error names the step.
/// nodeprep's records (bindings, prepared claims) and the CDI specs it owns are written so.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| ("create its directory", e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| ("create a temporary file", e))?;
        f.write_all(bytes).map_err(|e| ("write", e))?;
        f.sync_all().map_err(|e| ("fsync", e))?;
        fs::rename(&tmp, path).map_err(|e| ("rename into place", e))
    })();
    if written.is_err() {
        // Best effort: do not leave a temporary file behind for every failed write.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = fs::File::open(dir) {
        // Persist the rename itself; a failure here only weakens durability, not atomicity.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_symlinks_under_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("var")).expect("mkdir");
        // Debian: absolute; Fedora/RHCOS: relative. Both land in the root's run/.
        std::os::unix::fs::symlink("/run", dir.path().join("var/run")).expect("symlink");
        assert_eq!(root.resolve("/var/run/cdi"), dir.path().join("run/cdi"));
        std::fs::remove_file(dir.path().join("var/run")).expect("rm");
        std::os::unix::fs::symlink("../run", dir.path().join("var/run")).expect("symlink");
        assert_eq!(root.resolve("/var/run/cdi/x.json"), dir.path().join("run/cdi/x.json"));
        // `..` never leaves the root; paths without symlinks are joined as they are.
        assert_eq!(root.resolve("/../../etc/cdi"), dir.path().join("etc/cdi"));
        assert_eq!(root.resolve("etc/cdi"), dir.path().join("etc/cdi"));
    }

    #[test]
    fn join_strips_leading_slash() {
        let r = HostRoot::new("/host");
        assert_eq!(r.join("/sys/bus/pci"), PathBuf::from("/host/sys/bus/pci"));
        assert_eq!(r.join("proc/cpuinfo"), PathBuf::from("/host/proc/cpuinfo"));
    }

    #[test]
    fn missing_files_are_not_found_and_attrs_are_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = HostRoot::new(dir.path());
        let err = r.read_attr("nope").expect_err("missing file must fail");
        assert!(err.is_not_found());
        assert!(err.to_string().contains("read "), "{err}");
        assert_eq!(r.read_optional("nope").expect("optional"), None);
        fs::write(dir.path().join("a"), "0x8086\n").expect("write");
        assert_eq!(r.read_attr("a").expect("attr"), "0x8086");
        assert!(r.list_dir("absent").expect("list").is_empty());
    }
}
