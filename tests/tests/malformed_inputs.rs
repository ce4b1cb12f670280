//! Damaged recordings: every parser, fed mutated and truncated copies of the committed media,
//! answers with an index or a typed error naming the track and the byte offset; never a panic,
//! never a hang.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tandem::index::{IndexError, ParseError, TrackIndex};
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

/// A truncated file's error names the element and a byte inside what is left of the file
/// (or says the format is unknown, for a file cut to a few bytes, or that there are no
/// samples); never a source error, since the in-memory source has every byte it claims.
fn assert_names_a_place(err: &ParseError, cut: u64, label: &str) {
    match err {
        ParseError::Truncated { element, offset, .. }
        | ParseError::Malformed { element, offset, .. }
        | ParseError::TooLarge { element, offset, .. }
        | ParseError::Unsupported { element, offset, .. } => {
            assert!(!element.is_empty(), "{label}: {err}");
            assert!(*offset <= cut, "{label}: offset {offset} past the cut: {err}");
        }
        ParseError::Missing { element, searched_to, .. } => {
            assert!(!element.is_empty(), "{label}: {err}");
            assert!(*searched_to <= cut, "{label}: searched to {searched_to} past the cut: {err}");
        }
        ParseError::UnknownFormat { .. } => assert!(cut < 16, "{label}: {err}"),
        ParseError::NoSamples => {}
        ParseError::Source(e) => panic!("{label}: a source error from an honest source: {e}"),
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
                assert_eq!(&*err.track, "damaged", "{label}");
                assert_names_a_place(&err.source, cut as u64, &format!("{label} cut at {cut}"));
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
