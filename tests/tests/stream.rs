//! The stream layer on its own, no GStreamer: packets against ffprobe's packet list placed on
//! the meeting timeline by the manifest's segments, seeks, dropped subscriptions, a consumer
//! that stops reading, and a paused one. Reads are counted at the source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tandem::manifest::{Manifest, TrackKind};
use tandem::stream::{Item, Meeting, MeetingStream, Packet, StreamOptions, Subscription};
use tandem::MediaTime;
use tandem_tests::meetings::{paused_meeting, split_meeting};
use tandem_tests::{ffmpeg, ffprobe_packets, fixture_meeting};

mod net_common;

/// Every item of a subscription until its end (bounded in time).
fn drain(subscription: &Subscription) -> Result<Vec<Packet>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut packets = Vec::new();
    loop {
        ensure!(Instant::now() < deadline, "{}: no end within 60 s", subscription.track().name);
        match subscription.recv_timeout(Duration::from_secs(10)).map(|i| i.item) {
            Ok(Item::Packet(p)) => packets.push(p),
            Ok(Item::End) => return Ok(packets),
            Ok(Item::Failed { message }) => bail!("{}: {message}", subscription.track().name),
            Ok(_) => {}
            Err(e) => bail!("{}: {e}", subscription.track().name),
        }
    }
}

/// ffprobe's packets of a track's files placed on the meeting timeline by the manifest's
/// segments, each file by the segments naming it: (meeting ms, size, keyframe), in
/// presentation order.
fn expected_packets(
    dir: &std::path::Path,
    track: &tandem::manifest::ManifestTrack,
) -> Result<Vec<(f64, u64, bool)>> {
    let mut out = Vec::new();
    for file in track.files() {
        let segments: Vec<_> = track.segments.iter().filter(|s| s.file == file).collect();
        for p in ffprobe_packets(&dir.join(file))? {
            let Some(media) = p.pts_ms else { continue };
            for (i, s) in segments.iter().enumerate() {
                let (start, media_start) = (s.start_ms as f64, s.media_start_ms as f64);
                let len = s.end_ms.map(|e| e as f64 - start);
                // A file's first segment also takes what comes before its media start (Opus
                // pre-skip).
                if (media >= media_start || i == 0) && len.is_none_or(|l| media < media_start + l) {
                    out.push((media - media_start + start, p.size, p.keyframe));
                    break;
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// Every audio and video packet of every track of the meeting in `dir`, read through
/// `meeting` from zero, against ffprobe.
fn packets_match_ffprobe(dir: &std::path::Path, meeting: Meeting) -> Result<usize> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let manifest = Manifest::load(dir)?;
    let stream = MeetingStream::open(meeting, StreamOptions::default());
    let mut compared = 0;
    for track in manifest.tracks.iter().filter(|t| t.kind != TrackKind::Captions) {
        // From zero (a track subscribed later would join at the cursor).
        stream.seek(MediaTime::ZERO);
        let subscription = stream.subscribe(&track.name)?;
        let spans = subscription.track().timeline.clone();
        // Ours, less what a span decodes only to show the next (frames past its end).
        let mut ours: Vec<(f64, u64, bool)> = drain(&subscription)?
            .into_iter()
            .filter(|p| {
                let end = spans.span(p.span).and_then(|s| s.end);
                !(p.decode_only && end.is_some_and(|e| p.pts >= e))
            })
            .map(|p| (p.pts.as_nanos() as f64 / 1e6, p.data.len() as u64, p.keyframe))
            .collect();
        ours.sort_by(|a, b| a.0.total_cmp(&b.0));
        let theirs = expected_packets(dir, track)?;
        ensure!(
            ours.len() == theirs.len(),
            "{name}/{}: {} packets, ffprobe {} (first ours {:?}, theirs {:?})",
            track.name,
            ours.len(),
            theirs.len(),
            ours.first(),
            theirs.first()
        );
        // Vorbis times are left out, as in the index's own oracle (`check_against_ffprobe`):
        // after a long-to-short block switch at a page boundary ffprobe's time differs from
        // ours (mixed_audio.ogg packet 50: ours 980.000 ms, ffprobe 989.333 ms), an open
        // discrepancy in the Ogg index. Count, sizes and flags are still compared in order.
        let times = subscription.info().is_none_or(|i| i.codec != tandem::index::Codec::Vorbis);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            ensure!(
                (!times || (a.0 - b.0).abs() <= 1.0) && a.1 == b.1 && a.2 == b.2,
                "{name}/{} packet {i}: ours (pts ms, size, key) {a:?}, ffprobe {b:?}",
                track.name
            );
        }
        compared += ours.len();
    }
    Ok(compared)
}

#[test]
fn every_packet_of_both_meetings_matches_ffprobe() -> Result<()> {
    for name in ["meeting", "meeting-webrtc"] {
        let n = packets_match_ffprobe(&fixture_meeting(name), Meeting::from_folder(fixture_meeting(name))?)?;
        eprintln!("{name}: {n} packets match ffprobe");
    }
    Ok(())
}

#[test]
fn every_packet_from_a_loopback_peer_matches_ffprobe() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let root = net_common::fixture_root(&["meeting", "meeting-webrtc"]);
    let (server, client) =
        rt.block_on(async { (net_common::serve(&root).await, net_common::client().await) });
    let peer = net_common::peer_of(&server);
    for name in ["meeting", "meeting-webrtc"] {
        let meeting = rt.block_on(Meeting::from_peer(&client, &peer, name))?;
        let n = packets_match_ffprobe(&fixture_meeting(name), meeting)?;
        eprintln!("{name} from a peer: {n} packets match ffprobe");
    }
    rt.block_on(server.shutdown());
    Ok(())
}

#[test]
fn a_track_in_several_files_plays_each_file_where_its_segment_puts_it() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = split_meeting(root.path())?;
    // Each file on its own, against ffprobe of that file placed by its segments.
    let n = packets_match_ffprobe(&dir, Meeting::from_folder(&dir)?)?;
    eprintln!("split from the folder: {n} packets match ffprobe");
    // The same through a loopback peer: a size per file on the wire, reads of each file.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (server, client) =
        rt.block_on(async { (net_common::serve(root.path()).await, net_common::client().await) });
    let peer = net_common::peer_of(&server);
    let info = rt.block_on(client.get(&peer, "split"))?;
    let bob = info.track("bob_video").context("bob_video on the wire")?;
    let sizes =
        [std::fs::metadata(dir.join("bob_1.webm"))?.len(), std::fs::metadata(dir.join("bob_2.webm"))?.len()];
    ensure!(bob.sizes == sizes, "sizes on the wire {:?}, files {sizes:?}", bob.sizes);
    ensure!(bob.segments.iter().map(|s| s.file).eq([0, 1]), "segment files {:?}", bob.segments);
    let meeting = rt.block_on(Meeting::from_peer(&client, &peer, "split"))?;
    let m = packets_match_ffprobe(&dir, meeting)?;
    ensure!(m == n, "{m} packets from the peer, {n} from the folder");
    rt.block_on(server.shutdown());
    Ok(())
}

#[test]
fn after_a_seek_each_video_track_starts_at_its_keyframe_at_or_before_the_target() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let manifest = Manifest::load(&dir)?;
    let stream = MeetingStream::open(Meeting::from_folder(&dir)?, StreamOptions::default());
    let videos: Vec<_> = manifest.tracks.iter().filter(|t| t.kind == TrackKind::Video).collect();
    let subscriptions: Vec<Subscription> =
        videos.iter().map(|t| stream.subscribe(&t.name)).collect::<Result<_, _>>()?;
    for target_ms in [1_500u64, 12_345, 24_900, 33_000, 47_777, 20_000, 3_000] {
        let target = MediaTime::from_millis(target_ms as i64);
        let ticket = stream.seek(target);
        for (track, subscription) in videos.iter().zip(&subscriptions) {
            let keys: Vec<f64> =
                expected_packets(&dir, track)?.into_iter().filter(|p| p.2).map(|p| p.0).collect();
            let active = track
                .segments
                .iter()
                .find(|s| target_ms >= s.start_ms && s.end_ms.is_none_or(|e| target_ms < e));
            // The first packet of this seek's ticket.
            let first = loop {
                let item = subscription.recv_timeout(Duration::from_secs(10))?;
                if item.ticket < ticket {
                    continue;
                }
                match item.item {
                    Item::Packet(p) => break Some(p),
                    Item::Gap { .. } | Item::End if active.is_none() => break None,
                    _ => {}
                }
            };
            let Some(segment) = active else { continue };
            let Some(first) = first else { bail!("{} at {target}: no packet", track.name) };
            // The keyframe at or before the target's media time, placed by its segment (it
            // may lie before the segment's start).
            let media_target = (target_ms - segment.start_ms + segment.media_start_ms) as f64;
            let expected_key = keys
                .iter()
                .map(|k| k - segment.start_ms as f64 + segment.media_start_ms as f64)
                .filter(|m| *m <= media_target + 1.0)
                .fold(f64::MIN, f64::max);
            let got =
                first.pts.as_nanos() as f64 / 1e6 - segment.start_ms as f64 + segment.media_start_ms as f64;
            ensure!(first.keyframe, "{} at {target}: the first packet is no keyframe", track.name);
            ensure!(
                (got - expected_key).abs() <= 1.0,
                "{} at {target}: starts at media {got:.1} ms, ffprobe's keyframe at or before is {expected_key:.1}",
                track.name
            );
        }
    }
    Ok(())
}

#[test]
fn a_segment_right_after_another_of_the_same_file_starts_at_its_keyframe_as_a_discontinuity() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = paused_meeting(root.path(), &["bob_video", "alice_video"])?;
    let manifest = Manifest::load(&dir)?;
    let stream = MeetingStream::open(Meeting::from_folder(&dir)?, StreamOptions::default());
    for track in &manifest.tracks {
        stream.seek(MediaTime::ZERO);
        let subscription = stream.subscribe(&track.name)?;
        let spans = subscription.track().timeline.clone();
        let second = *spans.span(1).context("no second span")?;
        let packets: Vec<Packet> = drain(&subscription)?.into_iter().filter(|p| p.span == 1).collect();
        let media_ms = |p: &Packet| {
            (p.pts.saturating_sub(second.start).as_nanos() as f64) / 1e6
                + second.media_start.as_nanos() as f64 / 1e6
        };
        let media_start = second.media_start.as_nanos() as f64 / 1e6;
        // ffprobe's packets in decode order: from the keyframe at or before the media start, the
        // ones whose presentation ends by then (at the next presentation time) only decode.
        let probed = ffprobe_packets(&dir.join(&track.segments[1].file))?;
        let mut times: Vec<f64> = probed.iter().filter_map(|p| p.pts_ms).collect();
        times.sort_by(f64::total_cmp);
        let key = probed
            .iter()
            .rposition(|p| p.keyframe && p.pts_ms.is_some_and(|t| t <= media_start + 1.0))
            .context("no keyframe before the second segment")?;
        let ends = |t: f64| times.iter().copied().find(|n| *n > t + 0.5).unwrap_or(f64::MAX);
        let mut lead_in: Vec<f64> =
            probed[key..].iter().filter_map(|p| p.pts_ms).filter(|t| ends(*t) <= media_start + 0.5).collect();
        lead_in.sort_by(f64::total_cmp);

        let first = packets.first().context("no packet in the second segment")?;
        let key_ms = probed[key].pts_ms.unwrap_or_default();
        ensure!(
            first.keyframe && first.discont && (media_ms(first) - key_ms).abs() <= 1.0,
            "{}: the second segment starts at media {:.1} ms (keyframe {}, discont {}), ffprobe's keyframe is at {key_ms:.1}",
            track.name,
            media_ms(first),
            first.keyframe,
            first.discont
        );
        let mut decode_only: Vec<f64> = packets.iter().filter(|p| p.decode_only).map(media_ms).collect();
        decode_only.sort_by(f64::total_cmp);
        ensure!(
            decode_only.len() == lead_in.len()
                && decode_only.iter().zip(&lead_in).all(|(a, b)| (a - b).abs() <= 1.0),
            "{}: decode-only media times {decode_only:?}, ffprobe's lead-in {lead_in:?}",
            track.name
        );
        ensure!(!lead_in.is_empty(), "{}: the second segment starts on a keyframe", track.name);
        eprintln!("{}: {} lead-in packets from media {key_ms:.1} ms", track.name, lead_in.len());
    }
    Ok(())
}

/// A source that counts reads and bytes per track.
#[derive(Default)]
struct Reads {
    count: AtomicU64,
    bytes: AtomicU64,
}

struct Counted {
    inner: Arc<dyn tandem::RangeSource>,
    reads: Arc<Reads>,
}

impl tandem::RangeSource for Counted {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<bytes::Bytes, tandem::SourceError> {
        let data = self.inner.read_range(start, len)?;
        self.reads.count.fetch_add(1, Ordering::SeqCst);
        self.reads.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(data)
    }
}

/// Each track's read counts, by name.
type Counters = Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Reads>>>>;

/// `meeting` with every track's reads counted in the returned map's entry for it.
fn counted(meeting: Meeting) -> (Meeting, Counters) {
    let counters: Counters = Arc::default();
    let seen = counters.clone();
    let meeting = meeting.wrap_sources(move |desc, inner| {
        let reads = seen.lock().expect("counters").entry(desc.name.to_string()).or_default().clone();
        Arc::new(Counted { inner, reads })
    });
    (meeting, counters)
}

#[test]
fn a_dropped_subscription_makes_no_further_reads() -> Result<()> {
    let (meeting, counters) = counted(Meeting::from_folder(fixture_meeting("meeting"))?);
    let stream = MeetingStream::open(meeting, StreamOptions::default());
    let alice = stream.subscribe("alice_video")?;
    let bob = stream.subscribe("bob_video")?;
    // Read both until bob has shown packets; the cursor follows what is taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bob_packets = 0;
    while bob_packets < 50 {
        ensure!(Instant::now() < deadline, "bob gave {bob_packets} packets in 20 s");
        while alice.try_recv().is_ok() {}
        while let Ok(item) = bob.try_recv() {
            bob_packets += u32::from(matches!(item.item, Item::Packet(_)));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(bob);
    let bob_reads = counters.lock().expect("counters")["bob_video"].count.load(Ordering::SeqCst);
    // Alice reads on (the cursor moves), bob never again.
    let alice_before = counters.lock().expect("counters")["alice_video"].count.load(Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        while alice.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(2));
    }
    let counters = counters.lock().expect("counters");
    ensure!(counters["alice_video"].count.load(Ordering::SeqCst) > alice_before, "alice stopped reading");
    let after = counters["bob_video"].count.load(Ordering::SeqCst);
    ensure!(after == bob_reads, "bob read {} more times after its handle was dropped", after - bob_reads);
    Ok(())
}

#[test]
fn a_paused_consumer_reads_nothing_once_the_buffers_are_full() -> Result<()> {
    let (meeting, counters) = counted(Meeting::from_folder(fixture_meeting("meeting"))?);
    let stream = MeetingStream::open(meeting, StreamOptions::default());
    stream.set_position(MediaTime::from_secs(20));
    stream.seek(MediaTime::from_secs(20));
    let subscriptions: Vec<Subscription> = ["alice_video", "bob_video", "screen_share", "mixed_audio"]
        .iter()
        .map(|t| stream.subscribe(t))
        .collect::<Result<_, _>>()?;
    // Take what comes (the cursor stays at 20 s: paused), until the buffers are full.
    let total = || {
        counters.lock().map(|c| c.values().map(|r| r.count.load(Ordering::SeqCst)).sum::<u64>()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (total(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        ensure!(Instant::now() < deadline, "reads never stopped while paused");
        for s in &subscriptions {
            while s.try_recv().is_ok() {}
        }
        std::thread::sleep(Duration::from_millis(20));
        if total() != last.0 {
            last = (total(), Instant::now());
        }
    }
    let full = total();
    std::thread::sleep(Duration::from_secs(2));
    for s in &subscriptions {
        while s.try_recv().is_ok() {}
    }
    ensure!(total() == full, "{} reads while paused with full buffers", total() - full);
    // Each track holds its target ahead of the cursor, no more.
    for s in &subscriptions {
        let until = s.figures().buffered_until();
        if until != MediaTime::MAX {
            ensure!(until <= MediaTime::from_secs(24), "{} buffered to {until}", s.track().name);
        }
    }
    // Resuming is moving the cursor: reads start again.
    stream.set_position(MediaTime::from_secs(22));
    std::thread::sleep(Duration::from_millis(500));
    ensure!(total() > full, "no read after the cursor moved on");
    Ok(())
}

/// Bytes fetched less bytes taken by the consumer: what the stream holds for one track.
fn held_while_stopped(dir: &std::path::Path, track: &str) -> Result<(u64, u64)> {
    let (meeting, counters) = counted(Meeting::from_folder(dir)?);
    let options = StreamOptions {
        buffer_target: MediaTime::from_secs(3600),
        buffer_bytes: 2 * 1024 * 1024,
        channel_items: 64,
    };
    let cap = options.buffer_bytes;
    let stream = MeetingStream::open(meeting, options);
    let subscription = stream.subscribe(track)?;
    let mut taken = 0;
    for _ in 0..30 {
        if let Item::Packet(p) = subscription.recv_timeout(Duration::from_secs(5))?.item {
            taken += p.data.len() as u64;
        }
    }
    // The consumer stops for 10 s.
    std::thread::sleep(Duration::from_secs(10));
    let fetched = counters.lock().expect("counters")[track].bytes.load(Ordering::SeqCst);
    Ok((fetched.saturating_sub(taken), cap))
}

#[test]
fn a_consumer_that_stops_stops_the_reads_within_the_cap_for_any_length() -> Result<()> {
    // A 60-minute camera track: the committed one looped (same codec, timestamps running on).
    let long = tempfile::tempdir()?;
    let src = fixture_meeting("meeting").join("alice_video.mp4");
    let file = long.path().join("alice_video.mp4");
    ffmpeg(&["-stream_loop", "59", "-i", &src.to_string_lossy(), "-c", "copy", &file.to_string_lossy()])?;
    let manifest = serde_json::json!({"name": "long", "duration_ms": 3_600_000, "tracks": [
        {"name": "alice_video", "kind": "video", "role": "camera", "segments": [{"file": "alice_video.mp4", "start_ms": 0}]}
    ]});
    std::fs::write(long.path().join("meeting.json"), manifest.to_string())?;
    let (short_held, cap) = held_while_stopped(&fixture_meeting("meeting"), "alice_video")?;
    let (long_held, _) = held_while_stopped(long.path(), "alice_video")?;
    // One request is at most the sizer's maximum (4 MiB); the index reads (moov) come on top.
    let bound = cap + 4 * 1024 * 1024 + 2 * 1024 * 1024;
    eprintln!(
        "held while stopped: 1 minute {short_held} bytes, 60 minutes {long_held} bytes (bound {bound})"
    );
    ensure!(
        short_held <= bound && long_held <= bound,
        "held {short_held} / {long_held} bytes, bound {bound}"
    );
    let file_len = std::fs::metadata(&file).context("long file")?.len();
    ensure!(long_held < file_len / 10, "the 60-minute track was read far ahead: {long_held} of {file_len}");
    Ok(())
}
