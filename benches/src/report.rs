//! The figures each benchmark writes, and the report that gathers them.
//!
//! Every bench binary writes its figures to `<target>/bench/<bench>.json` and then merges every
//! part present into `<target>/bench/latest.json` (and `latest.md`, the README table), so
//! `cargo bench -p tandem-benches` leaves one report whatever order the binaries run in. A smoke
//! run (`TANDEM_BENCH_SMOKE=1`) writes under `<target>/bench/smoke/` instead and never touches the
//! measured figures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The direction in which `ratio` must meet `goal_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One figure: ours beside its baseline, measured in the same run.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub ours: f64,
    pub baseline: f64,
    pub baseline_name: String,
    /// `None` where the issue sets no goal (the figure is there to be read).
    pub goal_ratio: Option<f64>,
    pub better: Better,
}

impl Figure {
    pub fn new(name: &str, unit: &str, ours: f64, baseline: f64, baseline_name: &str) -> Figure {
        Figure {
            name: name.into(),
            unit: unit.into(),
            ours,
            baseline,
            baseline_name: baseline_name.into(),
            goal_ratio: None,
            better: Better::Lower,
        }
    }

    /// A goal on the ratio, lower is better.
    pub fn goal(mut self, ratio: f64) -> Figure {
        self.goal_ratio = Some(ratio);
        self
    }

    /// A goal on the ratio, higher is better.
    pub fn goal_higher(mut self, ratio: f64) -> Figure {
        self.goal_ratio = Some(ratio);
        self.better = Better::Higher;
        self
    }

    /// An absolute goal on `ours` (lower is better), written as a ratio: `goal / baseline`.
    pub fn goal_absolute(mut self, goal: f64) -> Figure {
        self.goal_ratio = Some(goal / self.baseline);
        self
    }

    pub fn ratio(&self) -> f64 {
        self.ours / self.baseline
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "unit": self.unit,
            "ours": finite(self.ours),
            "baseline": finite(self.baseline),
            "baseline_name": self.baseline_name,
            "ratio": finite(self.ratio()),
            "goal_ratio": self.goal_ratio.map(finite),
            "better": match self.better { Better::Lower => "lower", Better::Higher => "higher" },
        })
    }
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1e4).round() / 1e4)
    } else {
        Value::Null
    }
}

/// `TANDEM_BENCH_SMOKE=1`: one short iteration of everything, a test that the code runs.
pub fn smoke() -> bool {
    std::env::var("TANDEM_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `<target>/bench` (or `<target>/bench/smoke`), from the target dir cargo built into.
pub fn out_dir() -> PathBuf {
    let dir = crate::target_dir().join("bench");
    if smoke() {
        dir.join("smoke")
    } else {
        dir
    }
}

/// Writes `bench`'s figures (and free-form `details`) and merges every part into `latest.json`.
pub fn write_part(bench: &str, figures: &[Figure], details: Value) -> Result<()> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let part = json!({
        "bench": bench,
        "date": now_utc(),
        "machine": machine(),
        "figures": figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "details": details,
    });
    std::fs::write(dir.join(format!("{bench}.json")), serde_json::to_string_pretty(&part)?)?;
    println!("\n{bench}:\n{}", table(&part["figures"]));
    merge(&dir)
}

/// The figure names the issue asks for, first in the report, in this order.
const REQUIRED: &[&str] = &[
    "seek_accurate_p50_local",
    "seek_accurate_p95_local",
    "seek_accurate_p50_p2p",
    "seek_accurate_p50_vs_decode_limit",
    "seek_preview_p50",
    "sync_skew_p95",
    "open_first_frame_p2p",
    "rss_60min_over_1min",
    "transport_1mib_vs_raw_quic",
    "link_far_open_first_frame",
    "link_far_seek_accurate_p50",
    "link_far_seek_accurate_p50_vs_http",
    "link_far_stalls",
    "link_lossy_stalls",
    "link_short_audio_playing_goal",
];

/// Gathers every `<bench>.json` in `dir` into `latest.json` and `latest.md`.
pub fn merge(dir: &Path) -> Result<()> {
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.ends_with(".json") || name == "latest.json" {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let part: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        parts.push(part);
    }
    parts.sort_by_key(|p| p["bench"].as_str().unwrap_or_default().to_string());
    let mut figures: Vec<Value> =
        parts.iter().flat_map(|p| p["figures"].as_array().cloned().unwrap_or_default()).collect();
    let rank = |f: &Value| {
        let name = f["name"].as_str().unwrap_or_default();
        REQUIRED.iter().position(|r| *r == name).unwrap_or(REQUIRED.len())
    };
    figures.sort_by_key(rank);
    let missing: Vec<&str> =
        REQUIRED.iter().copied().filter(|r| !figures.iter().any(|f| f["name"] == *r)).collect();
    let dates: Vec<Value> = parts.iter().map(|p| json!({"bench": p["bench"], "date": p["date"]})).collect();
    let latest = json!({
        "machine": machine(),
        "date": now_utc(),
        "parts": dates,
        "missing": missing,
        "figures": figures,
    });
    std::fs::write(dir.join("latest.json"), serde_json::to_string_pretty(&latest)?)?;
    let md = format!("{}\n", table(&latest["figures"]));
    std::fs::write(dir.join("latest.md"), &md)?;
    println!(
        "report: {} ({} figures; not yet measured: {missing:?})",
        dir.join("latest.json").display(),
        figures.len()
    );
    Ok(())
}

/// The figures as a markdown table.
pub fn table(figures: &Value) -> String {
    let num = |v: &Value| match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 1.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    };
    let mut out = String::from(
        "| figure | unit | ours | baseline | baseline is | ratio | goal | met |\n|---|---|---|---|---|---|---|---|\n",
    );
    for f in figures.as_array().into_iter().flatten() {
        let better = f["better"].as_str().unwrap_or("lower");
        let (ratio, goal) = (f["ratio"].as_f64(), f["goal_ratio"].as_f64());
        let met = match (ratio, goal) {
            (Some(r), Some(g)) if better == "lower" => {
                if r <= g {
                    "yes"
                } else {
                    "no"
                }
            }
            (Some(r), Some(g)) => {
                if r >= g {
                    "yes"
                } else {
                    "no"
                }
            }
            _ => "",
        };
        let goal = match goal {
            Some(_) => format!("{} {}", if better == "lower" { "<=" } else { ">=" }, num(&f["goal_ratio"])),
            None => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f["name"].as_str().unwrap_or_default(),
            f["unit"].as_str().unwrap_or_default(),
            num(&f["ours"]),
            num(&f["baseline"]),
            f["baseline_name"].as_str().unwrap_or_default(),
            num(&f["ratio"]),
            goal,
            met
        ));
    }
    out
}

/// CPU model, cores and memory, from /proc.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores, {:.0} GiB RAM, {}", kib as f64 / 1048576.0, std::env::consts::OS)
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_utc() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
