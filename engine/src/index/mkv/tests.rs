//! Hand-built Matroska files: a tiny EBML writer, then opening, Cues, cluster walking, lacing
//! and damaged inputs.

use bytes::Bytes;

use super::ebml::id;
use crate::index::{Codec, Container, ParseError, ReadPos, TrackIndex};
use crate::source::RangeSource;
use crate::time::MediaTime;

/// How an element's size is written.
#[derive(Clone, Copy, PartialEq)]
enum Size {
    Minimal,
    Eight,
    Unknown,
}

fn id_bytes(element: u32) -> Vec<u8> {
    let bytes = element.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(3);
    bytes[skip..].to_vec()
}

fn vint(value: u64, how: Size) -> Vec<u8> {
    match how {
        Size::Unknown => vec![0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        Size::Eight => {
            let mut v = value.to_be_bytes().to_vec();
            v[0] = 0x01;
            v
        }
        Size::Minimal => {
            let len = (1..=8).find(|&n| value < (1u64 << (7 * n)) - 1).expect("fits");
            let mut v = value.to_be_bytes()[8 - len..].to_vec();
            v[0] |= 0x80 >> (len - 1);
            v
        }
    }
}

fn el_with(element: u32, how: Size, data: &[u8]) -> Vec<u8> {
    let mut out = id_bytes(element);
    out.extend(vint(data.len() as u64, how));
    out.extend_from_slice(data);
    out
}

fn el(element: u32, data: &[u8]) -> Vec<u8> {
    el_with(element, Size::Minimal, data)
}

fn uint(element: u32, value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    el(element, &bytes[skip..])
}

/// An unsigned integer always written in 8 bytes, so positions can be patched in.
fn uint8(element: u32, value: u64) -> Vec<u8> {
    el(element, &value.to_be_bytes())
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn simple_block(track: u8, rel: i16, key: bool, payload: &[u8]) -> Vec<u8> {
    let mut data = vec![0x80 | track];
    data.extend(rel.to_be_bytes());
    data.push(if key { 0x80 } else { 0 });
    data.extend_from_slice(payload);
    el(id::SIMPLE_BLOCK, &data)
}

fn cluster_with(how: Size, timestamp: u64, blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut data = uint(id::TIMESTAMP, timestamp);
    for b in blocks {
        data.extend_from_slice(b);
    }
    el_with(id::CLUSTER, how, &data)
}

fn track_entry(number: u64, kind: u64, codec: &str) -> Vec<u8> {
    let mut parts =
        vec![uint(id::TRACK_NUMBER, number), uint(id::TRACK_TYPE, kind), el(id::CODEC_ID, codec.as_bytes())];
    if kind == 1 {
        parts.push(el(id::VIDEO, &cat(&[uint(id::PIXEL_WIDTH, 320), uint(id::PIXEL_HEIGHT, 240)])));
    } else if kind == 2 {
        parts.push(el(
            id::AUDIO,
            &cat(&[el(id::SAMPLING_FREQUENCY, &48000f32.to_be_bytes()), uint(id::CHANNELS, 2)]),
        ));
        parts.push(el(id::CODEC_PRIVATE, b"OpusHead\x01\x02"));
    }
    el(id::TRACK_ENTRY, &cat(&parts))
}

/// A file description: the pieces the builder lays out and links.
struct Mkv {
    doc_type: &'static str,
    segment: Size,
    seek_head: bool,
    /// Audio track 1, video track 2 (the index must choose the video).
    tracks: Vec<u8>,
    clusters: Vec<Vec<u8>>,
    /// (CueTime, cluster index) for track 2.
    cues: Vec<(u64, usize)>,
    /// Bytes between the head elements and the first cluster (pushes clusters past the head).
    padding: usize,
    /// Info's Duration in ticks; live writers leave it out.
    duration: Option<f64>,
}

impl Mkv {
    fn new(clusters: Vec<Vec<u8>>) -> Mkv {
        Mkv {
            doc_type: "webm",
            segment: Size::Minimal,
            seek_head: true,
            tracks: el(id::TRACKS, &cat(&[track_entry(1, 2, "A_OPUS"), track_entry(2, 1, "V_VP8")])),
            clusters,
            cues: Vec::new(),
            padding: 0,
            duration: Some(5000.0),
        }
    }

    /// Returns the file and the absolute offsets of its clusters.
    fn build(&self) -> (Bytes, Vec<u64>) {
        let ebml = el(id::EBML, &cat(&[uint(0x4286, 1), el(id::DOC_TYPE, self.doc_type.as_bytes())]));
        let mut info = uint(id::TIMESTAMP_SCALE, 1_000_000);
        if let Some(d) = self.duration {
            info.extend(el(id::DURATION, &d.to_be_bytes()));
        }
        let info = el(id::INFO, &info);
        let seek_head = |info_at: u64, tracks_at: u64, cues_at: u64| {
            let seek = |target: u32, at: u64| {
                el(id::SEEK, &cat(&[el(id::SEEK_ID, &id_bytes(target)), uint8(id::SEEK_POSITION, at)]))
            };
            el(
                id::SEEK_HEAD,
                &cat(&[seek(id::INFO, info_at), seek(id::TRACKS, tracks_at), seek(id::CUES, cues_at)]),
            )
        };
        let sh_len = if self.seek_head { seek_head(0, 0, 0).len() } else { 0 };
        let void = if self.padding > 0 { el(id::VOID, &vec![0u8; self.padding]) } else { Vec::new() };
        let info_at = sh_len as u64;
        let tracks_at = info_at + info.len() as u64;
        let mut at = tracks_at + self.tracks.len() as u64 + void.len() as u64;
        let mut cluster_rel = Vec::new();
        for c in &self.clusters {
            cluster_rel.push(at);
            at += c.len() as u64;
        }
        let cues_at = at;
        let mut body = Vec::new();
        if self.seek_head {
            body.extend(seek_head(
                info_at,
                tracks_at,
                if self.cues.is_empty() { u64::MAX / 2 } else { cues_at },
            ));
        }
        body.extend(&info);
        body.extend(&self.tracks);
        body.extend(&void);
        for c in &self.clusters {
            body.extend(c);
        }
        if !self.cues.is_empty() {
            let points: Vec<Vec<u8>> = self
                .cues
                .iter()
                .map(|&(time, i)| {
                    let pos = el(
                        id::CUE_TRACK_POSITIONS,
                        &cat(&[uint(id::CUE_TRACK, 2), uint(id::CUE_CLUSTER_POSITION, cluster_rel[i])]),
                    );
                    el(id::CUE_POINT, &cat(&[uint(id::CUE_TIME, time), pos]))
                })
                .collect();
            body.extend(el(id::CUES, &cat(&points)));
        }
        let segment = el_with(id::SEGMENT, self.segment, &body);
        let segment_data = (ebml.len() + segment.len() - body.len()) as u64;
        let file = cat(&[ebml, segment]);
        (Bytes::from(file), cluster_rel.iter().map(|r| r + segment_data).collect())
    }
}

/// Three clusters of video (track 2) with audio (track 1) interleaved; keyframes at 0 and 80.
fn three_clusters(how: Size) -> Vec<Vec<u8>> {
    vec![
        cluster_with(
            how,
            0,
            &[
                simple_block(2, 0, true, b"KEY0"),
                simple_block(1, 0, true, b"a0"),
                simple_block(2, 40, false, b"p40"),
            ],
        ),
        cluster_with(how, 80, &[simple_block(2, 0, true, b"KEY80"), simple_block(2, 40, false, b"p120")]),
        cluster_with(how, 160, &[simple_block(2, 0, false, b"p160"), simple_block(1, 5, true, b"a165")]),
    ]
}

fn open(file: &Bytes) -> Result<TrackIndex, ParseError> {
    TrackIndex::open("t", file).map_err(|e| e.source)
}

fn ms(v: i64) -> MediaTime {
    MediaTime::from_millis(v)
}

#[test]
fn doc_type_is_read_from_the_ebml_header() {
    let (webm, _) = Mkv::new(three_clusters(Size::Minimal)).build();
    assert_eq!(super::doc_type(&webm), Container::WebM);
    let mut mkv = Mkv::new(three_clusters(Size::Minimal));
    mkv.doc_type = "matroska";
    let (file, _) = mkv.build();
    assert_eq!(super::doc_type(&file), Container::Matroska);
    let index = open(&file).expect("opens");
    assert_eq!(index.info().container, Container::Matroska);
    mkv.doc_type = "foo";
    let (file, _) = mkv.build();
    assert!(matches!(open(&file), Err(ParseError::Unsupported { element: "EBML header", .. })));
}

#[test]
fn opens_chooses_video_and_walks_clusters_without_cues() {
    for how in [Size::Minimal, Size::Eight, Size::Unknown] {
        let mut mkv = Mkv::new(three_clusters(how));
        mkv.segment = if how == Size::Unknown { Size::Unknown } else { how };
        let (file, clusters) = mkv.build();
        let index = open(&file).expect("opens");
        let info = index.info();
        assert_eq!(info.codec, Codec::Vp8);
        assert_eq!(info.timescale, 1000);
        assert_eq!(info.duration, Some(MediaTime::from_secs(5)));
        assert_eq!(info.video.map(|v| (v.width, v.height)), Some((320, 240)));
        let keyframes = index.keyframes(&file).expect("walks");
        assert_eq!(keyframes.iter().map(|k| k.pts).collect::<Vec<_>>(), vec![ms(0), ms(80)]);
        assert_eq!(keyframes[0].offset, clusters[0]);
        assert_eq!(keyframes[0].size, clusters[1] - clusters[0], "size {how:?}", how = how as u8);
        assert_eq!(keyframes[1].offset, clusters[1]);
        assert_eq!(index.seek(&file, ms(79)).expect("seek").pts, ms(0));
        assert_eq!(index.seek(&file, ms(500)).expect("seek").pts, ms(80));

        let batch = index.samples(&file, keyframes[0].pos, 100).expect("samples");
        let got: Vec<(i64, bool, Bytes)> = batch
            .samples
            .iter()
            .map(|s| (s.pts.as_millis(), s.keyframe, index.sample_data(&file, s).expect("data")))
            .collect();
        let want: Vec<(i64, bool, Bytes)> = [
            (0, true, "KEY0"),
            (40, false, "p40"),
            (80, true, "KEY80"),
            (120, false, "p120"),
            (160, false, "p160"),
        ]
        .iter()
        .map(|&(t, k, d)| (t, k, Bytes::from_static(d.as_bytes())))
        .collect();
        assert_eq!(got, want);
        assert_eq!(batch.next, None);
    }
}

#[test]
fn samples_resume_mid_cluster() {
    let (file, _) = Mkv::new(three_clusters(Size::Unknown)).build();
    let index = open(&file).expect("opens");
    let start = index.keyframes(&file).expect("walks")[0].pos;
    let mut pos = Some(start);
    let mut times = Vec::new();
    while let Some(at) = pos {
        let batch = index.samples(&file, at, 1).expect("samples");
        assert!(batch.samples.len() <= 1);
        times.extend(batch.samples.iter().map(|s| s.pts.as_millis()));
        pos = batch.next;
    }
    assert_eq!(times, vec![0, 40, 80, 120, 160]);
    assert_eq!(index.samples(&file, start, 0).expect("empty").next, Some(start));
}

#[test]
fn cues_give_keyframes_and_seek_without_reading_clusters() {
    let mut clusters = three_clusters(Size::Minimal);
    // A big cluster so the Cues lie past the head.
    clusters.push(cluster_with(Size::Minimal, 240, &[simple_block(2, 0, true, &vec![7u8; 9000])]));
    let mut mkv = Mkv::new(clusters);
    mkv.cues = vec![(0, 0), (80, 1), (240, 3)];
    let (file, clusters) = mkv.build();
    let index = open(&file).expect("opens");
    let cost = index.open_cost();
    assert_eq!(cost.reads, 2, "head, then Cues: {cost:?}");
    assert!(cost.bytes <= 4096 + 512, "{cost:?}");
    let keyframes = index.keyframes(&file).expect("cues");
    assert_eq!(keyframes.iter().map(|k| k.pts).collect::<Vec<_>>(), vec![ms(0), ms(80), ms(240)]);
    assert_eq!(
        keyframes.iter().map(|k| k.offset).collect::<Vec<_>>(),
        vec![clusters[0], clusters[1], clusters[3]]
    );
    assert_eq!(keyframes[1].size, clusters[3] - clusters[1], "to the next cued cluster");
    // seek uses the cues: a source that fails every read still answers.
    let empty = Bytes::new();
    assert_eq!(index.seek(&empty, ms(239)).expect("seek").pts, ms(80));
    assert_eq!(index.seek(&empty, ms(-5)).expect("seek").pts, ms(0));
    assert_eq!(index.seek(&empty, ms(10_000)).expect("seek").pts, ms(240));
    let batch = index.samples(&file, keyframes[2].pos, 10).expect("samples");
    assert_eq!(batch.samples.len(), 1);
    assert_eq!(batch.samples[0].size, 9000);
}

#[test]
fn lacing_xiph_fixed_and_ebml() {
    // Video track 2: one block each, three frames of 3, 5 and 2 bytes (fixed: 4 each).
    let laced = |flags: u8, lace_head: &[u8], frames: &[&[u8]]| {
        let mut data = vec![0x82, 0, 0, 0x80 | flags, (frames.len() - 1) as u8];
        data.extend_from_slice(lace_head);
        for f in frames {
            data.extend_from_slice(f);
        }
        el(id::SIMPLE_BLOCK, &data)
    };
    let xiph = laced(0x02, &[3, 5], &[b"aaa", b"bbbbb", b"cc"]);
    let fixed = laced(0x04, &[], &[b"dddd", b"eeee", b"ffff"]);
    // EBML: first size 3 (0x83), then difference +2 as a signed 1-byte vint (0x80 | (2 + 63)).
    let ebml_laced = laced(0x06, &[0x83, 0x80 | 65], &[b"ggg", b"hhhhh", b"ii"]);
    // A 300-byte Xiph frame size needs 255 + 45.
    let big = vec![b'j'; 300];
    let xiph_big = laced(0x02, &[255, 45], &[&big, b"k"]);
    let mut blocks = vec![xiph, fixed, ebml_laced, xiph_big];
    // DefaultDuration spaces laced frames.
    let mut mkv = Mkv::new(vec![cluster_with(Size::Minimal, 0, &blocks)]);
    mkv.tracks = el(
        id::TRACKS,
        &el(
            id::TRACK_ENTRY,
            &cat(&[
                uint(id::TRACK_NUMBER, 2),
                uint(id::TRACK_TYPE, 1),
                el(id::CODEC_ID, b"V_VP8"),
                uint(id::DEFAULT_DURATION, 10_000_000),
            ]),
        ),
    );
    let (file, _) = mkv.build();
    let index = open(&file).expect("opens");
    let first = index.keyframes(&file).expect("walks")[0];
    let batch = index.samples(&file, first.pos, 100).expect("samples");
    let data: Vec<Bytes> = batch.samples.iter().map(|s| index.sample_data(&file, s).expect("data")).collect();
    let want: Vec<&[u8]> =
        vec![b"aaa", b"bbbbb", b"cc", b"dddd", b"eeee", b"ffff", b"ggg", b"hhhhh", b"ii", &big, b"k"];
    assert_eq!(data.iter().map(|d| &d[..]).collect::<Vec<_>>(), want);
    assert_eq!(batch.samples.iter().take(3).map(|s| s.pts.as_millis()).collect::<Vec<_>>(), vec![0, 10, 20]);
    assert!(batch.samples.iter().all(|s| s.duration == ms(10) && s.keyframe));

    // Resume inside a laced block.
    let part = index.samples(&file, first.pos, 4).expect("samples");
    let rest = index.samples(&file, part.next.expect("more"), 100).expect("samples");
    assert_eq!(part.samples.len() + rest.samples.len(), 11);
    assert_eq!(rest.samples[0], batch.samples[4]);

    // Sizes that overrun the block are an error naming the SimpleBlock.
    blocks = vec![laced(0x02, &[200, 5], &[b"aaa", b"bbbbb", b"cc"])];
    mkv.clusters = vec![cluster_with(Size::Minimal, 0, &blocks)];
    let (file, _) = mkv.build();
    let index = open(&file).expect("opens");
    let first = index.keyframes(&file).expect("walks")[0];
    assert!(matches!(
        index.samples(&file, first.pos, 10).map_err(|e| e.source),
        Err(ParseError::Malformed { element: "SimpleBlock", .. })
    ));
}

#[test]
fn block_groups_use_reference_block_and_duration() {
    let block = |rel: i16, payload: &[u8]| {
        let mut data = vec![0x82];
        data.extend(rel.to_be_bytes());
        data.push(0);
        data.extend_from_slice(payload);
        el(id::BLOCK, &data)
    };
    // VP8 frame tags: bit 0 of the first byte is 0 for a key frame.
    let key = el(id::BLOCK_GROUP, &cat(&[block(0, b"\x10K"), uint(id::BLOCK_DURATION, 33)]));
    let delta = el(id::BLOCK_GROUP, &cat(&[block(33, b"\x11P"), el(id::REFERENCE_BLOCK, &[0xDF])]));
    // GStreamer's muxer writes a delta frame followed by a pause as a BlockGroup with a
    // BlockDuration and no ReferenceBlock: the VP8 frame tag says it is no keyframe.
    let paused = el(id::BLOCK_GROUP, &cat(&[block(66, b"\x11P"), uint(id::BLOCK_DURATION, 2000)]));
    let (file, _) = Mkv::new(vec![cluster_with(Size::Minimal, 1000, &[key, delta, paused])]).build();
    let index = open(&file).expect("opens");
    let keyframes = index.keyframes(&file).expect("walks");
    assert_eq!(keyframes.len(), 1);
    let batch = index.samples(&file, keyframes[0].pos, 10).expect("samples");
    let got: Vec<(i64, bool, i64)> =
        batch.samples.iter().map(|s| (s.pts.as_millis(), s.keyframe, s.duration.as_millis())).collect();
    assert_eq!(got, vec![(1000, true, 33), (1033, false, 0), (1066, false, 2000)]);
}

#[test]
fn damaged_inputs_give_typed_errors_or_index_what_is_there() {
    let (good, clusters) = Mkv::new(three_clusters(Size::Minimal)).build();

    // Truncated inside the EBML header.
    let cut = good.slice(..6);
    assert!(matches!(open(&cut), Err(ParseError::Truncated { element: "EBML header", .. })));

    // Cut inside the second cluster: the first keyframe is still there.
    let cut = good.slice(..(clusters[1] + 12) as usize);
    let index = open(&cut).expect("opens");
    assert_eq!(index.keyframes(&cut).expect("walks").iter().map(|k| k.pts).collect::<Vec<_>>(), vec![ms(0)]);

    // Tracks claiming an absurd 8-byte size.
    let mut mkv = Mkv::new(three_clusters(Size::Minimal));
    let mut tracks = id_bytes(id::TRACKS);
    tracks.extend(vint(0x00FF_FFFF_FFFF_FFF0, Size::Eight));
    tracks.extend(track_entry(2, 1, "V_VP8"));
    mkv.tracks = tracks;
    mkv.seek_head = false;
    let (file, _) = mkv.build();
    assert!(
        matches!(open(&file), Err(ParseError::TooLarge { element: "Tracks", .. })),
        "{:?}",
        open(&file).err()
    );

    // No Tracks at all.
    let mut mkv = Mkv::new(three_clusters(Size::Minimal));
    mkv.tracks = Vec::new();
    mkv.seek_head = false;
    let (file, _) = mkv.build();
    assert!(matches!(open(&file), Err(ParseError::Missing { element: "Tracks", .. })));

    // Garbage between clusters: resync on the Cluster ID.
    let mut clusters = three_clusters(Size::Minimal);
    clusters.insert(1, vec![0x00, 0x13, 0x37, 0xFF, 0x1F, 0x43, 0x00]);
    let (file, _) = Mkv::new(clusters).build();
    let index = open(&file).expect("opens");
    assert_eq!(index.keyframes(&file).expect("resyncs").len(), 2);

    // More than RESYNC_LIMIT of garbage before more data: a typed error.
    let mut clusters = three_clusters(Size::Minimal);
    clusters.insert(1, vec![0u8; super::RESYNC_LIMIT as usize + 10]);
    let (file, _) = Mkv::new(clusters).build();
    let index = open(&file).expect("opens");
    assert!(matches!(
        index.keyframes(&file).map_err(|e| e.source),
        Err(ParseError::Malformed { element: "Cluster", .. })
    ));

    // Zero-length clusters are skipped.
    let mut clusters = three_clusters(Size::Minimal);
    clusters.insert(1, el(id::CLUSTER, &[]));
    let (file, _) = Mkv::new(clusters).build();
    let index = open(&file).expect("opens");
    assert_eq!(index.keyframes(&file).expect("walks").len(), 2);

    // Cues with a child that runs past its parent.
    let mut mkv = Mkv::new(three_clusters(Size::Minimal));
    mkv.cues = vec![(0, 0)];
    let (file, _) = mkv.build();
    let mut bytes = file.to_vec();
    let at = bytes.windows(4).rposition(|w| w == [0x1C, 0x53, 0xBB, 0x6B]).expect("cues");
    bytes[at + 5] = 0xBB;
    bytes[at + 6] = 0xFE; // CuePoint size 126, past the Cues.
    let file = Bytes::from(bytes);
    assert!(
        matches!(open(&file), Err(ParseError::Malformed { element: "Cues", .. })),
        "{:?}",
        open(&file).err()
    );

    // samples() at a position that is no cluster.
    let (file, _) = Mkv::new(three_clusters(Size::Minimal)).build();
    let index = open(&file).expect("opens");
    assert!(matches!(
        index.samples(&file, ReadPos { offset: 3, sample: 0 }, 4).map_err(|e| e.source),
        Err(ParseError::Malformed { element: "Cluster", offset: 3, .. })
    ));
    assert!(index.samples(&file, ReadPos { offset: u64::MAX, sample: u64::MAX }, 4).is_err());
}

#[test]
fn seek_head_loops_and_self_references_terminate() {
    // SeekHead whose entries point at itself (SeekPosition 0) and at a SeekHead that points
    // back: opening follows each once and ignores the rest.
    let seek = |target: u32, at: u64| {
        el(id::SEEK, &cat(&[el(id::SEEK_ID, &id_bytes(target)), uint8(id::SEEK_POSITION, at)]))
    };
    let first =
        el(id::SEEK_HEAD, &cat(&[seek(id::SEEK_HEAD, 0), seek(id::SEEK_HEAD, 1000), seek(id::CUES, 5000)]));
    let info = el(id::INFO, &uint(id::TIMESTAMP_SCALE, 1_000_000));
    let tracks = el(id::TRACKS, &track_entry(2, 1, "V_VP8"));
    // Pad so a second SeekHead sits at segment offset 1000, pointing back to 0 and to itself.
    let before = first.len() + info.len() + tracks.len();
    let pad = el(id::VOID, &vec![0u8; 1000 - before - 3]);
    assert_eq!(before + pad.len(), 1000);
    let second = el(id::SEEK_HEAD, &cat(&[seek(id::SEEK_HEAD, 0), seek(id::SEEK_HEAD, 1000)]));
    let cluster = cluster_with(Size::Minimal, 0, &[simple_block(2, 0, true, b"K")]);
    let body = cat(&[first, info, tracks, pad, second, cluster]);
    let file = Bytes::from(cat(&[
        el(id::EBML, &el(id::DOC_TYPE, b"webm")),
        el_with(id::SEGMENT, Size::Unknown, &body),
    ]));
    let index = open(&file).expect("opens");
    assert_eq!(index.keyframes(&file).expect("walks").len(), 1);
}

#[test]
fn audio_codec_delay_shifts_like_ffmpeg() {
    let mut mkv = Mkv::new(vec![cluster_with(
        Size::Minimal,
        0,
        &[simple_block(1, 0, true, b"a"), simple_block(1, 20, true, b"b")],
    )]);
    mkv.tracks = el(
        id::TRACKS,
        &el(
            id::TRACK_ENTRY,
            &cat(&[
                uint(id::TRACK_NUMBER, 1),
                uint(id::TRACK_TYPE, 2),
                el(id::CODEC_ID, b"A_OPUS"),
                uint(id::CODEC_DELAY, 6_500_000),
            ]),
        ),
    );
    let (file, _) = mkv.build();
    let index = open(&file).expect("opens");
    assert_eq!(index.info().codec, Codec::Opus);
    let keyframes = index.keyframes(&file).expect("walks");
    assert_eq!(keyframes.len(), 1, "audio: one keyframe per cluster");
    assert_eq!(keyframes[0].pts, ms(-7));
    let batch = index.samples(&file, keyframes[0].pos, 10).expect("samples");
    assert_eq!(batch.samples.iter().map(|s| s.pts.as_millis()).collect::<Vec<_>>(), vec![-7, 13]);
}

/// Random damage to a valid file never panics or hangs.
#[test]
fn mutated_files_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut mkv = Mkv::new(three_clusters(Size::Unknown));
    mkv.cues = vec![(0, 0), (80, 1)];
    let (file, _) = mkv.build();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..3000 {
        let mut bytes = file.to_vec();
        for _ in 0..rng.gen_range(1..6) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        if rng.gen_bool(0.2) {
            bytes.truncate(rng.gen_range(0..bytes.len()));
        }
        let src = Bytes::from(bytes);
        if let Ok(index) = TrackIndex::open("fuzz", &src) {
            if let Ok(keyframes) = index.keyframes(&src) {
                for k in keyframes.iter().take(3) {
                    let _ = index.samples(&src, k.pos, 16);
                }
            }
            let _ = index.seek(&src, ms(100));
            let _ = index.samples(
                &src,
                ReadPos { offset: rng.gen_range(0..RangeSource::len(&src).max(1)), sample: rng.gen() },
                8,
            );
        }
    }
}

/// A live-style recording: `n` one-second clusters of 25 video frames (track 2, 40 ms
/// DefaultDuration) with an audio block (track 1) every 200 ms, no Cues, no Duration.
/// Video keyframes are sparse: at the start of every `gop`-th cluster, plus one mid-cluster
/// keyframe every 23 clusters (as a keyframe request would give).
fn live_file(n: u64, gop: u64, payload: usize, how: Size) -> (Bytes, Vec<u64>) {
    let clusters = (0..n)
        .map(|i| {
            let mut blocks = Vec::new();
            for f in 0..25i16 {
                let key = (f == 0 && i % gop == 0) || (f == 12 && i % 23 == 5);
                let mut data = vec![(i % 251) as u8; payload];
                // Payload bytes that look like a Cluster ID, to be rejected by validation.
                data[..4].copy_from_slice(&[0x1F, 0x43, 0xB6, 0x75]);
                blocks.push(simple_block(2, f * 40, key, &data));
                if f % 5 == 0 {
                    blocks.push(simple_block(1, f * 40 + 3, true, b"opus"));
                }
            }
            cluster_with(how, i * 1000, &blocks)
        })
        .collect();
    let mut mkv = Mkv::new(clusters);
    mkv.segment = if how == Size::Unknown { Size::Unknown } else { Size::Minimal };
    mkv.cues = Vec::new();
    mkv.duration = None;
    let video = el(
        id::TRACK_ENTRY,
        &cat(&[
            uint(id::TRACK_NUMBER, 2),
            uint(id::TRACK_TYPE, 1),
            el(id::CODEC_ID, b"V_VP8"),
            uint(id::DEFAULT_DURATION, 40_000_000),
        ]),
    );
    mkv.tracks = el(id::TRACKS, &cat(&[track_entry(1, 2, "A_OPUS"), video]));
    mkv.build()
}

/// The forward walk's answer: the greatest keyframe at or before t, else the first.
fn expected(keyframes: &[crate::index::Keyframe], t: MediaTime) -> crate::index::Keyframe {
    *keyframes.iter().rev().find(|k| k.pts <= t).unwrap_or(&keyframes[0])
}

#[test]
fn bisection_seek_equals_the_forward_walk_and_reads_little() {
    use crate::source::CountingSource;
    for how in [Size::Minimal, Size::Unknown] {
        let (file, clusters) = live_file(300, 17, 400, how);
        let counted = CountingSource::new(file.clone());
        let index = open(&file).expect("opens");
        assert_eq!(index.open_cost().reads, 2, "head and tail");
        // The last block starts at 299 s + 960 ms and lasts 40 ms.
        assert_eq!(index.info().duration, Some(ms(300_000)));
        let keyframes = index.keyframes(&counted).expect("walks");
        let walk = counted.cost();
        assert_eq!(keyframes.len(), 18 + 13);
        assert_eq!(keyframes[0].offset, clusters[0]);
        let mut worst = crate::source::ReadCost::default();
        for t in
            (-2000..303_000).step_by(777).chain([0, 1, 5_479, 5_480, 5_481, 299_999, i64::MAX / 2_000_000])
        {
            let t = ms(t);
            let counted = CountingSource::new(file.clone());
            let got = index.seek(&counted, t).expect("seek");
            assert_eq!(got, expected(&keyframes, t), "seek({t})");
            let cost = counted.cost();
            worst.reads = worst.reads.max(cost.reads);
            worst.bytes = worst.bytes.max(cost.bytes);
        }
        // Worst case: 17 s of stepping back through 4 KiB-frame clusters (~200 KiB) plus
        // bisection; the forward walk reads the whole 3 MiB.
        eprintln!("seek worst {worst:?}, forward walk {walk:?}");
        assert!(walk.bytes > 3_000_000, "{walk:?}");
        assert!(worst.bytes * 4 < walk.bytes, "seek {worst:?}, forward walk {walk:?}");
        assert!(worst.reads * 3 < walk.reads, "seek {worst:?}, forward walk {walk:?}");
    }
}

#[test]
fn bisection_handles_a_file_cut_short_and_huge_clusters() {
    // Cut mid-cluster: the answer still equals the forward walk over what is there.
    let (file, clusters) = live_file(120, 10, 400, Size::Unknown);
    let cut = file.slice(..(clusters[100] + 5000) as usize);
    let index = open(&cut).expect("opens");
    let duration = index.info().duration.expect("from the tail");
    assert!(duration > ms(100_000) && duration < ms(101_000), "{duration}");
    let keyframes = index.keyframes(&cut).expect("walks");
    for t in (0..130_000).step_by(1_300) {
        assert_eq!(index.seek(&cut, ms(t)).expect("seek"), expected(&keyframes, ms(t)), "seek({t})");
    }
    // Clusters larger than any scan: bisection gives up and the result is still right.
    let (file, _) = live_file(6, 2, 60_000, Size::Minimal);
    let index = open(&file).expect("opens");
    let keyframes = index.keyframes(&file).expect("walks");
    for t in (0..7_000).step_by(250) {
        assert_eq!(index.seek(&file, ms(t)).expect("seek"), expected(&keyframes, ms(t)), "seek({t})");
    }
}

#[test]
fn tail_without_blocks_of_the_track_leaves_duration_from_info_or_none() {
    // The Duration element wins when present.
    let (file, _) = Mkv::new(three_clusters(Size::Minimal)).build();
    assert_eq!(open(&file).expect("opens").info().duration, Some(ms(5000)));
    // No Duration, tiny file: the tail is in the head and costs no read. The last cluster
    // (160) holds p160 with no duration known: the end is its start.
    let mut mkv = Mkv::new(three_clusters(Size::Unknown));
    mkv.duration = None;
    let (file, _) = mkv.build();
    let index = open(&file).expect("opens");
    assert_eq!(index.open_cost().reads, 1);
    assert_eq!(index.info().duration, Some(ms(160)));
    // A tail of garbage where the last cluster was: no error, and the duration comes from
    // the last cluster the tail still holds.
    let mut bytes = file.to_vec();
    let n = bytes.len();
    let last = bytes.windows(4).rposition(|w| w == [0x1F, 0x43, 0xB6, 0x75]).expect("cluster");
    for b in &mut bytes[last..n] {
        *b = 0x42;
    }
    let index = open(&Bytes::from(bytes)).expect("opens");
    assert_eq!(index.info().duration, Some(ms(120)), "the previous cluster's last block, p120");
}

/// Timestamps going backwards and random damage: seek ends, without panicking.
#[test]
fn bisection_terminates_on_garbage() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Cluster timestamps in random order.
    let clusters: Vec<Vec<u8>> = (0..200u64)
        .map(|i| {
            let ts = rng.gen_range(0..200_000);
            cluster_with(Size::Unknown, ts, &[simple_block(2, 0, i % 7 == 0, &[9u8; 3000])])
        })
        .collect();
    let mut mkv = Mkv::new(clusters);
    mkv.duration = None;
    let (file, _) = mkv.build();
    let index = open(&file).expect("opens");
    for t in (0..200_000).step_by(3_333) {
        let _ = index.seek(&file, ms(t));
    }
    // Random damage to a long file.
    let (file, _) = live_file(60, 7, 1500, Size::Unknown);
    for _ in 0..60 {
        let mut bytes = file.to_vec();
        for _ in 0..rng.gen_range(1..40) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        let src = Bytes::from(bytes);
        if let Ok(index) = TrackIndex::open("fuzz", &src) {
            for _ in 0..5 {
                let _ = index.seek(&src, ms(rng.gen_range(-1000..70_000)));
            }
        }
    }
}

#[test]
fn the_block_after_skipped_bytes_is_marked_and_time_jumps_are_not() {
    let marks = |file: &Bytes| -> Vec<(i64, bool)> {
        let index = open(file).expect("opens");
        let first = index.keyframes(file).expect("walks")[0].pos;
        let batch = index.samples(file, first, 20).expect("samples");
        batch.samples.iter().map(|s| (s.pts.as_millis(), s.follows_damage)).collect()
    };
    // Garbage between the second and third clusters: the walk resyncs, and the third
    // cluster's first block of the track (a delta frame) follows damage.
    let mut clusters = three_clusters(Size::Minimal);
    clusters.insert(2, vec![0x00, 0x13, 0x37, 0xFF, 0x1F, 0x43, 0x00]);
    let (file, _) = Mkv::new(clusters).build();
    assert_eq!(marks(&file), vec![(0, false), (40, false), (80, false), (120, false), (160, true)]);
    // A block whose size runs past its (sized) cluster: what followed it in the cluster is
    // lost, so the next cluster's first block follows damage.
    let mut clusters = three_clusters(Size::Minimal);
    let broken = simple_block(2, 40, false, b"p120");
    let mut second = cluster_with(Size::Minimal, 80, &[simple_block(2, 0, true, b"KEY80"), broken]);
    let n = second.len();
    second[n - 9] = 0x8F; // the last SimpleBlock's size: 15 bytes, past the cluster's end
    clusters[1] = second;
    let (file, _) = Mkv::new(clusters).build();
    assert_eq!(marks(&file), vec![(0, false), (40, false), (80, false), (160, true)]);
    // Delta frames seconds apart inside one GOP (a recorder that paused): no damage.
    let clusters = vec![
        cluster_with(
            Size::Minimal,
            0,
            &[simple_block(2, 0, true, b"KEY0"), simple_block(2, 40, false, b"p40")],
        ),
        cluster_with(Size::Minimal, 9000, &[simple_block(2, 0, false, b"p9000")]),
        cluster_with(Size::Minimal, 30_000, &[simple_block(2, 0, false, b"p30000")]),
    ];
    let (file, _) = Mkv::new(clusters).build();
    assert_eq!(marks(&file), vec![(0, false), (40, false), (9000, false), (30_000, false)]);
}

#[test]
fn vp8_and_vp9_frame_headers_tell_keyframes() {
    assert!(super::vp8_keyframe(0x10) && !super::vp8_keyframe(0x11));
    // VP9: frame marker 0b10, profile 0: show_existing_frame at bit 3, frame_type at bit 2.
    assert!(super::vp9_keyframe(0x82));
    assert!(!super::vp9_keyframe(0x86), "an inter frame");
    assert!(!super::vp9_keyframe(0x88), "show_existing_frame");
    // Profile 3 has a reserved bit first: frame_type at bit 1.
    assert!(super::vp9_keyframe(0xB0) && !super::vp9_keyframe(0xB2));
    assert!(!super::vp9_keyframe(0x02), "no frame marker");
}
