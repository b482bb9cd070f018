//! The storage directory: the account, each name's certificate and key, and the lock
//! files that keep processes sharing the directory from ordering a name twice.

use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};

use super::{AcmeError, LOCK_STALE};

const ACCOUNT: &str = "account.json";
const CERTS: &str = "certs";
const LOCKS: &str = "locks";

/// Creates the storage directory and its `certs` and `locks` folders (mode 0700).
pub(super) fn prepare(root: &Path) -> Result<(), AcmeError> {
    for dir in [root.to_path_buf(), root.join(CERTS), root.join(LOCKS)] {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|source| AcmeError::Storage {
            path: dir.clone(),
            source,
        })?;
        #[cfg(unix)]
        restrict(&dir);
    }
    Ok(())
}

/// Takes the group's and others' access away from a directory made before (it holds
/// private keys).
#[cfg(unix)]
fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        let restricted = fs::Permissions::from_mode(mode & 0o700);
        if let Err(error) = fs::set_permissions(dir, restricted) {
            tracing::warn!(path = %dir.display(), %error, "ACME storage: cannot make the directory private");
        }
    }
}

/// The names with a stored certificate (`certs/NAME.crt`), unchecked.
pub(super) fn stored_names(root: &Path) -> Result<Vec<String>, AcmeError> {
    let dir = root.join(CERTS);
    let entries = fs::read_dir(&dir).map_err(|source| AcmeError::Storage {
        path: dir.clone(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AcmeError::Storage {
            path: dir.clone(),
            source,
        })?;
        let file = entry.file_name();
        if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".crt")) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn cert_paths(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = root.join(CERTS);
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// The stored chain and key of `name`, or `None` if there is no chain.
pub(super) fn read_cert(root: &Path, name: &str) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let (crt, key) = cert_paths(root, name);
    let chain = match fs::read(&crt) {
        Ok(chain) => chain,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(e, &crt)),
    };
    let key = fs::read(&key).map_err(|e| with_path(e, &key))?;
    Ok(Some((chain, key)))
}

/// Stores the chain and key of `name`: the key first, each written atomically.
pub(super) fn write_cert(root: &Path, name: &str, chain: &[u8], key: &[u8]) -> io::Result<()> {
    let (crt, key_path) = cert_paths(root, name);
    write_atomic(&key_path, key)?;
    write_atomic(&crt, chain)
}

/// `account.json`: the credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The stored account for `directory`, if there is one. A file that cannot be read or
/// belongs to another directory is ignored with a warning (a new account replaces it).
pub(super) fn read_account(root: &Path, directory: &str) -> Option<AccountCredentials> {
    let path = root.join(ACCOUNT);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ACME storage: cannot read the account; creating a new one");
            return None;
        }
    };
    match serde_json::from_slice::<StoredAccount>(&bytes) {
        Ok(stored) if stored.directory == directory => Some(stored.credentials),
        Ok(stored) => {
            tracing::info!(stored = %stored.directory, directory = %directory, "ACME: the stored account is for another directory; creating a new one");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ACME storage: cannot parse the account; creating a new one");
            None
        }
    }
}

/// Stores the account for `directory` (mode 0600, atomically).
pub(super) fn write_account(root: &Path, directory: &str, credentials: AccountCredentials) -> io::Result<()> {
    let stored = StoredAccount {
        directory: directory.to_owned(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&stored).map_err(io::Error::other)?;
    write_atomic(&root.join(ACCOUNT), &json)
}

/// Writes `bytes` to a new temporary file (mode 0600) beside `path`, flushes it to disk
/// and renames it over `path`, so that readers see the old or the new content, whole.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = private_file(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(e, path))
}

/// Creates a new file readable by its owner only; fails if it exists.
fn private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A held `locks/NAME.lock`, removed when dropped.
#[derive(Debug)]
pub(super) struct Lock {
    path: PathBuf,
    content: String,
}

impl Lock {
    /// Takes the lock of `name` (taking over a stale one), or `None` if another holder
    /// has it. Two processes taking over the same stale lock at the same instant could
    /// both succeed: stale locks come from crashed processes, so this is left at that.
    pub(super) fn acquire(root: &Path, name: &str) -> io::Result<Option<Lock>> {
        let path = root.join(LOCKS).join(format!("{name}.lock"));
        for _ in 0..2 {
            match private_file(&path) {
                Ok(mut file) => {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                    let mut token = std::collections::hash_map::RandomState::new().build_hasher();
                    token.write_u128(now.as_nanos());
                    let content = format!(
                        "pid {}\ntime {}\ntoken {:016x}\n",
                        std::process::id(),
                        now.as_secs(),
                        token.finish()
                    );
                    if let Err(e) = file.write_all(content.as_bytes()).and_then(|()| file.sync_all()) {
                        let _ = fs::remove_file(&path);
                        return Err(with_path(e, &path));
                    }
                    return Ok(Some(Lock { path, content }));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match lock_age(&path) {
                    Some(age) if age > LOCK_STALE => {
                        tracing::warn!(path = %path.display(), age = ?age, "ACME: taking over a stale lock");
                        match fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(with_path(e, &path)),
                        }
                    }
                    // Held, or gone meanwhile (then the next check takes it).
                    _ => return Ok(None),
                },
                Err(e) => return Err(with_path(e, &path)),
            }
        }
        Ok(None)
    }
}

/// How old a lock is: from the `time` it holds, else (being written, or unreadable) from
/// its modification time. `None` if it is gone.
fn lock_age(path: &Path) -> Option<Duration> {
    let now = SystemTime::now();
    let written = fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("time ")?.trim().parse::<u64>().ok())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    let written = match written {
        Some(t) => t,
        None => fs::metadata(path).ok()?.modified().ok()?,
    };
    Some(now.duration_since(written).unwrap_or_default())
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Only our own lock: after a (wrongful) takeover the file is someone else's.
        if fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lb-tls-acme-storage-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
        ));
        prepare(&dir).unwrap();
        dir
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let root = temp_root("lock");
        let first = Lock::acquire(&root, "a.example.com").unwrap().expect("free");
        assert!(Lock::acquire(&root, "a.example.com").unwrap().is_none());
        assert!(Lock::acquire(&root, "b.example.com").unwrap().is_some());
        drop(first);
        assert!(Lock::acquire(&root, "a.example.com").unwrap().is_some());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_stale_lock_is_taken_over_and_a_fresh_one_is_not() {
        let root = temp_root("stale");
        let path = root.join(LOCKS).join("a.example.com.lock");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        fs::write(&path, format!("pid 1\ntime {}\n", now - 60)).unwrap();
        assert!(Lock::acquire(&root, "a.example.com").unwrap().is_none());
        fs::write(&path, format!("pid 1\ntime {}\n", now - 11 * 60)).unwrap();
        let lock = Lock::acquire(&root, "a.example.com")
            .unwrap()
            .expect("stale lock taken over");
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains(&format!("pid {}", std::process::id())));
        drop(lock);
        assert!(!path.exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_storage_directory_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_root("existing");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&root).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_root("files");
        write_cert(&root, "a.example.com", b"chain1", b"key1").unwrap();
        write_cert(&root, "a.example.com", b"chain2", b"key2").unwrap();
        let (chain, key) = read_cert(&root, "a.example.com").unwrap().unwrap();
        assert_eq!((chain.as_slice(), key.as_slice()), (&b"chain2"[..], &b"key2"[..]));
        let (crt, key) = cert_paths(&root, "a.example.com");
        for p in [crt, key] {
            assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(root.join(CERTS)).unwrap().count(), 2);
        assert_eq!(stored_names(&root).unwrap(), vec!["a.example.com".to_owned()]);
        assert!(read_cert(&root, "b.example.com").unwrap().is_none());
        fs::remove_dir_all(root).unwrap();
    }
}
