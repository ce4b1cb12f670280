//! The fuzz targets' body (`fuzz/fuzz_targets/common.rs`, the same file) run on stable Rust
//! over mutated fixtures: bit flips, byte runs, boundary integers written at random offsets,
//! cut and duplicated stretches, and a random choice of how the source lies (length, short
//! reads, changing bytes). Every input must give an index or a typed error within a bound.
//!
//! In CI it runs a few dozen inputs per parser. For a longer run (what the closing note of
//! issue 7 reports): `TANDEM_FUZZ_SECS=180 cargo test -p tandem-tests --test hostile_fuzz
//! -- --nocapture` runs each parser for that many seconds. An input that panics or hangs is
//! written to the temp folder and named in the failure; replay it with the fuzz target built
//! without libFuzzer (`cargo run --manifest-path fuzz/Cargo.toml --no-default-features --bin
//! index_mp4 -- <file>`).

#[path = "../../fuzz/fuzz_targets/common.rs"]
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tandem::index::Container;
use tandem::manifest::Manifest;
use tandem_tests::fixture_meeting;

const PARSERS: [(&str, Container); 5] = [
    ("index_mp4", Container::Mp4),
    ("index_mkv", Container::Matroska),
    ("index_ogg", Container::Ogg),
    ("index_mp3", Container::Mp3),
    ("index_subtitles", Container::WebVtt),
];

/// Longest one input may take (debug build).
const INPUT_BOUND: Duration = Duration::from_secs(20);

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for meeting in ["meeting", "meeting-webrtc"] {
        let folder = fixture_meeting(meeting);
        let manifest = Manifest::load(&folder).unwrap_or_else(|e| panic!("{meeting}: {e}"));
        for track in &manifest.tracks {
            out.push(std::fs::read(folder.join(track.file())).expect("fixture"));
        }
    }
    out
}

/// One mutated input: the source mode byte, then a mutated copy of a seed.
fn mutate(rng: &mut impl Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.gen_range(0..seeds.len())].clone();
    // Metadata lives near the ends: mutations favour the first and last 64 KiB.
    let pick = |rng: &mut dyn rand::RngCore, len: usize| -> usize {
        if len == 0 {
            return 0;
        }
        let window = len.min(64 * 1024);
        match rng.gen_range(0..3) {
            0 => rng.gen_range(0..window),
            1 => len - 1 - rng.gen_range(0..window),
            _ => rng.gen_range(0..len),
        }
    };
    for _ in 0..rng.gen_range(1..6) {
        let len = data.len();
        if len < 8 {
            break;
        }
        let at = pick(rng, len);
        match rng.gen_range(0..7) {
            0 => data[at] ^= 1 << rng.gen_range(0..8),
            1 => data[at] = [0x00, 0xFF, 0x7F, 0x80][rng.gen_range(0..4)],
            2 => {
                let value: u32 = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0xFFFF][rng.gen_range(0..6)];
                let at = at.min(len - 4);
                data[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            3 => data.truncate(at.max(1)),
            4 => {
                let end = (at + rng.gen_range(1..4096)).min(len);
                let chunk = data[at..end].to_vec();
                let to = pick(rng, len);
                data.splice(to..to, chunk);
            }
            5 => {
                let end = (at + rng.gen_range(1..4096)).min(len);
                data.drain(at..end);
            }
            _ => {
                let end = (at + rng.gen_range(1..256)).min(len);
                let b = rng.gen();
                data[at..end].fill(b);
            }
        }
    }
    let mode: u8 = if rng.gen_bool(0.5) { 0 } else { rng.gen() };
    let mut input = vec![mode];
    input.extend_from_slice(&data);
    input
}

/// Runs the fuzz body on `input`; `Err` with a description when it panics or overruns.
fn run(container: Container, input: Vec<u8>) -> Result<Duration, String> {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let worker = std::thread::spawn(move || {
        common::exercise(container, &input);
        let _ = tx.send(());
    });
    match rx.recv_timeout(INPUT_BOUND) {
        Ok(()) => {
            let _ = worker.join();
            Ok(started.elapsed())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("did not finish within {INPUT_BOUND:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = worker.join();
            Err("panicked".into())
        }
    }
}

#[test]
fn fuzz_bodies_survive_mutated_fixtures_through_lying_sources() {
    let seeds = seeds();
    let budget = std::env::var("TANDEM_FUZZ_SECS").ok().and_then(|s| s.parse::<u64>().ok());
    let mut failures = Vec::new();
    for (seed, (target, container)) in PARSERS.into_iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a_4de3 + seed as u64);
        let started = Instant::now();
        let (mut inputs, mut slowest) = (0usize, Duration::ZERO);
        loop {
            let done = match budget {
                Some(secs) => started.elapsed() >= Duration::from_secs(secs),
                None => inputs >= 200,
            };
            if done {
                break;
            }
            let input = mutate(&mut rng, &seeds);
            match run(container, input.clone()) {
                Ok(took) => slowest = slowest.max(took),
                Err(what) => {
                    let path = std::env::temp_dir().join(format!("tandem-fuzz-{target}-{inputs}.bin"));
                    let _ = std::fs::write(&path, &input);
                    failures.push(format!("{target}: input {inputs} {what}: {}", path.display()));
                }
            }
            inputs += 1;
        }
        eprintln!("{target}: {inputs} inputs in {:?}, slowest {slowest:?}", started.elapsed());
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
