//! Peak memory of the player on a 1-minute and a long (default 60-minute) meeting.
//!
//! Each meeting is played in a child process (this binary again, with `--child`): headless,
//! every track subscribed, five seeks spread over the meeting with four seconds of play after
//! each. The child reports its peak resident set (`VmHWM`). Buffers are sized in time and
//! bytes, so the long meeting should cost what the short one does: the ratio is the figure.
//!
//! `cargo bench -p tandem-benches --bench player_memory` (`TANDEM_BENCH_MINUTES` shortens the
//! long meeting).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tandem::player::{Meeting, Output, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::{bench_minutes, invoked_as_bench, long_meeting, meetings_dir};
use tandem_fixtures::Variant;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child: plays `dir` and prints `peak_kib=<n>`.
fn child(dir: &Path) -> Result<()> {
    let meeting = Meeting::from_folder(dir)?;
    let duration = meeting.duration().context("meeting without a duration")?;
    let player =
        Player::open(meeting, PlayerOptions { output: Output::Headless, ..PlayerOptions::default() })?;
    player.play()?;
    for tenth in [1, 3, 5, 7, 9] {
        let at = MediaTime::from_nanos(duration.as_nanos() / 10 * tenth);
        player.seek(at, SeekMode::Accurate)?;
        if !player.wait_seek(Duration::from_secs(20)) {
            bail!("seek to {at} did not complete");
        }
        std::thread::sleep(Duration::from_secs(if smoke() { 1 } else { 4 }));
    }
    println!("peak_kib={}", peak_rss_kib().context("no VmHWM in /proc/self/status")?);
    Ok(())
}

fn measure(dir: &Path) -> Result<u64> {
    let out = Command::new(std::env::current_exe()?).arg("--child").arg(dir).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("child failed on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_kib=").and_then(|v| v.parse().ok()))
        .with_context(|| format!("no figure from the child: {stdout}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let dir = args.get(i + 1).context("--child needs a meeting folder")?;
        return child(Path::new(dir));
    }
    if !invoked_as_bench() {
        return Ok(());
    }
    let root = meetings_dir();
    std::fs::create_dir_all(&root)?;
    let minutes = bench_minutes();
    let short = long_meeting(&root, Variant::Standard, 1)?;
    let long = long_meeting(&root, Variant::Standard, minutes)?;
    let mut rows = Vec::new();
    for (name, dir) in [("1 min", &short), (&*format!("{minutes} min"), &long)] {
        // Two runs each; the smaller peak is the steadier figure on a noisy machine.
        let peak = if smoke() { measure(dir)? } else { measure(dir)?.min(measure(dir)?) };
        println!("{name:>8}: peak RSS {:.1} MiB", peak as f64 / 1024.0);
        rows.push(peak);
    }
    let ratio = rows[1] as f64 / rows[0] as f64;
    println!("{minutes}-minute / 1-minute peak RSS: {ratio:.3}x");
    let (long_mib, short_mib) = (rows[1] as f64 / 1024.0, rows[0] as f64 / 1024.0);
    let figures = [Figure::new(
        "rss_60min_over_1min",
        "MiB",
        long_mib,
        short_mib,
        "our peak RSS on the 1-minute meeting",
    )
    .goal(1.1)];
    write_part(
        "player_memory",
        &figures,
        serde_json::json!({"short_kib": rows[0], "long_kib": rows[1], "minutes": minutes}),
    )
}
