//! The committed meetings, indexed: every track's keyframes match ffprobe, and opening costs
//! only what the container's design requires.

use std::path::Path;

use tandem::index::{Container, TrackIndex};
use tandem::manifest::Manifest;
use tandem::{FileSource, RangeSource};
use tandem_tests::{check_against_ffprobe, fixture_meeting};

const MEETINGS: [&str; 2] = ["meeting", "meeting-webrtc"];

#[test]
fn every_committed_track_matches_ffprobe() {
    for meeting in MEETINGS {
        let folder = fixture_meeting(meeting);
        let manifest = Manifest::load(&folder).unwrap_or_else(|e| panic!("{meeting}: {e}"));
        assert!(manifest.tracks.len() >= 5, "{meeting} has {} tracks", manifest.tracks.len());
        for track in &manifest.tracks {
            let path = folder.join(track.file());
            // The oracle fails on an empty index itself.
            check_against_ffprobe(&path).unwrap_or_else(|e| panic!("{meeting}/{}: {e:#}", track.name));
        }
    }
}

/// Size of the first top-level Matroska element with this 4-byte ID (header included).
fn ebml_element_size(data: &[u8], id: [u8; 4]) -> Option<u64> {
    let at = data.windows(4).rposition(|w| w == id)?;
    let first = *data.get(at + 4)?;
    let len = first.leading_zeros() as usize + 1;
    let mut value = u64::from(first) & (0xFF_u64 >> len);
    for b in data.get(at + 5..at + 4 + len)? {
        value = (value << 8) | u64::from(*b);
    }
    Some(4 + len as u64 + value)
}

/// Size of the top-level MP4 box of this type.
fn mp4_box_size(data: &[u8], kind: &[u8; 4]) -> Option<u64> {
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().ok()?) as usize;
        if &data[at + 4..at + 8] == kind {
            return Some(size as u64);
        }
        if size < 8 {
            return None;
        }
        at += size;
    }
    None
}

fn open(path: &Path) -> (FileSource, TrackIndex) {
    let src = FileSource::open(path).expect("open");
    let index = TrackIndex::open("t", &src).expect("index");
    (src, index)
}

#[test]
fn opening_reads_only_what_the_container_needs() {
    let folder = fixture_meeting("meeting");
    let manifest = Manifest::load(&folder).expect("manifest");
    for track in &manifest.tracks {
        let path = folder.join(track.file());
        let data = std::fs::read(&path).expect("read");
        let (src, index) = open(&path);
        let cost = index.open_cost();
        let name = &track.name;
        match index.info().container {
            Container::Mp4 => {
                // The 4 KiB head, one 16-byte box header at the end of mdat, then moov.
                let moov = mp4_box_size(&data, b"moov").expect("moov");
                assert_eq!(
                    mp4_box_size(&data, b"mdat").map(|m| m < moov),
                    Some(false),
                    "{name}: the fixture must keep moov at the end"
                );
                assert!(cost.reads <= 3, "{name}: {cost:?}");
                assert!(cost.bytes <= 4096 + 16 + moov, "{name}: {cost:?}, moov {moov}");
            }
            Container::Matroska | Container::WebM => {
                // Header, SeekHead, Info and Tracks in the head; then the Cues, fetched with
                // one read of at least 512 bytes (header and body in one round trip).
                let cues = ebml_element_size(&data, [0x1C, 0x53, 0xBB, 0x6B]).expect("Cues");
                assert!(cost.reads <= 3, "{name}: {cost:?}");
                assert!(cost.bytes <= 4096 + cues.max(512) + 64, "{name}: {cost:?}, Cues {cues}");
            }
            Container::Ogg | Container::Mp3 => {
                assert!(cost.reads <= 3, "{name}: {cost:?}");
                assert!(cost.bytes <= 4096 + 64 * 1024 + 4096, "{name}: {cost:?}");
            }
            Container::WebVtt | Container::Srt => assert_eq!(cost.bytes, src.len(), "{name}"),
            Container::FragmentedMp4 => panic!("{name}: the standard meeting has no fragmented MP4"),
        }
        assert!(cost.bytes < src.len() || src.len() < 64 * 1024, "{name}: read the whole file to open");
    }
}
