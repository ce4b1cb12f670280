//! Shared benchmark helpers: long generated meetings (made once, kept in the target dir) and
//! small statistics.
//!
//! | module     | job                                                                    |
//! |------------|------------------------------------------------------------------------|
//! | `report`   | figures beside baselines; `<target>/bench/latest.json` and its table    |
//! | `tracks`   | a meeting's spans, frames and keyframes (from the index); decode limit  |
//! | `gst_play` | GStreamer's own playback of a meeting: the baselines                    |
//! | `nginx`    | nginx on loopback, the HTTP range server of the baseline               |
//! | `ours`     | tandem's player logging what it renders, in the baseline's shape        |
//! | `peer`     | a loopback peer serving folders, and a client                          |
//! | `seeks`    | seeks timed from what a player renders (ours and the baseline's)        |

pub mod gst_play;
pub mod nginx;
pub mod opens;
pub mod ours;
pub mod peer;
pub mod report;
pub mod seeks;
pub mod tracks;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_fixtures::{MeetingSpec, Variant};

/// Minutes of the long meetings benchmarks use (`TANDEM_BENCH_MINUTES`, default 60).
pub fn bench_minutes() -> u64 {
    std::env::var("TANDEM_BENCH_MINUTES").ok().and_then(|m| m.parse().ok()).filter(|&m| m > 0).unwrap_or(60)
}

/// A generated meeting of `minutes` in `dir`, made on first use and reused afterwards.
pub fn long_meeting(dir: &Path, variant: Variant, minutes: u64) -> anyhow::Result<PathBuf> {
    let name = format!(
        "{}-{minutes}min",
        match variant {
            Variant::Standard => "standard",
            Variant::Webrtc => "webrtc",
            Variant::Jumps => "jumps",
        }
    );
    let out = dir.join(name);
    if out.join("meeting.json").exists() {
        return Ok(out);
    }
    eprintln!(
        "generating a {minutes}-minute {variant:?} meeting into {} (once; reused by later runs)",
        out.display()
    );
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    // One line per track per 10 %, so the log stays short whether or not stderr is a terminal.
    let mut last_decile: (String, u64) = (String::new(), u64::MAX);
    tandem_fixtures::generate(&MeetingSpec::new(variant, minutes * 60), &partial, |p| {
        let decile = (p.done * 10.0).floor() as u64;
        if (p.track, decile) != (last_decile.0.as_str(), last_decile.1) {
            eprintln!("  {:<14} {:>3}%", p.track, decile * 10);
            last_decile = (p.track.to_string(), decile);
        }
    })?;
    std::fs::rename(&partial, &out)?;
    Ok(out)
}

/// The target dir the running bench binary was built into (`<target>/<profile>/deps/<bin>`),
/// whatever `CARGO_TARGET_DIR` says.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"))
}

/// The folder generated meetings are kept in (`<target>/tmp/meetings`, `CARGO_TARGET_TMPDIR`).
pub fn meetings_dir() -> PathBuf {
    target_dir().join("tmp").join("meetings")
}

/// The committed 4-track meeting.
pub fn fixture_meeting() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/meeting")
}

/// The value at quantile `q` (0..=1) of `values`.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx]
}

/// p50, p95 and max of `values`, in ms.
pub fn summary(values: &[Duration]) -> (f64, f64, f64) {
    (ms(quantile(values, 0.5)), ms(quantile(values, 0.95)), ms(quantile(values, 1.0)))
}

/// The value at quantile `q` of plain numbers.
pub fn quantile_f(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// True when run by `cargo bench` (which passes `--bench`). `cargo test --all-targets` also runs
/// bench binaries, without that flag: they then only check that they start, and exit.
pub fn invoked_as_bench() -> bool {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        eprintln!("benchmark built; run it with `cargo bench` (skipped under `cargo test`)");
    }
    bench
}
