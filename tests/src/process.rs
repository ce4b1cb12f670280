//! Running a child process to its end within a time limit: past it, the child is killed by its
//! own id (never by name), so a hung command fails its test instead of hanging it.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Runs `command` to its end (stdin closed, stdout and stderr captured), killed (by its own
/// id) if it runs past `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // Our own child, by its id.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("{command:?} ran past {limit:?}")
        }
    }
}
