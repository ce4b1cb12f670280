//! Shared body of every index fuzz target: open with one parser, then use every entry point,
//! reading through a source that may lie about its length, return short reads or return
//! different bytes on a second read, as an embedder's `RangeSource` (an HTTP source, a peer)
//! can. The first input byte chooses how the source misbehaves; the rest is the file.
//!
//! Also built without libFuzzer (`--no-default-features`): each target is then a replay
//! driver over files and folders given as arguments, and `tests/tests/hostile_fuzz.rs` runs
//! this same body over mutated fixtures on stable Rust.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tandem::index::{Container, TrackIndex};
use tandem::source::{RangeSource, SourceError};
use tandem::MediaTime;

/// A source over `data` that misbehaves as `mode` says:
/// - bits 0-1: the length it claims: the truth, the truth plus 2^40 (a source that claims
///   a terabyte more), half the truth, or the truth plus `(mode >> 4) * 4096`;
/// - bit 2: every third read returns only half of what was asked;
/// - bit 3: every read after the first has one byte flipped.
///
/// Past the real bytes it returns what it has (a short read).
#[derive(Debug)]
pub struct FuzzSource {
    data: Bytes,
    claimed: u64,
    short_reads: bool,
    changing: bool,
    reads: AtomicU64,
}

impl FuzzSource {
    pub fn new(data: Bytes, mode: u8) -> FuzzSource {
        let real = data.len() as u64;
        let claimed = match mode & 3 {
            0 => real,
            1 => real + (1 << 40),
            2 => real / 2,
            _ => real + u64::from(mode >> 4) * 4096,
        };
        FuzzSource {
            data,
            claimed,
            short_reads: mode & 4 != 0,
            changing: mode & 8 != 0,
            reads: AtomicU64::new(0),
        }
    }
}

impl RangeSource for FuzzSource {
    fn len(&self) -> u64 {
        self.claimed
    }

    fn read_range(&self, start: u64, len: u64) -> Result<Bytes, SourceError> {
        tandem::source::check_range(start, len, self.claimed)?;
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        let have = self.data.len() as u64;
        let from = start.min(have) as usize;
        let mut to = start.saturating_add(len).min(have) as usize;
        if self.short_reads && n % 3 == 2 {
            to = from + (to - from) / 2;
        }
        let out = self.data.slice(from..to);
        if !self.changing || n == 0 || out.is_empty() {
            return Ok(out);
        }
        let mut bytes = out.to_vec();
        let at = (n as usize).wrapping_mul(7919) % bytes.len();
        bytes[at] ^= 0xFF;
        Ok(Bytes::from(bytes))
    }
}

/// Opens `data[1..]` with `container`'s parser through a [`FuzzSource`] in mode `data[0]`
/// and uses every entry point. Any input must give an index or a typed error: a panic or a
/// hang is a finding.
pub fn exercise(container: Container, data: &[u8]) {
    let Some((&mode, file)) = data.split_first() else { return };
    let src = FuzzSource::new(Bytes::copy_from_slice(file), mode);
    let Ok(index) = TrackIndex::open_as("fuzz", &src, container) else { return };
    let _ = index.keyframes(&src);
    for ms in [0, 1_000, 60_000] {
        if let Ok(keyframe) = index.seek(&src, MediaTime::from_millis(ms)) {
            if let Ok(batch) = index.samples(&src, keyframe.pos, 64) {
                for sample in batch.samples.iter().take(8) {
                    let _ = index.sample_data(&src, sample);
                }
            }
        }
    }
}

/// Without libFuzzer: runs [`exercise`] on every file named on the command line (folders are
/// read one level deep), as a replay driver for crashes and corpora.
pub fn replay(container: Container) {
    let mut ran = 0usize;
    for arg in std::env::args().skip(1) {
        let path = std::path::PathBuf::from(arg);
        let files: Vec<std::path::PathBuf> = match std::fs::read_dir(&path) {
            Ok(dir) => dir.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => vec![path],
        };
        for file in files {
            if let Ok(data) = std::fs::read(&file) {
                exercise(container, &data);
                ran += 1;
            }
        }
    }
    println!("{container:?}: {ran} inputs, no panic");
}
