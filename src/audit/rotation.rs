//! Rotation of the trail's active file: once it is big or old enough it ends with a signed
//! checkpoint, is fsynced and renamed, and the chain runs on into a new file. Run by the
//! syncer (see [`super::syncer`]) under the writer's lock; a step that fails leaves the
//! trail's names as recovery can read them, or refuses every later append.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::file::try_sync_dir;
use super::segments::rotated_name;
use super::syncer::Syncer;
use super::writer::{Shared, State};
use super::AuditError;

impl Syncer<'_> {
    /// Starts a new file once the active one is big or old enough. The old file ends with a
    /// signed checkpoint and is fsynced before it is renamed; the chain runs on into the new
    /// file. Failing to rotate is not a reason to refuse statements: sessions keep
    /// appending to the current file and the syncer tries again later. Sessions wait on the
    /// lock meanwhile: rotation is rare, and the file's name must not change under them.
    pub(super) fn rotate_if_due(&self, state: &mut State) {
        // Not while an appender's fdatasync runs (outside the lock): Linux reports a
        // writeback error to one fsync of an open file only, so the rotation's own could
        // come back fine while the appender's fails, and declare its records durable
        // before that failure is taken in.
        // The end of that sync wakes the syncer to rotate then.
        if !self.shared.rotation_due(state)
            || state.syncing
            || state.trail_syncing
            || !self.shared.healthy.load(Ordering::SeqCst)
        {
            return;
        }
        self.checkpoint(state);
        if state.uncovered > 0 {
            return; // the checkpoint failed; the log says why
        }
        if let Err(e) = state.file.sync_data() {
            tracing::error!(path = %self.shared.path.display(), error = %e, "audit fsync before rotation failed");
            if state.journal.is_some() {
                self.shared.refuse_after_trail_sync(state, &e);
            } else {
                self.shared.sync_failed(state, &e);
            }
            return;
        }
        state.durable = state.file_seq;
        state.trail_durable = state.file_seq;
        state.unsynced_since = None;
        self.shared.publish(state, None);
        self.shared.witness_if_durable(state);
        self.rename_and_start_new(state);
    }

    fn rename_and_start_new(&self, state: &mut State) {
        let path = &self.shared.path;
        let target = rotated_name(path, state.file_first_seq);
        if target.exists() {
            tracing::error!(target = %target.display(), "audit rotation target exists; not rotating");
            put_off_rotation(state);
            return;
        }
        if let Err(e) = std::fs::rename(path, &target) {
            tracing::error!(path = %path.display(), error = %e, "audit rotation failed");
            put_off_rotation(state);
            return;
        }
        let opened = self
            .shared
            .rotation_step(RotationStep::OpenNew)
            .and_then(|()| {
                // A new file, never one put under the name meanwhile.
                crate::private_files::open_own_file(
                    path,
                    crate::private_files::open_options()
                        .create_new(true)
                        .read(true)
                        .append(true),
                )
            });
        match opened {
            Ok(file) => {
                state.file = Arc::new(file);
                state.len = 0;
                state.writeback_started = 0;
                state.file_first_seq = state.next_seq;
                state.file_opened = Instant::now();
                state.rotation_put_off_until = None;
                // Until the folder is on disk, a power loss may take the new file's name
                // with every record written to it since: none is written.
                match self.sync_folder(RotationStep::SyncFolder) {
                    Ok(()) => {
                        tracing::info!(rotated = %target.display(), first_seq = state.file_first_seq, "audit file rotated")
                    }
                    Err(e) => self.shared.refuse_after_rotation(
                        state,
                        &format!(
                            "the folder could not be fsynced after rotating to a new file ({e})"
                        ),
                    ),
                }
            }
            Err(e) => {
                // The handle still points at the renamed file: records keep going there, and
                // the chain stays whole. Put the name back so readers find the active file.
                tracing::error!(path = %path.display(), error = %e, "could not start a new audit file");
                put_off_rotation(state);
                let back = self
                    .shared
                    .rotation_step(RotationStep::RenameBack)
                    .and_then(|()| std::fs::rename(&target, path));
                if let Err(back) = back {
                    // Records would go on under a rotated file's name, where neither readers
                    // nor the journal's recovery look for the active file.
                    return self.shared.refuse_after_rotation(
                        state,
                        &format!(
                            "no new file could be started ({e}) and {} could not be renamed back ({back})",
                            target.display()
                        ),
                    );
                }
                // The name put back must be on disk before a record is written under it:
                // recovery trusts a rotated name to hold only records synced before it.
                if let Err(e) = self.sync_folder(RotationStep::SyncFolderAfterRenameBack) {
                    self.shared.refuse_after_rotation(
                        state,
                        &format!("the folder could not be fsynced after putting the active file's name back ({e})"),
                    );
                }
            }
        }
    }

    /// Fsyncs the trail's folder (`step` names it for the tests' faults).
    fn sync_folder(&self, step: RotationStep) -> std::io::Result<()> {
        self.shared
            .rotation_step(step)
            .and_then(|()| try_sync_dir(&self.shared.path))
    }
}

/// How long a rotation that could not be done waits before it is tried again.
const ROTATION_RETRY: Duration = Duration::from_secs(60);

/// A rotation failed: it is not tried again for [`ROTATION_RETRY`].
fn put_off_rotation(state: &mut State) {
    state.file_opened = Instant::now();
    state.rotation_put_off_until = Some(Instant::now() + ROTATION_RETRY);
}

/// The steps of a rotation that tests make fail.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RotationStep {
    OpenNew,
    SyncFolder,
    RenameBack,
    SyncFolderAfterRenameBack,
}

impl Shared {
    /// A rotation left the trail's names in a state a power loss or a restart could not
    /// make sense of: every later append is refused (fail closed) until a restart, which
    /// reads the folder as it is.
    pub(super) fn refuse_after_rotation(&self, state: &mut State, why: &str) {
        let refusal = AuditError::Io {
            path: self.path.display().to_string(),
            message: format!(
                "{why}; statements are refused until lockbox is restarted with the disk fixed"
            ),
        };
        tracing::error!(error = %refusal, "audit rotation failed; statements are refused");
        self.healthy.store(false, Ordering::SeqCst);
        state.refused = Some(refusal);
    }

    /// Tests only: fails `step` once if a test asked for it.
    #[cfg(test)]
    pub(super) fn rotation_step(&self, step: RotationStep) -> std::io::Result<()> {
        let mut faults = self
            .rotation_faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match faults.iter().position(|f| *f == step) {
            Some(at) => {
                faults.remove(at);
                Err(std::io::Error::other(format!(
                    "injected failure of {step:?}"
                )))
            }
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    pub(super) fn rotation_step(&self, _step: RotationStep) -> std::io::Result<()> {
        Ok(())
    }
}
