//! Mounting and unmounting: the checks before a mount (a clear error when `/dev/fuse` or the mount point is
//! unusable), the recovery of a mount a crashed node left behind (its kernel connection is gone: `stat` answers
//! `ENOTCONN`, so it is detached), the session's request loop on threads of its own, and an unmount that falls back
//! to a lazy detach when a process still uses the mount.

use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{Config, MountOption, Notifier, Session, SessionACL, SessionUnmounter};

use super::{MountConfig, PandoFs, SESSION_THREADS};

/// How long an unmount waits for the session's threads to return.
pub(super) const UNMOUNT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a mount cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open /dev/fuse ({0}): load the fuse module (modprobe fuse), or give a container the device")]
    NoDevice(io::Error),
    #[error("mount point {0}: {1}")]
    MountPoint(PathBuf, String),
    #[error("bad mount option: {0}")]
    Option(String),
    #[error("mounting at {0} failed: {1}")]
    Mount(PathBuf, io::Error),
}

/// Everything that can be checked before mounting: the device opens, and the mount point is a directory (a stale
/// mount of a crashed node there is detached first). Answers the path to mount at.
pub fn check(path: &Path) -> Result<PathBuf, MountError> {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(MountError::NoDevice)?;
    let path = std::path::absolute(path).map_err(|error| MountError::MountPoint(path.into(), error.to_string()))?;
    let point = |message: String| MountError::MountPoint(path.clone(), message);
    if let Some(fstype) = mounted_at(&path) {
        match std::fs::metadata(&path) {
            // ENOTCONN: the FUSE connection behind it is gone (its process died).
            Err(error) if error.raw_os_error() == Some(107) => {
                tracing::warn!(path = %path.display(), fstype, "detaching the stale mount a previous run left");
                detach(&path)
                    .map_err(|error| point(format!("a stale mount is there and cannot be detached: {error}")))?;
            }
            _ => return Err(point(format!("something ({fstype}) is mounted there already; unmount it first"))),
        }
    }
    let metadata = std::fs::metadata(&path).map_err(|error| point(error.to_string()))?;
    if !metadata.is_dir() {
        return Err(point("not a directory".into()));
    }
    Ok(path)
}

/// The file-system type mounted exactly at `path`, from `/proc/self/mountinfo`.
fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.to_str()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let point = unescape(fields.get(4)?);
        let separator = fields.iter().position(|field| *field == "-")?;
        (point == wanted).then(|| fields.get(separator + 1).unwrap_or(&"?").to_string())
    })
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'\\'
            && at + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[at + 1..at + 4], 8)
        {
            out.push(code);
            at += 4;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A lazy unmount: the kernel detaches the mount now and finishes when its last user lets go.
fn detach(path: &Path) -> io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        // Not root: fusermount3 is set-uid root for this.
        Err(_) => {
            let status = std::process::Command::new("fusermount3").arg("-uz").arg(path).status()?;
            if status.success() { Ok(()) } else { Err(io::Error::other(format!("fusermount3 -uz exited {status}"))) }
        }
    }
}

/// A live mount.
pub struct Mounted {
    path: PathBuf,
    unmounter: Option<SessionUnmounter>,
    notifier: Notifier,
    session: Option<JoinHandle<()>>,
}

/// Mounts `fs` at the configured path and runs its session; `ended` hears once the session returns.
pub async fn mount(
    config: &MountConfig,
    fs: PandoFs,
    ended: impl FnOnce(String) + Send + 'static,
) -> Result<Mounted, MountError> {
    let path = check(&config.path)?;
    let mut options = vec![
        MountOption::FSName("pando".into()),
        MountOption::Subtype("pando".into()),
        // Reads do not update atime (every read would be a replicated write).
        MountOption::NoAtime,
        MountOption::NoDev,
    ];
    options.push(if config.read_only { MountOption::RO } else { MountOption::RW });
    let mut session_config = Config::default();
    session_config.mount_options = options;
    session_config.acl = if config.allow_other { SessionACL::All } else { SessionACL::Owner };
    session_config.n_threads = Some(SESSION_THREADS);
    let at = path.clone();
    let mut session = tokio::task::spawn_blocking(move || Session::new(fs, &at, &session_config))
        .await
        .map_err(|error| MountError::Mount(path.clone(), io::Error::other(error.to_string())))?
        .map_err(|error| MountError::Mount(path.clone(), error))?;
    let notifier = session.notifier();
    let unmounter = session.unmount_callable();
    let thread = std::thread::Builder::new()
        .name("pando-fuse".into())
        .spawn(move || {
            let outcome = match session.run() {
                Ok(()) => "unmounted".to_string(),
                Err(error) => error.to_string(),
            };
            ended(outcome);
        })
        .map_err(|error| MountError::Mount(path.clone(), error))?;
    Ok(Mounted { path, unmounter: Some(unmounter), notifier, session: Some(thread) })
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    /// Unmounts (lazily when the mount is busy) and waits a while for the session's threads.
    pub async fn unmount(&mut self) {
        let Some(mut unmounter) = self.unmounter.take() else { return };
        let path = self.path.clone();
        let session = self.session.take();
        let done = tokio::task::spawn_blocking(move || {
            if let Err(error) = unmounter.unmount() {
                tracing::warn!(path = %path.display(), %error, "unmount failed; detaching lazily");
                if let Err(error) = detach(&path) {
                    tracing::error!(path = %path.display(), %error, "cannot detach the mount");
                }
            }
            if let Some(session) = session {
                let _ = session.join();
            }
        });
        if tokio::time::timeout(UNMOUNT_JOIN_TIMEOUT, done).await.is_err() {
            tracing::warn!(path = %self.path.display(), "the FUSE session did not end within the unmount's wait");
        } else {
            tracing::info!(path = %self.path.display(), "file system unmounted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/my\\040files"), "/mnt/my files");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn a_missing_mount_point_is_a_clear_error() {
        if std::fs::metadata("/dev/fuse").is_err() {
            return;
        }
        let error = check(Path::new("/nonexistent/pando-mount")).unwrap_err();
        assert!(matches!(error, MountError::MountPoint(..)), "{error}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let error = check(file.path()).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }
}
