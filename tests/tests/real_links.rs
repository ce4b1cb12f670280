//! Playback from a peer through shaped links (`tandem_tests::link`: two network namespaces,
//! IP packets delayed, paced and dropped), judged by what the player hands its outputs: the
//! audio samples and the video frames, stamped with their meeting time and the wall time they
//! arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use tandem::player::{Meeting, Player, PlayerEvent, PlayerOptions};
use tandem::MediaTime;
use tandem_tests::link::{meeting_bitrate, ServedPeer, Shape, ShapedLink};
use tandem_tests::player::{video_oracle, Recorder, SeenAudio, SeenFrame};

/// One shaped-link test at a time: each plays in real time, and two players on a 2-core
/// machine would judge the machine, not the link.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a person on the other side of a shaped link gets in `watch` of wall time after
/// `play`.
struct Watched {
    audio: Vec<SeenAudio>,
    frames: Vec<SeenFrame>,
    /// Each event and when it came.
    events: Vec<(Instant, PlayerEvent)>,
    played_from: Instant,
}

/// Plays the committed meeting from a peer through `shape`; `then` changes the link that long
/// after the start (opening included).
fn play_through(shape: Shape, watch: Duration, then: Option<(Duration, Shape)>) -> Result<Watched> {
    let root = tandem_tests::workspace_root().join("fixtures");
    let link = ShapedLink::new(shape)?;
    let server = ServedPeer::start(link.b(), &root)?;
    let peer = server.peer();
    let recorder = Recorder::default();
    let output = recorder.output();
    let verbose = std::env::var_os("TANDEM_TEST_VERBOSE").is_some();
    let player = link.a().spawn(move || -> Result<(Vec<(Instant, PlayerEvent)>, Instant)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let client = runtime.block_on(tandem::net::Client::builder().spawn())?;
        let meeting = runtime.block_on(Meeting::from_peer(&client, &peer, "meeting"))?;
        let player = Player::open(meeting, PlayerOptions { output, ..PlayerOptions::default() })?;
        let events = player.events();
        player.play()?;
        let played_from = Instant::now();
        let mut seen = Vec::new();
        while played_from.elapsed() < watch {
            if let Ok(event) = events.recv_timeout(Duration::from_millis(100)) {
                if verbose
                    && (!matches!(event, PlayerEvent::Buffer { .. })
                        || std::env::var_os("TANDEM_TEST_BUFFERS").is_some())
                {
                    println!(
                        "+{:.2}s at {} {event:?}",
                        played_from.elapsed().as_secs_f64(),
                        player.position()
                    );
                }
                seen.push((Instant::now(), event));
            }
        }
        drop(player);
        runtime.block_on(client.close());
        Ok((seen, played_from))
    })?;
    if let Some((after, next)) = then {
        std::thread::sleep(after);
        link.set_shape(next);
    }
    let (events, played_from) = player.join().map_err(|_| anyhow!("the player's thread panicked"))??;
    let audio = recorder.audio_since(0).into_iter().filter(|a| &*a.track == "mixed_audio").collect();
    Ok(Watched { audio, frames: recorder.frames_since(0), events, played_from })
}

/// Wall time in `[from, to)` during which no audio was being played: the stretches between
/// one chunk's end (its arrival plus its length) and the next chunk's arrival.
fn silent_time(audio: &[SeenAudio], from: Instant, to: Instant) -> Duration {
    let mut chunks: Vec<(Instant, Duration)> = audio
        .iter()
        .filter(|a| a.at >= from && a.at < to && a.rate > 0)
        .map(|a| (a.at, Duration::from_secs_f64(a.mono.len() as f64 / f64::from(a.rate))))
        .collect();
    chunks.sort_by_key(|c| c.0);
    let mut silent = Duration::ZERO;
    // The audio sink is handed chunks ahead of their time: playing lasts until the end of the
    // sound handed over so far.
    let mut playing_until = from;
    for (at, length) in chunks {
        if at > playing_until + Duration::from_millis(100)
            && std::env::var_os("TANDEM_TEST_VERBOSE").is_some()
        {
            println!("silent {:?} for {:?}", playing_until - from, at - playing_until);
        }
        if at > playing_until {
            silent += at - playing_until;
            playing_until = at;
        }
        playing_until += length;
    }
    silent + to.saturating_duration_since(playing_until)
}

#[test]
fn a_link_short_of_the_meeting_bitrate_costs_video_not_the_sound() -> Result<()> {
    let _serial = one_at_a_time();
    let folder = tandem_tests::workspace_root().join("fixtures/meeting");
    let bitrate = meeting_bitrate(&folder)?;
    // 30 s short of the bitrate, then the link is unshaped: the video must come back.
    let watched = play_through(
        Shape::short(bitrate),
        Duration::from_secs(45),
        Some((Duration::from_secs(32), Shape::loopback())),
    )?;
    // Judged from 2 s after the first sound (the buffers fill before), so bob_video's camera
    // turning on at 0:05 is inside: a picture that was not there must not stop the sound.
    let first_heard = watched.audio.first().map_or(watched.played_from, |a| a.at);
    let from = first_heard + Duration::from_secs(2);
    let to = watched.played_from + Duration::from_secs(28);
    let silent = silent_time(&watched.audio, from, to);
    let heard: MediaTime = watched
        .audio
        .iter()
        .filter(|a| a.at >= from && a.at < to)
        .map(|a| MediaTime::from_nanos((a.mono.len() as f64 / f64::from(a.rate.max(1)) * 1e9) as i64))
        .fold(MediaTime::ZERO, |sum, d| sum.saturating_add(d));
    let degrades: Vec<(Instant, Arc<str>, bool)> = watched
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            PlayerEvent::Degraded { track, degraded, .. } => Some((*at, track.clone(), *degraded)),
            _ => None,
        })
        .collect();
    let stalls = watched
        .events
        .iter()
        .filter(|(at, e)| *at >= from && *at < to && matches!(e, PlayerEvent::Buffering { .. }))
        .count();
    let window = to - from;
    println!(
        "link {:.0} kbit/s (0.8x the meeting's {:.0}): {:.1} s of sound in {:.1} s of wall time, silent {:.2} s; \
         {stalls} buffering reports; degraded and back: {:?}",
        bitrate as f64 * 0.8 / 1e3,
        bitrate as f64 / 1e3,
        heard.as_secs_f64(),
        window.as_secs_f64(),
        silent.as_secs_f64(),
        degrades.iter().map(|(at, t, on)| (format!("+{:.1}s", (*at - watched.played_from).as_secs_f64()), t, on)).collect::<Vec<_>>()
    );
    ensure!(!watched.audio.is_empty(), "no audio reached the output");
    ensure!(
        silent <= window / 50,
        "the audio was silent {silent:?} of {window:?}: the link should cost video, not the sound"
    );
    ensure!(
        heard.as_secs_f64() >= window.as_secs_f64() * 0.95,
        "{heard} of sound in {window:?}: the meeting did not keep real time"
    );
    ensure!(degrades.iter().any(|(_, _, on)| *on), "no video track gave way on a link short of the bitrate");
    // Every picture shown is a frame of the file at its time (dropping late frames up to a
    // keyframe leaves no broken picture), read from its stamp against the decoded file.
    let oracle = video_oracle(&folder)?;
    for frame in watched.frames.iter().filter(|f| !f.preroll) {
        let Some(track) = oracle.get(&*frame.track) else { continue };
        // A frame's time as the container rounds it may sit a nanosecond before the decoder's.
        let want = track.on_screen_at(frame.pts.saturating_add(MediaTime::from_millis(1)));
        ensure!(
            frame.stamp.is_some() && frame.stamp == want,
            "{} showed stamp {:?} at {}, the file has {want:?} there",
            frame.track,
            frame.stamp,
            frame.pts
        );
    }
    // Degraded tracks still show keyframes as they come...
    for (at, track, _) in degrades.iter().filter(|(_, _, on)| *on) {
        let shown = watched.frames.iter().filter(|f| f.track == *track && f.at > *at && f.at < to).count();
        ensure!(shown > 0, "{track} showed nothing after it was degraded");
    }
    // ...and every one is back by the end, the link carrying them again (the video's
    // bitrate varies, so a track may come back sooner, while the link is still short).
    for track in degrades.iter().filter(|(_, _, on)| *on).map(|(_, t, _)| t) {
        let last = degrades.iter().rev().find(|(_, t, _)| t == track).map(|(at, _, on)| (*at, *on));
        ensure!(
            matches!(last, Some((_, false))),
            "{track} did not come back once the link could carry it: last {last:?}"
        );
    }
    Ok(())
}

#[test]
fn silent_time_counts_the_stretches_without_sound() -> Result<()> {
    let t0 = Instant::now();
    let chunk = |at_ms: u64, ms: usize| SeenAudio {
        track: Arc::from("a"),
        pts: MediaTime::ZERO,
        clock: None,
        rate: 1000,
        mono: vec![0.0; ms],
        seek: 0,
        at: t0 + Duration::from_millis(at_ms),
    };
    // 0-100 played, 100-300 silent, 300-400 played, 400-500 silent (to the end).
    let audio = [chunk(0, 100), chunk(300, 100)];
    let silent = silent_time(&audio, t0, t0 + Duration::from_millis(500));
    ensure!(silent == Duration::from_millis(300), "{silent:?}");
    let ahead = [chunk(0, 300), chunk(100, 300)];
    let silent = silent_time(&ahead, t0, t0 + Duration::from_millis(500));
    ensure!(silent == Duration::ZERO, "chunks handed over ahead play back to back: {silent:?}");
    Ok(())
}

#[test]
fn a_lossy_far_link_with_headroom_plays_without_a_stall() -> Result<()> {
    let _serial = one_at_a_time();
    // 200 ms round trip, 2 Mbit/s (about 4x the meeting's bitrate), 1 % loss each way.
    let watched = play_through(Shape::lossy(), Duration::from_secs(40), None)?;
    let from = watched.played_from + Duration::from_secs(4);
    let to = watched.played_from + Duration::from_secs(40);
    let stalls: Vec<&PlayerEvent> = watched
        .events
        .iter()
        .filter(|(at, e)| *at >= from && *at < to && matches!(e, PlayerEvent::Buffering { .. }))
        .map(|(_, e)| e)
        .collect();
    let degraded = watched.events.iter().filter(|(_, e)| matches!(e, PlayerEvent::Degraded { .. })).count();
    let silent = silent_time(&watched.audio, from, to);
    println!(
        "lossy link: {} buffering reports, {degraded} degrade events, audio silent {:.2} s of {:.0} s",
        stalls.len(),
        silent.as_secs_f64(),
        (to - from).as_secs_f64()
    );
    ensure!(
        stalls.is_empty(),
        "playback stalled on a link with headroom: {:?}",
        &stalls[..stalls.len().min(5)]
    );
    ensure!(degraded == 0, "a track was degraded on a link with headroom");
    ensure!(silent <= Duration::from_millis(300), "the audio was silent {silent:?}");
    Ok(())
}

/// The keyframe ranges of `alice_video` around its largest group of pictures: a target just
/// before its end needs the whole group, one just after it needs one keyframe.
fn large_and_small_seek(folder: &std::path::Path) -> Result<((MediaTime, u64), (MediaTime, u64))> {
    let src = tandem::FileSource::open(folder.join("alice_video.mp4"))?;
    let index = tandem::index::TrackIndex::open("alice_video", &src)?;
    let keyframes = index.keyframes(&src)?;
    let (i, gop) = keyframes
        .windows(2)
        .enumerate()
        .skip(1)
        .map(|(i, k)| (i, k[1].offset - k[0].offset))
        .max_by_key(|(_, bytes)| *bytes)
        .ok_or_else(|| anyhow!("alice_video has fewer than three keyframes"))?;
    let before_next = keyframes[i + 1].pts.saturating_sub(MediaTime::from_millis(40));
    let last = keyframes.last().ok_or_else(|| anyhow!("no keyframes"))?;
    Ok(((before_next, gop), (last.pts, last.size)))
}

#[test]
fn a_superseded_seek_cancels_its_reads() -> Result<()> {
    let _serial = one_at_a_time();
    let root = tandem_tests::workspace_root().join("fixtures");
    let ((first, first_bytes), (second, second_bytes)) = large_and_small_seek(&root.join("meeting"))?;
    // Slow enough that the first seek's group of pictures takes seconds to cross.
    let rate = 300_000u64;
    let link = ShapedLink::new(Shape::symmetric(Duration::from_millis(100), Some(rate), 0.0))?;
    let server = ServedPeer::start(link.b(), &root)?;
    let peer = server.peer();
    let (marks_tx, marks_rx) = std::sync::mpsc::channel::<&'static str>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = link.a().spawn(move || -> Result<Duration> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let client = runtime.block_on(tandem::net::Client::builder().spawn())?;
        let meeting = runtime.block_on(Meeting::from_peer(&client, &peer, "meeting"))?;
        let stream = tandem::stream::MeetingStream::open(meeting, tandem::stream::StreamOptions::default());
        let alice = stream.subscribe_idle("alice_video")?;
        marks_tx.send("opened")?;
        go_rx.recv()?;
        stream.seek(first);
        std::thread::sleep(Duration::from_millis(300));
        let ticket = stream.seek(second);
        let started = Instant::now();
        // Until the second seek's keyframe is in.
        loop {
            let item = alice.recv_timeout(Duration::from_secs(30))?;
            if let (true, tandem::stream::Item::Packet(p)) = (item.ticket == ticket, &item.item) {
                if p.keyframe {
                    break;
                }
            }
        }
        let took = started.elapsed();
        marks_tx.send("done")?;
        drop(alice);
        runtime.block_on(client.close());
        Ok(took)
    })?;
    ensure!(marks_rx.recv_timeout(Duration::from_secs(60))? == "opened", "no open");
    // The bytes the server sent that crossed the link (IP packets, b to a), counted by the link.
    let before = link.stats().1.delivered_bytes;
    go_tx.send(())?;
    ensure!(marks_rx.recv_timeout(Duration::from_secs(60))? == "done", "the second seek never completed");
    let crossed = link.stats().1.delivered_bytes - before;
    let took = reader.join().map_err(|_| anyhow!("the reader panicked"))??;
    println!(
        "seek to {first} ({first_bytes} bytes needed) superseded after 300 ms by a seek to {second} \
         ({second_bytes} bytes): {crossed} bytes crossed the link, the second seek took {took:?}"
    );
    ensure!(first_bytes > 3 * second_bytes, "the fixture's largest group is too small to tell");
    // Without cancelling, the whole first range crosses before (or beside) the second.
    ensure!(
        crossed < second_bytes + first_bytes * 2 / 3,
        "{crossed} bytes crossed: the superseded seek's read ({first_bytes} bytes) was not cancelled"
    );
    Ok(())
}

/// Bytes that crossed the link (server to client) while an urgent-or-routine read of
/// `small` bytes was served beside a routine read of `big` bytes already under way.
fn crossed_beside_a_routine_read(urgent: bool, big: u64, small: u64) -> Result<u64> {
    let root = tandem_tests::workspace_root().join("fixtures");
    let link = ShapedLink::new(Shape::symmetric(Duration::from_millis(100), Some(300_000), 0.0))?;
    let server = ServedPeer::start(link.b(), &root)?;
    let peer = server.peer();
    let (marks_tx, marks_rx) = std::sync::mpsc::channel::<&'static str>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = link.a().spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let client = runtime.block_on(tandem::net::Client::builder().spawn())?;
        let info = runtime.block_on(client.get(&peer, "meeting"))?;
        let priority = tandem::net::SendPriority { urgent: 6, routine: 0 };
        let track = |name: &str| -> Result<tandem::net::RemoteTrack> {
            Ok(tandem::net::RemoteTrack::new(client.clone(), peer.clone(), &info, name)?
                .with_priority(priority))
        };
        let (refill, wanted) = (track("alice_video")?, track("bob_video")?);
        let refilling = runtime.spawn(async move { refill.read(0, big).await });
        // The routine read fills the link before the other asks.
        std::thread::sleep(Duration::from_millis(5000));
        marks_tx.send("busy")?;
        go_rx.recv()?;
        let awaited = if urgent { small } else { 0 };
        let data = runtime.block_on(wanted.read_urgent(0, small, awaited))?;
        ensure!(data.len() as u64 == small, "read {} of {small} bytes", data.len());
        marks_tx.send("read")?;
        let refilled = runtime.block_on(refilling)??;
        ensure!(refilled.len() as u64 == big, "the routine read got {} of {big} bytes", refilled.len());
        runtime.block_on(client.close());
        Ok(())
    })?;
    ensure!(marks_rx.recv_timeout(Duration::from_secs(60))? == "busy", "no routine read");
    let before = link.stats().1.delivered_bytes;
    go_tx.send(())?;
    ensure!(marks_rx.recv_timeout(Duration::from_secs(60))? == "read", "the second read never completed");
    let crossed = link.stats().1.delivered_bytes - before;
    reader.join().map_err(|_| anyhow!("the reader panicked"))??;
    println!("urgent {urgent}, the link from the server: {:?}", link.stats().1);
    Ok(crossed)
}

#[test]
fn an_urgent_read_crosses_a_short_link_ahead_of_routine_reads() -> Result<()> {
    let _serial = one_at_a_time();
    let (big, small) = (600_000, 60_000);
    // The oracle is the same read at routine priority: the link shares itself between the two.
    let routine = crossed_beside_a_routine_read(false, big, small)?;
    let urgent = crossed_beside_a_routine_read(true, big, small)?;
    println!(
        "a {small}-byte read beside a routine {big}-byte one on a 300 kbit/s link: \
         {routine} bytes crossed until it completed at routine priority, {urgent} urgent"
    );
    ensure!(
        routine > small * 3 / 2,
        "at the same priority the reads did not share the link: {routine} bytes"
    );
    // Urgent, it goes first. Not alone: BBR overshoots a shallow queue (about half the
    // packets are dropped there), and the other read's data in flight and retransmitted
    // still crosses meanwhile.
    ensure!(
        urgent * 5 < routine * 4,
        "urgent: {urgent} bytes crossed (routine: {routine}); the peer did not send it first"
    );
    Ok(())
}
