//! Damaged recordings: every parser, fed mutated and truncated copies of the committed media,
//! answers with an index or a typed error naming the track and the byte offset; never a panic,
//! never a hang.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tandem::index::{IndexError, TrackIndex};
use tandem::manifest::Manifest;
use tandem::MediaTime;
use tandem_tests::fixture_meeting;

/// Opens and exercises an index on `data` on another thread, failing the test when it panics
/// or takes longer than a generous bound.
fn exercise(label: &str, data: Bytes) -> Result<(), IndexError> {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let result = (|| {
            let index = TrackIndex::open("damaged", &data)?;
            let _ = index.keyframes(&data)?;
            for ms in [0, 2_500, 30_000] {
                let keyframe = index.seek(&data, MediaTime::from_millis(ms))?;
                let batch = index.samples(&data, keyframe.pos, 32)?;
                for sample in batch.samples.iter().take(4) {
                    index.sample_data(&data, sample)?;
                }
            }
            Ok(())
        })();
        let _ = tx.send(result);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{label}: parser did not finish within 20 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = worker.join();
            panic!("{label}: parser panicked")
        }
    }
}

fn fixture_files() -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    for meeting in ["meeting", "meeting-webrtc"] {
        let folder = fixture_meeting(meeting);
        let manifest = Manifest::load(&folder).unwrap_or_else(|e| panic!("{meeting}: {e}"));
        for track in &manifest.tracks {
            let data = std::fs::read(folder.join(track.file())).expect("read fixture");
            out.push((format!("{meeting}/{}", track.name), Bytes::from(data)));
        }
    }
    out
}

#[test]
fn truncated_recordings_fail_cleanly_with_offsets() {
    for (label, data) in fixture_files() {
        for fraction in [0.0, 0.01, 0.1, 0.5, 0.9, 0.999] {
            let cut = (data.len() as f64 * fraction) as usize;
            let truncated = data.slice(..cut);
            if let Err(err) = exercise(&format!("{label} cut at {cut}"), truncated) {
                let text = err.to_string();
                assert!(text.starts_with("track damaged: "), "{label}: {text}");
                assert!(
                    text.contains("byte") || text.contains("first bytes") || text.contains("no samples"),
                    "{label}: error without a place: {text}"
                );
            }
        }
    }
}

#[test]
fn mutated_recordings_never_panic_or_hang() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x007a_4de3);
    for (label, data) in fixture_files() {
        // Mutations concentrate on the first and last 64 KiB, where the metadata lives.
        for round in 0..40 {
            let mut bytes = data.to_vec();
            let len = bytes.len();
            for _ in 0..rng.gen_range(1..8) {
                let near_end = rng.gen_bool(0.5);
                let window = len.min(64 * 1024);
                let at = if near_end { len - 1 - rng.gen_range(0..window) } else { rng.gen_range(0..window) };
                match rng.gen_range(0..3) {
                    0 => bytes[at] ^= 1 << rng.gen_range(0..8),
                    1 => bytes[at] = 0xFF,
                    _ => bytes[at] = 0x00,
                }
            }
            let _ = exercise(&format!("{label} mutation {round}"), Bytes::from(bytes));
        }
    }
}
