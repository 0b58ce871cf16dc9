//! A small async inotify watcher for one directory, on the tokio reactor.
//!
//! Used for `/dev/vfio` under the host root (group nodes come and go as devices move to and
//! from vfio-pci) and for the config file's directory: a ConfigMap volume is updated by writing
//! a new timestamped directory and renaming a `..data_tmp` symlink over `..data`, so the file
//! itself never changes in place; the directory sees `IN_MOVED_TO ..data`. Watching the
//! directory (never the file) sees every kind of update: that swap, an editor's rename, a plain
//! rewrite (`IN_CLOSE_WRITE`).
//!
//! The watcher reports names; what they mean is the caller's business.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// What happened to an entry of the watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Deleted,
    /// Renamed into the directory (the ConfigMap `..data` swap).
    MovedIn,
    /// Renamed out of the directory.
    MovedOut,
    /// A file opened for writing was closed.
    Written,
    /// The watched directory itself was deleted or moved away: the watch is gone.
    DirGone,
    /// The kernel's event queue overflowed: events were lost, look again.
    Overflow,
}

/// One change in the watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirChange {
    pub kind: ChangeKind,
    /// The entry's name (lossily UTF-8); `None` for [`ChangeKind::DirGone`] and
    /// [`ChangeKind::Overflow`].
    pub name: Option<String>,
    /// The entry is a directory.
    pub is_dir: bool,
}

/// What the watcher went wrong doing, with the operation and the directory.
#[derive(Debug, thiserror::Error)]
pub enum InotifyError {
    #[error("inotify: {op} {}: {source}", .dir.display())]
    Io {
        op: &'static str,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl InotifyError {
    /// True when the directory does not exist.
    pub fn is_not_found(&self) -> bool {
        let InotifyError::Io { source, .. } = self;
        source.kind() == io::ErrorKind::NotFound
    }
}

/// The events a directory watch asks for.
pub fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// Pure: the change an inotify event mask stands for; `None` for events nodeprep did not ask
/// about (`IN_IGNORED` after `IN_DELETE_SELF` is folded into that one).
pub fn classify(mask: AddWatchFlags) -> Option<ChangeKind> {
    let m = |f: AddWatchFlags| mask.contains(f);
    Some(if m(AddWatchFlags::IN_Q_OVERFLOW) {
        ChangeKind::Overflow
    } else if m(AddWatchFlags::IN_DELETE_SELF) || m(AddWatchFlags::IN_MOVE_SELF) || m(AddWatchFlags::IN_UNMOUNT) {
        ChangeKind::DirGone
    } else if m(AddWatchFlags::IN_CREATE) {
        ChangeKind::Created
    } else if m(AddWatchFlags::IN_DELETE) {
        ChangeKind::Deleted
    } else if m(AddWatchFlags::IN_MOVED_TO) {
        ChangeKind::MovedIn
    } else if m(AddWatchFlags::IN_MOVED_FROM) {
        ChangeKind::MovedOut
    } else if m(AddWatchFlags::IN_CLOSE_WRITE) {
        ChangeKind::Written
    } else {
        return None;
    })
}

/// nix's `Inotify` is `AsFd`; tokio's `AsyncFd` wants `AsRawFd`.
#[derive(Debug)]
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify watch on one directory.
#[derive(Debug)]
pub struct DirWatcher {
    fd: AsyncFd<InotifyFd>,
    dir: PathBuf,
    /// Changes read but not yet handed out.
    queue: std::collections::VecDeque<DirChange>,
    gone: bool,
}

impl DirWatcher {
    /// Watches `dir` for created, deleted, renamed and written entries. Fails when the
    /// directory does not exist ([`InotifyError::is_not_found`]). Must be called inside a tokio
    /// runtime.
    pub fn new(dir: impl Into<PathBuf>) -> Result<DirWatcher, InotifyError> {
        DirWatcher::with_mask(dir, dir_mask())
    }

    /// Watches `dir` for the events of `mask` (see [`dir_mask`]; `/dev/vfio` drops
    /// `IN_CLOSE_WRITE`, which every VM start and stop would trigger on its group node).
    pub fn with_mask(dir: impl Into<PathBuf>, mask: AddWatchFlags) -> Result<DirWatcher, InotifyError> {
        let dir = dir.into();
        let err = |op, e: Errno| InotifyError::Io { op, dir: dir.clone(), source: e.into() };
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| err("init", e))?;
        ino.add_watch(&dir, mask).map_err(|e| err("watch", e))?;
        // SAFETY: the `AsyncFd` owns the inotify instance, whose descriptor stays open and the
        // same until the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(ino), Interest::READABLE) }.map_err(|e| {
            InotifyError::Io { op: "register with the tokio reactor", dir: dir.clone(), source: e.into_parts().1 }
        })?;
        Ok(DirWatcher { fd, dir, queue: Default::default(), gone: false })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True once the directory was deleted or moved away: no more changes will come.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Polls for the next change. After [`ChangeKind::DirGone`] it stays pending forever.
    pub fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Result<DirChange, InotifyError>> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Poll::Ready(Ok(c));
            }
            if self.gone {
                return Poll::Pending;
            }
            let mut guard = ready!(self.fd.poll_read_ready(cx)).map_err(|e| InotifyError::Io {
                op: "wait for readiness",
                dir: self.dir.clone(),
                source: e,
            })?;
            match guard.get_inner().0.read_events() {
                Ok(events) => {
                    for ev in events {
                        let Some(kind) = classify(ev.mask) else { continue };
                        if kind == ChangeKind::DirGone {
                            if self.gone {
                                continue;
                            }
                            self.gone = true;
                        }
                        let is_dir = ev.mask.contains(AddWatchFlags::IN_ISDIR);
                        let name = ev.name.map(|n| n.to_string_lossy().into_owned());
                        self.queue.push_back(DirChange { kind, name, is_dir });
                    }
                }
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    return Poll::Ready(Err(InotifyError::Io { op: "read", dir: self.dir.clone(), source: e.into() }));
                }
            }
        }
    }

    /// Waits for the next change.
    pub async fn next_change(&mut self) -> Result<DirChange, InotifyError> {
        std::future::poll_fn(|cx| self.poll_change(cx)).await
    }
}

/// The watcher as a stream of changes; it never ends on its own (see [`DirWatcher::is_gone`]).
impl tokio_stream::Stream for DirWatcher {
    type Item = Result<DirChange, InotifyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_change(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(w: &mut DirWatcher) -> DirChange {
        tokio::time::timeout(Duration::from_secs(2), w.next_change())
            .await
            .expect("a change within 2 s")
            .expect("read the change")
    }

    #[test]
    fn classify_masks() {
        use AddWatchFlags as F;
        assert_eq!(classify(F::IN_CREATE), Some(ChangeKind::Created));
        assert_eq!(classify(F::IN_CREATE | F::IN_ISDIR), Some(ChangeKind::Created));
        assert_eq!(classify(F::IN_DELETE), Some(ChangeKind::Deleted));
        assert_eq!(classify(F::IN_MOVED_TO), Some(ChangeKind::MovedIn));
        assert_eq!(classify(F::IN_MOVED_FROM), Some(ChangeKind::MovedOut));
        assert_eq!(classify(F::IN_CLOSE_WRITE), Some(ChangeKind::Written));
        assert_eq!(classify(F::IN_DELETE_SELF), Some(ChangeKind::DirGone));
        assert_eq!(classify(F::IN_MOVE_SELF), Some(ChangeKind::DirGone));
        assert_eq!(classify(F::IN_Q_OVERFLOW), Some(ChangeKind::Overflow));
        assert_eq!(classify(F::IN_IGNORED), None);
        assert_eq!(classify(F::IN_ACCESS), None);
    }

    #[tokio::test]
    async fn reports_names_of_changed_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = DirWatcher::new(dir.path()).expect("watch");
        assert_eq!(w.dir(), dir.path());

        std::fs::write(dir.path().join("12"), "").expect("create");
        let c = next(&mut w).await;
        assert_eq!((c.kind, c.name.as_deref(), c.is_dir), (ChangeKind::Created, Some("12"), false));
        assert_eq!(next(&mut w).await.kind, ChangeKind::Written);

        std::fs::remove_file(dir.path().join("12")).expect("remove");
        let c = next(&mut w).await;
        assert_eq!((c.kind, c.name.as_deref()), (ChangeKind::Deleted, Some("12")));

        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let c = next(&mut w).await;
        assert_eq!((c.kind, c.name.as_deref(), c.is_dir), (ChangeKind::Created, Some("sub"), true));
    }

    /// What the kubelet's atomic writer does to a ConfigMap volume: a new timestamped
    /// directory, a `..data_tmp` symlink to it renamed over `..data`, the old directory removed.
    #[tokio::test]
    async fn sees_the_configmap_data_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("..2024_01_01_00_00_00.1")).expect("mkdir");
        std::fs::write(d.join("..2024_01_01_00_00_00.1/config.yaml"), "devices: []\n").expect("write");
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", d.join("..data")).expect("symlink");
        std::os::unix::fs::symlink("..data/config.yaml", d.join("config.yaml")).expect("symlink");
        let mut w = DirWatcher::new(d).expect("watch");

        std::fs::create_dir(d.join("..2024_01_01_00_01_00.2")).expect("mkdir");
        std::fs::write(d.join("..2024_01_01_00_01_00.2/config.yaml"), "devices: [x]\n").expect("write");
        std::os::unix::fs::symlink("..2024_01_01_00_01_00.2", d.join("..data_tmp")).expect("symlink");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("rename");
        std::fs::remove_dir_all(d.join("..2024_01_01_00_00_00.1")).expect("rm old");

        let mut seen = Vec::new();
        while !seen.iter().any(|c: &DirChange| c.kind == ChangeKind::Deleted) {
            seen.push(next(&mut w).await);
        }
        assert!(seen.iter().any(|c| c.kind == ChangeKind::MovedIn && c.name.as_deref() == Some("..data")), "{seen:?}");
        assert!(seen.iter().any(|c| c.kind == ChangeKind::MovedOut && c.name.as_deref() == Some("..data_tmp")));
    }

    #[tokio::test]
    async fn a_missing_directory_fails_and_a_deleted_one_is_reported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = DirWatcher::new(dir.path().join("vfio")).expect_err("missing dir");
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("inotify: watch"), "{err}");

        std::fs::create_dir(dir.path().join("vfio")).expect("mkdir");
        let mut w = DirWatcher::new(dir.path().join("vfio")).expect("watch");
        std::fs::remove_dir(dir.path().join("vfio")).expect("rmdir");
        assert_eq!(next(&mut w).await.kind, ChangeKind::DirGone);
        assert!(w.is_gone());
        let more = tokio::time::timeout(Duration::from_millis(50), w.next_change()).await;
        assert!(more.is_err(), "nothing after DirGone: {more:?}");
    }
}
