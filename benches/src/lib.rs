//! Shared benchmark helpers: long generated meetings (made once, kept in the target dir) and
//! small statistics.

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
