//! Writing generated files: all of them or none, private ones readable by their owner only,
//! never over an existing file unless the caller says so (`--force`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why generated files were not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("{} already {}; nothing was written (pass --force to overwrite)", list(.0), if .0.len() == 1 { "exists" } else { "exist" })]
    Exists(Vec<PathBuf>),
    #[error("{0} is named twice; nothing was written")]
    Twice(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// One file to write.
pub(crate) struct NewFile {
    pub path: PathBuf,
    pub contents: String,
    /// Keys, passwords: mode 0600. Certificates and the config: 0644.
    pub private: bool,
}

impl NewFile {
    pub(crate) fn private(path: impl Into<PathBuf>, contents: impl Into<String>) -> NewFile {
        NewFile {
            path: path.into(),
            contents: contents.into(),
            private: true,
        }
    }

    pub(crate) fn public(path: impl Into<PathBuf>, contents: impl Into<String>) -> NewFile {
        NewFile {
            path: path.into(),
            contents: contents.into(),
            private: false,
        }
    }
}

/// Writes every file. Unless `force`, checks every target first and writes nothing when any
/// exists: a key and its certificate are only useful as a pair, so half a pair must never
/// replace a working one.
pub(crate) fn write_all(files: &[NewFile], force: bool) -> Result<(), WriteError> {
    for (i, file) in files.iter().enumerate() {
        if files[..i].iter().any(|f| f.path == file.path) {
            return Err(WriteError::Twice(file.path.clone()));
        }
    }
    if !force {
        let existing: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.path.symlink_metadata().is_ok())
            .map(|f| f.path.clone())
            .collect();
        if !existing.is_empty() {
            return Err(WriteError::Exists(existing));
        }
    }
    files.iter().try_for_each(|f| write_one(f, force))
}

/// Writes a temporary file beside the target (created 0600, so a secret is never readable
/// by others, not even for a moment) and renames it into place: a certificate watcher or a
/// crash never sees half a file. Without `force` the rename refuses an existing target, so
/// a file made between the check and the write is not replaced either.
fn write_one(file: &NewFile, force: bool) -> Result<(), WriteError> {
    let io = |source: std::io::Error| WriteError::Io {
        path: file.path.clone(),
        source,
    };
    let dir = match file.path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".lockbox-new-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(file.contents.as_bytes()).map_err(io)?;
    let mode = if file.private { 0o600 } else { 0o644 };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    let persisted = if force {
        tmp.persist(&file.path)
    } else {
        tmp.persist_noclobber(&file.path)
    };
    persisted.map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn writes_private_files_0600_and_public_ones_0644() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        write_all(
            &[NewFile::private(&key, "k"), NewFile::public(&cert, "c")],
            false,
        )
        .expect("written");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "k");
    }

    #[test]
    fn one_existing_target_means_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&key, "old key").expect("write");
        let err = write_all(
            &[NewFile::public(&cert, "new"), NewFile::private(&key, "new")],
            false,
        )
        .expect_err("refused");
        assert!(
            matches!(err, WriteError::Exists(ref p) if p == std::slice::from_ref(&key)),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(!cert.exists(), "the certificate was written anyway");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "old key");
        let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(leftovers, 1, "temporary files left behind");
    }

    #[test]
    fn force_overwrites_and_tightens_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "old").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_all(&[NewFile::private(&key, "new")], true).expect("written");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "new");
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn the_same_path_twice_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let same = dir.path().join("both.pem");
        let err = write_all(
            &[NewFile::public(&same, "c"), NewFile::private(&same, "k")],
            true,
        )
        .expect_err("refused");
        assert!(matches!(err, WriteError::Twice(_)), "{err}");
        assert!(!same.exists());
    }
}
