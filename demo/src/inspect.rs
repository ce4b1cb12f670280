//! `index`, `seek-range` and (until the player lands) `play`: what the indexes say about local
//! files, a peer's tracks and meeting folders. The same index code reads both through
//! `RangeSource`.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde_json::json;
use tandem::index::TrackIndex;
use tandem::manifest::Manifest;
use tandem::net::RemoteTrack;
use tandem::{FileSource, MediaTime, RangeSource};

use crate::peer::{self, DialArgs};

fn open(file: &Path) -> Result<(FileSource, TrackIndex)> {
    let src = FileSource::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let index = TrackIndex::open(&name, &src)?;
    Ok((src, index))
}

/// A local file or a peer's track, whichever `target` names.
enum Target {
    Local(FileSource),
    /// The runtime carries the remote reads; declared after the track so it is dropped last.
    Remote {
        track: Box<RemoteTrack>,
        _runtime: tokio::runtime::Runtime,
    },
}

impl Target {
    fn open(target: &str, dial: &DialArgs) -> Result<(Target, String)> {
        let path = Path::new(target);
        if path.exists() || target.matches('/').count() != 2 {
            let src = FileSource::open(path).with_context(|| format!("cannot open {target}"))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok((Target::Local(src), name));
        }
        let (runtime, remote) = peer::open_remote_track(target, dial)?;
        Ok((Target::Remote { track: Box::new(remote), _runtime: runtime }, target.to_string()))
    }

    fn source(&self) -> &dyn RangeSource {
        match self {
            Target::Local(src) => src,
            Target::Remote { track, .. } => track.as_ref(),
        }
    }
}

fn millis(t: MediaTime) -> f64 {
    t.as_nanos() as f64 / 1e6
}

/// Prints one JSON line per keyframe, then a summary line.
pub fn index(target: &str, dial: &DialArgs) -> Result<()> {
    let (target, name) = Target::open(target, dial)?;
    let src = target.source();
    let index = TrackIndex::open(&name, src)?;
    let keyframes = index.keyframes(src)?;
    let mut out = std::io::stdout().lock();
    for k in &keyframes {
        let line = json!({ "pts_ms": millis(k.pts), "offset": k.offset, "size": k.size });
        if !emit(&mut out, &line)? {
            return Ok(());
        }
    }
    emit(&mut out, &summary(&index, keyframes.len()))?;
    Ok(())
}

/// Writes one line; `false` when the reader has gone (`| head`), which ends the listing quietly.
fn emit(out: &mut impl std::io::Write, line: &impl std::fmt::Display) -> Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn summary(index: &TrackIndex, keyframes: usize) -> serde_json::Value {
    let info = index.info();
    let cost = index.open_cost();
    json!({
        "summary": true,
        "container": info.container,
        "codec": info.codec,
        "duration_ms": info.duration.map(millis),
        "timescale": info.timescale,
        "video": info.video,
        "audio": info.audio,
        "keyframes": keyframes,
        "open_bytes": cost.bytes,
        "open_reads": cost.reads,
    })
}

/// Prints the keyframe at or before `at` and the byte range needed to show that time.
pub fn seek_range(target: &str, at: &str, dial: &DialArgs) -> Result<()> {
    let t = MediaTime::parse(at)
        .ok_or_else(|| anyhow!("cannot read {at:?} as a time (try 90, 1:30.5 or 1500ms)"))?;
    let (target, name) = Target::open(target, dial)?;
    let src = target.source();
    let index = TrackIndex::open(&name, src)?;
    let (keyframe, range) = index.range_to_show(src, t)?;
    println!(
        "{}",
        json!({
            "at_ms": millis(t),
            "keyframe_pts_ms": millis(keyframe.pts),
            "start": range.start,
            "end": range.end,
            "bytes": range.end - range.start,
        })
    );
    Ok(())
}

/// Lists a meeting's tracks and what their indexes say (the player will take this command over).
pub fn play(meeting: &Path) -> Result<()> {
    let manifest = Manifest::load(meeting)?;
    println!("meeting {} ({} tracks)", manifest.name, manifest.tracks.len());
    for track in &manifest.tracks {
        let path = meeting.join(track.file());
        let (src, index) = open(&path)?;
        let keyframes = index.keyframes(&src)?;
        let spans: Vec<String> = track
            .segments
            .iter()
            .map(|s| match s.end_ms {
                Some(end) => format!("{}-{} s", s.start_ms as f64 / 1000.0, end as f64 / 1000.0),
                None => format!("{} s-", s.start_ms as f64 / 1000.0),
            })
            .collect();
        let info = index.info();
        let cost = index.open_cost();
        println!(
            "  {:<14} {:<9?} {:<8?} {:>9} bytes  on timeline {}  {} keyframes  duration {}  opened with {} reads / {} bytes",
            track.name,
            info.container,
            info.codec,
            src_len(&src),
            spans.join(", "),
            keyframes.len(),
            info.duration.map(|d| d.to_string()).unwrap_or_else(|| "unknown".into()),
            cost.reads,
            cost.bytes,
        );
    }
    Ok(())
}

fn src_len(src: &FileSource) -> u64 {
    src.len()
}
