//! The record of what nodeprep changed: for every device it moved to vfio-pci, the driver and
//! `driver_override` it had before. Kept at `var/lib/nodeprep/bindings.json` under the host
//! root and written atomically (temporary file, fsync, rename, fsync of the directory) *before*
//! any device is touched, so after a crash at any point the next run knows what to restore.
//!
//! The first record of a device wins: a device found half-bound after a crash (no driver, or
//! already on vfio-pci) keeps the original driver recorded before the crash.
//!
//! Writers (the agent, a `nodeprep bind` or `unbind` run beside it) take [`State::lock`]: an
//! exclusive `flock` on `var/lib/nodeprep/bindings.lock` held from load to the last save, so
//! no writer saves over records another one made in between. Readers need no lock: the file is
//! only ever replaced by rename.

use std::collections::BTreeMap;
use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use serde::{Deserialize, Serialize};

use crate::host::HostRoot;
use crate::model::PciAddress;

/// Where the record lives, relative to the host root.
pub const STATE_FILE: &str = "var/lib/nodeprep/bindings.json";

/// The writers' lock file, next to [`STATE_FILE`]. Never removed: unlinking a lock file
/// others may be waiting on would let two writers hold "the" lock at once.
pub const LOCK_FILE: &str = "var/lib/nodeprep/bindings.lock";

/// Makes temporary file names unique within the process (the pid makes them unique across).

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a nodeprep state file ({problem}); move it aside to start afresh (devices it recorded will not be restored)"
    )]
    Corrupt { path: PathBuf, problem: String },
}

/// What a device had before nodeprep bound it to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The driver to give back on unbind (`None`: it had none).
    pub original_driver: Option<String>,
    /// The `driver_override` it had (normally none).
    pub original_override: Option<String>,
    /// The resource it was bound for, or `None` for a companion bound with its IOMMU group.
    pub resource_name: Option<String>,
}

/// All records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub devices: BTreeMap<PciAddress, Record>,
}

impl State {
    pub fn path(root: &HostRoot) -> PathBuf {
        root.join(STATE_FILE)
    }

    /// Reads the state; an absent file is an empty state.
    pub fn load(root: &HostRoot) -> Result<State, StateError> {
        let path = State::path(root);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State { version: 1, ..Default::default() });
            }
            Err(source) => return Err(StateError::Io { op: "read", path, source }),
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt { path, problem: e.to_string() })
    }

    /// Takes the writers' lock (waiting for another writer to finish), then loads the state.
    /// The lock is held until the guard is dropped; save through [`StateGuard::save`].
    ///
    /// On a host where nodeprep never saved anything (no `var/lib/nodeprep`) the lock is taken
    /// at the first save instead, so a run that changes nothing leaves nothing behind; that
    /// first save merges what another writer saved meanwhile (see [`StateGuard::save`]).
    pub fn lock(root: &HostRoot) -> Result<StateGuard, StateError> {
        let dir = State::path(root).parent().map(Path::to_path_buf).unwrap_or_default();
        if !dir.exists() {
            return Ok(StateGuard {
                state: State { version: 1, ..Default::default() },
                root: root.clone(),
                lock: None,
            });
        }
        let lock = Some(lock_file(root)?);
        let state = State::load(root)?;
        Ok(StateGuard { state, root: root.clone(), lock })
    }

    /// Writes the state atomically: a reader (or the next run after a crash) sees either the old
    /// file or the new one, never a torn one. Only through a [`StateGuard`], under the lock.
    fn save(&self, root: &HostRoot) -> Result<(), StateError> {
        let path = State::path(root);
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Corrupt { path: path.clone(), problem: e.to_string() })?;
        crate::host::root::write_atomic(&path, &body).map_err(|(op, source)| StateError::Io { op, path, source })
    }

    /// The driver each recorded device had before nodeprep bound it.
    pub fn original_drivers(&self) -> crate::config::OriginalDrivers {
        self.devices.iter().map(|(a, r)| (*a, r.original_driver.clone())).collect()
    }

    /// Records a device unless it is already recorded (the first record wins).
    pub fn record(&mut self, address: PciAddress, record: Record) -> bool {
        if self.devices.contains_key(&address) {
            return false;
        }
        self.devices.insert(address, record);
        true
    }
}

/// Creates the lock file when needed and takes an exclusive `flock` on it, waiting for it.
fn lock_file(root: &HostRoot) -> Result<Flock<fs::File>, StateError> {
    let path = root.join(LOCK_FILE);
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io { op, path: p, source }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("open lock file", &path))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(StateError::Io { op: "lock (flock)", path, source: errno.into() }),
        }
    }
}

/// The state, loaded under the writers' lock, which it holds until dropped.
#[derive(Debug)]
pub struct StateGuard {
    state: State,
    root: HostRoot,
    /// `None` until the first save when nothing was saved on this host before.
    lock: Option<Flock<fs::File>>,
}

impl StateGuard {
    /// Writes the state atomically (see [`State::lock`]); the lock stays held.
    pub fn save(&mut self) -> Result<(), StateError> {
        if self.lock.is_none() {
            let lock = lock_file(&self.root)?;
            // This guard started from "nothing saved yet" and has only added records since;
            // what another writer saved in between came first, so its records win.
            let saved = State::load(&self.root)?;
            self.state.devices.extend(saved.devices);
            self.lock = Some(lock);
        }
        self.state.save(&self.root)
    }
}

impl Deref for StateGuard {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for StateGuard {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_first_record_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        let mut s = State::lock(&root).expect("absent is empty");
        assert!(s.devices.is_empty());
        let a: PciAddress = "0000:3b:00.0".parse().expect("addr");
        let first = Record {
            original_driver: Some("nouveau".into()),
            original_override: None,
            resource_name: Some("nvidia.com/T4".into()),
        };
        assert!(s.record(a, first.clone()));
        assert!(!s.record(a, Record { original_driver: None, original_override: None, resource_name: None }));
        s.save().expect("save");
        let back = State::load(&root).expect("load");
        assert_eq!(back.devices.get(&a), Some(&first));
        let names: Vec<String> = fs::read_dir(dir.path().join("var/lib/nodeprep"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "temporary file renamed away: {names:?}");
    }

    #[test]
    fn corrupt_state_is_an_error_saying_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        fs::create_dir_all(dir.path().join("var/lib/nodeprep")).expect("mkdir");
        fs::write(dir.path().join(STATE_FILE), "{half").expect("write");
        let e = State::load(&root).expect_err("corrupt");
        assert!(e.to_string().contains("bindings.json") && e.to_string().contains("move it aside"), "{e}");
        let e = State::lock(&root).expect_err("corrupt under the lock too");
        assert!(e.to_string().contains("bindings.json"), "{e}");
    }

    /// The agent and `nodeprep bind` runs: each takes the lock, records one device and saves,
    /// many times over; every record must survive.
    fn writers_race(prepare: impl FnOnce(&Path)) {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let root = HostRoot::new(dir.path());
        const PER_WRITER: u32 = 40;
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let root = root.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_WRITER {
                        let mut s = State::lock(&root).expect("lock");
                        let a: PciAddress = format!("0000:{w:02x}:{:02x}.{}", i / 8, i % 8).parse().expect("addr");
                        let rec = Record {
                            original_driver: Some(format!("w{w}")),
                            original_override: None,
                            resource_name: None,
                        };
                        assert!(s.record(a, rec), "{a} recorded twice");
                        std::thread::yield_now();
                        s.save().expect("save");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let s = State::load(&root).expect("load");
        assert_eq!(s.devices.len(), 4 * PER_WRITER as usize, "records lost: {:?}", s.devices.keys());
        assert!(dir.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn concurrent_writers_lose_no_record() {
        writers_race(|root| fs::create_dir_all(root.join("var/lib/nodeprep")).expect("mkdir"));
    }

    #[test]
    fn concurrent_first_writers_on_a_fresh_host_lose_no_record() {
        writers_race(|_| {});
    }

    #[test]
    fn a_guard_that_never_saves_leaves_nothing_on_a_fresh_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        drop(State::lock(&root).expect("lock"));
        assert!(!dir.path().join("var").exists());
    }
}
