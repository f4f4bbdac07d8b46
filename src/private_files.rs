//! Files and folders lockbox creates for itself hold what others must not read: the audit
//! trail records every statement an engineer ran (literals included) and the state store
//! every request. They are created owner-only (files 0600, folders 0700) whatever the
//! process umask, and a state store or trail left readable by an older version is
//! tightened when it is opened.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// `OpenOptions` that create a file readable and writable by its owner only.
pub(crate) fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates `dir` and its missing parents owner-only; existing folders are left as they are
/// (they may be shared on purpose, e.g. `/var/lib`).
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens a file lockbox writes for itself (the audit trail, its journal) with `options`:
/// never through a symbolic link, only if it is a regular file, and made owner-only through
/// the open descriptor. Someone who can write the folder could otherwise point the name at
/// any file lockbox may write (its signing key, the state store), which it would then make
/// owner-only and overwrite (an attack review did so with a link in the journal's place),
/// or at a FIFO, whose open would wait for a reader.
pub(crate) fn open_own_file(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    // Another name for the same file (a hard link made to the signing key or the state
    // store) would have lockbox write into that file.
    if std::os::unix::fs::MetadataExt::nlink(&metadata) > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} has other names (hard links); lockbox writes only files of its own",
                path.display()
            ),
        ));
    }
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Makes an existing file owner-only; a file that does not exist is fine.
pub(crate) fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_files_and_folders_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&root.path().join("a")), DIR_MODE);
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("f");
        open_options()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        let loose = dir.join("loose");
        std::fs::write(&loose, b"x").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict(&loose).unwrap();
        assert_eq!(mode(&loose), FILE_MODE);
        restrict(&dir.join("missing")).unwrap();
    }

    #[test]
    fn a_file_of_lockbox_is_never_one_reached_through_another_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("signing-key.pem");
        std::fs::write(&key, b"key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let trail = dir.path().join("audit.jsonl");
        std::fs::hard_link(&key, &trail).unwrap();
        let refused = open_own_file(&trail, open_options().append(true)).unwrap_err();
        assert!(refused.to_string().contains("other names"), "{refused}");
        std::fs::remove_file(&trail).unwrap();
        std::os::unix::fs::symlink(&key, &trail).unwrap();
        assert!(open_own_file(&trail, open_options().append(true)).is_err());
        assert_eq!(std::fs::read(&key).unwrap(), b"key");
        assert_eq!(mode(&key), 0o640, "its mode left as it was");
    }
}
