//! `Cancel`: how another thread stops a running command (the SSE worker, when its
//! client went away), without knowing how the command reaches its container.
//!
//! The transport arms the handle with the command's connection as soon as it has one;
//! `cancel` cuts that connection, at once or, if the command has no connection yet, the
//! moment it gets one. A cut connection ends the command: the stub kills it when its
//! spec connection closes, and the `docker exec` transport, whose processes outlive
//! their connection, kills their tree itself when it sees the handle cancelled.
//!
//! Invariant: once `cancel` was called, no connection armed with the handle stays open.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

/// A cancellation handle; clones share it.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    cancelled: bool,
    connection: Option<UnixStream>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the command: cuts its connection now, or as soon as it has one.
    pub fn cancel(&self) {
        let mut state = self.state();
        state.cancelled = true;
        if let Some(connection) = state.connection.take() {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }

    /// Registers the command's connection (the transports do, once they have it); cut
    /// at once if the handle was already cancelled.
    pub(crate) fn arm(&self, connection: &UnixStream) {
        self.arm_with(connection);
    }

    fn arm_with(&self, connection: &UnixStream) {
        let mut state = self.state();
        state.connection = connection.try_clone().ok();
        if state.cancelled {
            if let Some(connection) = state.connection.take() {
                let _ = connection.shutdown(Shutdown::Both);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Whether `theirs` sees its connection closed from the other end.
    fn closed(mut theirs: &UnixStream) -> bool {
        theirs
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        matches!(theirs.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn cancel_cuts_an_armed_connection() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let cancel = Cancel::new();
        cancel.arm_with(&ours);
        assert!(!closed(&theirs));
        assert!(!cancel.is_cancelled());
        cancel.clone().cancel();
        assert!(cancel.is_cancelled());
        assert!(closed(&theirs));
    }

    #[test]
    fn a_connection_armed_after_cancel_is_cut_at_once() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let cancel = Cancel::new();
        cancel.cancel();
        cancel.arm_with(&ours);
        assert!(closed(&theirs));
    }
}
