//! Helpers shared by the agent's unit tests.

use std::time::Duration;

/// Waits until `check` holds, looking every 50 ms; fails the test after
/// 5 s, naming `what` it waited for.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}
