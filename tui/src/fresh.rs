//! Writes that name the version they were made from.
//!
//! A node or service is written back with the version it was read at, and
//! the cluster refuses the write (`Aborted`) if the object changed since.
//! The cluster changes objects on its own (status reports, role changes,
//! update progress), and the console's model can be a moment behind, so a
//! refused write is made again from a fresh read: the operator's intent
//! (this field, this value) is the same. The CLI and the console both
//! write this way.

use std::future::Future;

/// How many times a refused write is made again before the refusal is
/// reported.
pub const STALE_WRITE_RETRIES: u32 = 5;

/// An error that may be the cluster's "changed since you read it".
pub trait Refusal {
    fn is_stale(&self) -> bool;
}

impl Refusal for tonic::Status {
    fn is_stale(&self) -> bool {
        self.code() == tonic::Code::Aborted
    }
}

impl Refusal for anyhow::Error {
    fn is_stale(&self) -> bool {
        self.downcast_ref::<tonic::Status>()
            .is_some_and(Refusal::is_stale)
    }
}

/// Writes `current` changed; on a refusal for staleness reads it again
/// and writes that instead, up to [`STALE_WRITE_RETRIES`] times.
pub async fn write_fresh<T, W, E, Write, Written, Reread, Read>(
    mut current: T,
    mut write: Write,
    mut reread: Reread,
) -> Result<W, E>
where
    E: Refusal,
    Write: FnMut(&T) -> Written,
    Written: Future<Output = Result<W, E>>,
    Reread: FnMut() -> Read,
    Read: Future<Output = Result<T, E>>,
{
    let mut attempts = 0;
    loop {
        match write(&current).await {
            Err(refusal) if refusal.is_stale() && attempts < STALE_WRITE_RETRIES => {
                attempts += 1;
                current = reread().await?;
            }
            written => return written,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::{STALE_WRITE_RETRIES, write_fresh};

    /// Runs `write_fresh` from version 1 against a cluster whose object is
    /// changed under the writer `conflicts` times; returns what it
    /// answered and the versions it wrote.
    async fn against(conflicts: u32, other_error: bool) -> (Result<(), tonic::Status>, Vec<u64>) {
        let written = RefCell::new(Vec::new());
        let current_version = RefCell::new(1 + u64::from(conflicts));
        let rereads = RefCell::new(0u64);
        let outcome = write_fresh(
            1u64,
            |version: &u64| {
                written.borrow_mut().push(*version);
                let result = if other_error {
                    Err(tonic::Status::permission_denied("not a manager"))
                } else if *version == *current_version.borrow() {
                    Ok(())
                } else {
                    Err(tonic::Status::aborted("version conflict"))
                };
                async move { result }
            },
            || {
                *rereads.borrow_mut() += 1;
                let fresh = (1 + *rereads.borrow()).min(*current_version.borrow());
                async move { Ok(fresh) }
            },
        )
        .await;
        (outcome, written.into_inner())
    }

    #[tokio::test]
    async fn a_conflict_is_written_again_from_a_fresh_read() {
        let (outcome, written) = against(2, false).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(written, [1, 2, 3], "each retry writes what it read");
    }

    #[tokio::test]
    async fn conflicts_that_keep_coming_end_in_the_conflict() {
        let (outcome, written) = against(STALE_WRITE_RETRIES + 1, false).await;
        let status = outcome.expect_err("gives up");
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(written.len(), STALE_WRITE_RETRIES as usize + 1);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let (outcome, written) = against(0, true).await;
        let status = outcome.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(written, [1]);
    }
}
