//! Accurate seeks, judged from decoded output alone: after each seek the first frame every
//! video track shows carries the stamp of the frame on screen at the target (per GStreamer's
//! own decode of the same file), and the first audio click after the target lands within 5 ms
//! of its whole second.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use tandem::player::{Meeting, Player, PlayerOptions, SeekMode};
use tandem::MediaTime;
#[path = "../net_common/mod.rs"]
mod net_common;

use tandem_tests::fixture_meeting;
use tandem_tests::player::{click_skews, click_times, video_oracle, Recorder};

fn accurate_seeks(name: &str, seed: u64) -> Result<()> {
    let dir = fixture_meeting(name);
    accurate_seeks_on(name, Meeting::from_folder(&dir)?, seed, 20)
}

/// `seeks` accurate seeks to random times of `meeting` (a copy of the committed meeting
/// `name`, however it is read), each checked against the oracle.
fn accurate_seeks_on(name: &str, meeting: Meeting, seed: u64, seeks: usize) -> Result<()> {
    let dir = fixture_meeting(name);
    let oracle = video_oracle(&dir)?;
    let duration = meeting.duration().unwrap_or(MediaTime::from_secs(20));
    let recorder = Recorder::default();
    let player = open_recorded(meeting, &recorder)?;
    player.play()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut problems = Vec::new();
    let mut checked_frames = 0;
    let mut checked_clicks = 0;
    let mut latencies = Vec::new();
    for _ in 0..seeks {
        let target = MediaTime::from_millis(rng.gen_range(0..duration.as_millis() - 1500));
        let (frames_mark, audio_mark) = recorder.mark();
        let started = Instant::now();
        player.seek(target, SeekMode::Accurate)?;
        let seek = player.seek_count();
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {target} did not complete");
        latencies.push(started.elapsed());
        // Play on past the next whole second so a click can be heard.
        std::thread::sleep(Duration::from_millis(1150));
        let frames: Vec<_> =
            recorder.frames_since(frames_mark).into_iter().filter(|f| f.seek == seek).collect();
        for (track, truth) in &oracle {
            let Some(expected) = truth.on_screen_at(target) else { continue };
            let mine: Vec<_> = frames.iter().filter(|f| &*f.track == track).collect();
            checked_frames += 1;
            match mine.first() {
                Some(f) if f.stamp == Some(expected) => {}
                _ => problems.push(format!(
                    "seek to {target}: {track} expected stamp {expected}, first showed {:?}",
                    mine.iter()
                        .take(3)
                        .map(|f| format!(
                            "{:?} pts {} preroll {} after {:?}",
                            f.stamp,
                            f.pts,
                            f.preroll,
                            f.at - started
                        ))
                        .collect::<Vec<_>>()
                )),
            }
        }
        let audio: Vec<_> = recorder.audio_since(audio_mark).into_iter().filter(|a| a.seek == seek).collect();
        let mut tracks: Vec<_> = audio.iter().map(|a| a.track.clone()).collect();
        tracks.dedup();
        tracks.sort();
        tracks.dedup();
        for track in tracks {
            let chunks: Vec<_> = audio.iter().filter(|a| a.track == track).cloned().collect();
            let clicks = click_times(&chunks);
            // The first click heard from the target on (a click just before it may still be
            // ringing): it must sit within 5 ms of a whole second at or after the target.
            let slack = MediaTime::from_millis(5);
            let Some(click) = clicks.iter().find(|c| **c >= target.saturating_sub(slack)) else {
                problems.push(format!("seek to {target}: no click on {track}"));
                continue;
            };
            checked_clicks += 1;
            let second = MediaTime::from_secs((click.as_millis() + 500) / 1000);
            let error = (click.as_nanos() - second.as_nanos()).abs();
            if error > 5_000_000 || second < target.saturating_sub(slack) {
                problems.push(format!("seek to {target}: {track} clicked at {click}, not within 5 ms of a whole second after the target"));
            }
        }
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    ensure!(checked_frames >= seeks, "only {checked_frames} frames checked");
    ensure!(checked_clicks >= seeks, "only {checked_clicks} clicks checked");
    latencies.sort();
    eprintln!(
        "{name}: {checked_frames} first frames and {checked_clicks} clicks exact; seek p50 {:?} max {:?}",
        latencies[latencies.len() / 2],
        latencies.last()
    );
    Ok(())
}

#[test]
fn accurate_seeks_on_the_standard_meeting() -> Result<()> {
    accurate_seeks("meeting", 6)
}

#[test]
fn accurate_seeks_on_the_webrtc_meeting() -> Result<()> {
    accurate_seeks("meeting-webrtc", 7)
}

/// Every frame rendered since `mark`, per track: |stamp - clock| within one frame of that
/// track, and the tracks within one frame of each other (each against the same clock).
fn check_sync(recorder: &Recorder, mark: usize, what: &str, problems: &mut Vec<String>) -> usize {
    check_sync_of(recorder, mark, what, problems, |_| true)
}

/// [`check_sync`] on the frames `judged` keeps.
fn check_sync_of(
    recorder: &Recorder,
    mark: usize,
    what: &str,
    problems: &mut Vec<String>,
    judged: impl Fn(&tandem_tests::player::SeenFrame) -> bool,
) -> usize {
    let frames: Vec<_> =
        recorder.frames_since(mark).into_iter().filter(|f| !f.preroll && judged(f)).collect();
    let mut worst: std::collections::HashMap<std::sync::Arc<str>, i64> = Default::default();
    let mut first_at: std::collections::HashMap<(std::sync::Arc<str>, u64), Instant> = Default::default();
    for f in &frames {
        // The frames a track plays in the first 150 ms after a seek come as the pipeline
        // restarts its clock; they have measured up to 45 ms off (1.4 frames) and get a second
        // frame of slack. Everything after is held to one frame.
        let started = *first_at.entry((f.track.clone(), f.seek)).or_insert(f.at);
        let restart = f.at.duration_since(started) < Duration::from_millis(150);
        let (Some(stamp), Some(clock)) = (f.stamp, f.clock) else {
            problems.push(format!(
                "{what}: {} frame without stamp or clock ({:?}, {:?})",
                f.track, f.stamp, f.clock
            ));
            continue;
        };
        let skew = clock.as_millis() - i64::from(stamp);
        let frame_ms = frame_interval_ms(&f.track) * if restart { 2 } else { 1 };
        // The frame on screen at `clock` started at most one frame before it, plus up to 10 ms
        // for a loaded 2-core machine to wake the sink and run the callback (stamps are whole
        // ms). Steady play measures 1-4 ms; the report below prints the worst per track.
        let early = if restart { -frame_ms / 2 - 10 } else { -2 };
        if !(early..=frame_ms + 10).contains(&skew) {
            problems
                .push(format!("{what}: {} stamp {stamp} shown at clock {clock} (skew {skew} ms)", f.track));
        }
        let w = worst.entry(f.track.clone()).or_default();
        *w = (*w).max(skew.abs());
    }
    eprintln!("{what}: {} frames, worst |clock - stamp| per track {worst:?}", frames.len());
    frames.len()
}

fn frame_interval_ms(track: &str) -> i64 {
    match track {
        "alice_video" => 34,
        "bob_video" => 42,
        _ => 200,
    }
}

#[test]
fn tracks_stay_in_sync_through_play_pauses_seeks_and_rate_changes() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();

    player.seek(MediaTime::from_secs(8), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "first seek");
    let mark = recorder.mark().0;
    player.play()?;
    std::thread::sleep(Duration::from_secs(6));
    let steady = check_sync(&recorder, mark, "steady play", &mut problems);
    ensure!(steady > 150, "only {steady} frames rendered in 6 s of play");

    let mark = recorder.mark().0;
    for _ in 0..10 {
        player.pause()?;
        std::thread::sleep(Duration::from_millis(120));
        player.play()?;
        std::thread::sleep(Duration::from_millis(300));
    }
    check_sync(&recorder, mark, "pause/resume", &mut problems);

    let mark = recorder.mark().0;
    for t in [33_700, 12_345, 47_000] {
        player.seek(MediaTime::from_millis(t), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {t}");
        std::thread::sleep(Duration::from_millis(1000));
    }
    check_sync(&recorder, mark, "after seeks", &mut problems);

    player.set_rate(1.5)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "rate change");
    let (mark, from, started) = (recorder.mark().0, player.position(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let advanced =
        player.position().saturating_sub(from).as_millis() as f64 / started.elapsed().as_millis() as f64;
    check_sync(&recorder, mark, "at 1.5x", &mut problems);
    ensure!((1.35..=1.6).contains(&advanced), "at 1.5x the cursor moved {advanced:.2}x wall time");
    no_problems(&problems)?;
    Ok(())
}

/// Plays `meeting`'s `mixed_audio` at each rate, changed while playing from `times[0]` and then
/// after a seek to `times[1]` at that rate; returns the signed skews of the clicks heard (ms) per
/// rate and stretch.
fn click_skews_at_rates(
    meeting: &str,
    times: [i64; 2],
    rates: &[f64],
    play: Duration,
) -> Result<Vec<(f64, &'static str, Vec<f64>)>> {
    let recorder = Recorder::default();
    let options = PlayerOptions {
        output: recorder.output(),
        subscribe: Some(vec!["mixed_audio".into()]),
        ..PlayerOptions::default()
    };
    let player = Player::open(Meeting::from_folder(fixture_meeting(meeting))?, options)?;
    let mut out = Vec::new();
    for &rate in rates {
        player.seek(MediaTime::from_millis(times[0]), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek before {rate}x");
        player.play()?;
        std::thread::sleep(Duration::from_millis(600));
        let mark = recorder.mark().1;
        player.set_rate(rate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "rate change to {rate}x");
        std::thread::sleep(play);
        out.push((rate, "rate changed while playing", click_skews(&recorder.audio_since(mark), rate)));
        let mark = recorder.mark().1;
        player.seek(MediaTime::from_millis(times[1]), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek at {rate}x");
        std::thread::sleep(play);
        out.push((rate, "after a seek at that rate", click_skews(&recorder.audio_since(mark), rate)));
        player.pause()?;
        player.set_rate(1.0)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "back to 1x");
    }
    Ok(out)
}

/// At 0.75x and 1.5x the audio keeps to the meeting clock: the clicks found in the samples the
/// player renders (one at every whole second of meeting time) play within 10 ms of their second
/// (p95 of all of them, and a median within 6 ms at each rate), after the rate changes while
/// playing and after a seek at that rate; Vorbis decoded in the engine (standard meeting) and
/// Opus decoded by GStreamer (WebRTC meeting). scaletempo (WSOLA) moves a sound by up to its
/// search window and a fraction of its stride, so a few ms either way is expected; 1.22.0's own
/// stamps put them 20-29 ms early. (The p95 is over about 40 clicks: a click handed over late by
/// a starved CPU, which happens on a loaded 2-core machine, is not the player's doing.)
#[test]
fn audio_clicks_keep_to_the_clock_at_other_rates() -> Result<()> {
    let mut problems = Vec::new();
    let mut all: Vec<f64> = Vec::new();
    let mut per_rate: Vec<(f64, Vec<f64>)> = vec![(0.75, Vec::new()), (1.5, Vec::new())];
    for (meeting, times) in [("meeting", [13_700, 31_300]), ("meeting-webrtc", [3_700, 11_300])] {
        for (rate, what, skews) in click_skews_at_rates(meeting, times, &[0.75, 1.5], Duration::from_secs(5))?
        {
            eprintln!("{meeting} {rate}x {what}: click skews (ms, + late) {skews:.1?}");
            if skews.len() < 3 {
                problems.push(format!("{meeting} {rate}x {what}: {} clicks heard", skews.len()));
            }
            let abs = skews.iter().map(|s| s.abs());
            all.extend(abs.clone());
            if let Some((_, heard)) = per_rate.iter_mut().find(|(r, _)| *r == rate) {
                heard.extend(abs);
            }
        }
    }
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0)
    };
    for (rate, heard) in &mut per_rate {
        let median = quantile(heard, 0.5);
        if median > 6.0 {
            problems.push(format!("{rate}x: clicks' median {median:.1} ms from their second ({heard:.1?})"));
        }
    }
    let p95 = quantile(&mut all, 0.95);
    if p95 > 10.0 {
        problems.push(format!("clicks p95 {p95:.1} ms from their second (|skews| {all:.1?})"));
    }
    no_problems(&problems)
}

/// A scratch copy of a committed meeting, to damage.
fn copy_of_meeting(name: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(fixture_meeting(name))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    Ok(dir)
}

/// The first `TrackError` among the events received so far.
fn first_track_error(
    events: &crossbeam_channel::Receiver<tandem::player::PlayerEvent>,
) -> Option<(std::sync::Arc<str>, String)> {
    events.try_iter().find_map(|e| match e {
        tandem::player::PlayerEvent::TrackError { track, message } => Some((track, message)),
        _ => None,
    })
}

/// Fails with every problem found (the first 30 of them).
fn no_problems(problems: &[String]) -> Result<()> {
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// A player on `meeting` whose callbacks feed `recorder`, every track subscribed.
fn open_recorded(meeting: Meeting, recorder: &Recorder) -> Result<Player> {
    Ok(Player::open(meeting, PlayerOptions { output: recorder.output(), ..PlayerOptions::default() })?)
}

/// The longest pause between two rendered frames of `track` among `frames`.
fn longest_pause(frames: &[tandem_tests::player::SeenFrame], track: &str) -> Duration {
    let times: Vec<Instant> =
        frames.iter().filter(|f| &*f.track == track && !f.preroll).map(|f| f.at).collect();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[test]
fn tracks_join_and_leave_while_playing_without_disturbing_the_others() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let recorder = Recorder::default();
    let options = PlayerOptions {
        output: recorder.output(),
        subscribe: Some(vec!["alice_video".into(), "bob_video".into(), "mixed_audio".into()]),
        ..PlayerOptions::default()
    };
    let player = Player::open(Meeting::from_folder(&dir)?, options)?;
    let mut problems = Vec::new();
    player.seek(MediaTime::from_secs(12), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "first seek");
    player.play()?;
    std::thread::sleep(Duration::from_millis(800));

    // Join: the screen share appears in sync, alice keeps her pace.
    let mark = recorder.mark().0;
    let joined_at = Instant::now();
    player.subscribe("screen_share")?;
    std::thread::sleep(Duration::from_millis(2000));
    let frames = recorder.frames_since(mark);
    let shown: Vec<_> = frames.iter().filter(|f| &*f.track == "screen_share" && !f.preroll).collect();
    ensure!(!shown.is_empty(), "screen_share never appeared after subscribing");
    let appeared = shown[0].at - joined_at;
    ensure!(appeared < Duration::from_millis(800), "screen_share took {appeared:?} to appear");
    check_sync(&recorder, mark, "join", &mut problems);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(120), "alice paused {pause:?} while screen_share joined");

    // Leave: bob's fetching stops at once, the others play on.
    let bob = player.track_stats("bob_video").expect("bob was subscribed");
    player.unsubscribe("bob_video")?;
    let left_at = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let fetched = bob.fetched_bytes();
    let mark = recorder.mark().0;
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        bob.fetched_bytes() == fetched,
        "bob fetched {} bytes after leaving",
        bob.fetched_bytes() - fetched
    );
    let frames = recorder.frames_since(mark);
    ensure!(frames.iter().all(|f| &*f.track != "bob_video"), "bob rendered after leaving");
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(120), "alice paused {pause:?} after bob left");
    eprintln!("screen_share appeared {appeared:?} after subscribe; bob left {:?} ago", left_at.elapsed());

    // Fifty quick subscribe/unsubscribe cycles: no hang, no crash, alice undisturbed.
    let mark = recorder.mark().0;
    let cycles = Instant::now();
    for i in 0..50 {
        player.subscribe("bob_video")?;
        std::thread::sleep(Duration::from_millis(if i % 2 == 0 { 40 } else { 120 }));
        player.unsubscribe("bob_video")?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let frames = recorder.frames_since(mark);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?} during 50 subscribe cycles");
    check_sync(&recorder, mark, "50 subscribe cycles", &mut problems);
    eprintln!("50 cycles took {:?}", cycles.elapsed());
    no_problems(&problems)?;
    Ok(())
}

#[test]
fn inactive_tracks_never_stall_the_others() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();
    // Before bob joins (5 s), between the screen-share spans (25-32 s), after bob leaves (50 s).
    for (from, secs) in [(3_500u64, 3u64), (24_000, 9), (49_000, 3)] {
        player.seek(MediaTime::from_millis(from as i64), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {from}");
        let mark = recorder.mark().0;
        let started = Instant::now();
        player.play()?;
        std::thread::sleep(Duration::from_secs(secs));
        player.pause()?;
        let played = started.elapsed();
        let frames = recorder.frames_since(mark);
        let pause = longest_pause(&frames, "alice_video");
        if pause > Duration::from_millis(120) {
            problems.push(format!("from {from} ms: alice paused {pause:?}"));
        }
        let alice = frames.iter().filter(|f| &*f.track == "alice_video" && !f.preroll).count();
        let expected = played.as_secs_f64() * 30.0;
        if (alice as f64) < expected * 0.9 {
            problems.push(format!("from {from} ms: alice rendered {alice} frames in {played:?}"));
        }
        for f in frames.iter().filter(|f| !f.preroll) {
            let Some(stamp) = f.stamp else { continue };
            let inactive = match &*f.track {
                "bob_video" => !(5_000..50_000).contains(&stamp),
                "screen_share" => !((10_000..25_000).contains(&stamp) || (32_000..45_000).contains(&stamp)),
                _ => false,
            };
            if inactive {
                problems.push(format!("{} showed stamp {stamp} outside its spans", f.track));
            }
        }
        check_sync(&recorder, mark, &format!("from {from} ms"), &mut problems);
    }
    no_problems(&problems)?;
    Ok(())
}

#[test]
fn accurate_seeks_on_the_webrtc_meeting_from_a_loopback_peer() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let root = net_common::fixture_root(&["meeting-webrtc"]);
    let (server, client) =
        rt.block_on(async { (net_common::serve(&root).await, net_common::client().await) });
    let peer = net_common::peer_of(&server);
    let meeting = rt.block_on(Meeting::from_peer(&client, &peer, "meeting-webrtc"))?;
    accurate_seeks_on("meeting-webrtc", meeting, 11, 10)?;
    rt.block_on(server.shutdown());
    Ok(())
}

#[test]
fn preview_seeks_show_a_keyframe_on_every_track_before_the_accurate_frame() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    let manifest = tandem::manifest::Manifest::load(&dir)?;
    // Keyframe stamps per track, from ffprobe's keyframe flags mapped through the segments.
    let mut keyframes = std::collections::HashMap::new();
    for track in manifest.tracks.iter().filter(|t| t.kind == tandem::manifest::TrackKind::Video) {
        let packets = tandem_tests::ffprobe_packets(&dir.join(track.file()))?;
        let frames = &oracle[&track.name].frames;
        let mut stamps = Vec::new();
        for p in packets.iter().filter(|p| p.keyframe) {
            let Some(pts) = p.pts_ms else { continue };
            // The oracle frame decoded at that media time carries the keyframe's stamp.
            for seg in &track.segments {
                let meeting = pts - seg.media_start_ms as f64 + seg.start_ms as f64;
                if let Some((_, stamp)) =
                    frames.iter().find(|(t, _)| (t.as_nanos() as f64 / 1e6 - meeting).abs() < 1.0)
                {
                    stamps.push(*stamp);
                }
            }
        }
        keyframes.insert(track.name.clone(), stamps);
    }
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();
    let mut preview_times = Vec::new();
    for (i, t) in [13_377i64, 38_911, 21_003, 44_444, 7_250].into_iter().enumerate() {
        let target = MediaTime::from_millis(t);
        if i == 3 {
            player.play()?;
        }
        let mark = recorder.mark().0;
        let started = Instant::now();
        player.seek(target, SeekMode::Preview)?;
        let preview = player.seek_count();
        // The accurate phase follows by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while player.seek_count() == preview && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        ensure!(player.wait_seek(Duration::from_secs(10)), "accurate phase of {target}");
        std::thread::sleep(Duration::from_millis(200));
        let frames = recorder.frames_since(mark);
        for (track, truth) in &oracle {
            let Some(expected) = truth.on_screen_at(target) else { continue };
            let mine: Vec<_> = frames.iter().filter(|f| &*f.track == track).collect();
            let first_preview = mine.iter().find(|f| f.seek == preview);
            let first_accurate = mine.iter().position(|f| f.seek == preview + 1);
            match (first_preview, first_accurate) {
                (Some(p), Some(a)) => {
                    // A keyframe at or before the target and on screen in the same span. (Our
                    // Matroska index trusts Cues, which may list fewer keyframes than the blocks
                    // flag: then the preview is an earlier keyframe of the same span.)
                    let span_start = manifest.tracks.iter().find(|m| &m.name == track).and_then(|m| {
                        m.segments.iter().find(|s| s.media_time(target).is_some()).map(|s| s.start_ms as u32)
                    });
                    let ok = p.stamp.is_some_and(|s| {
                        keyframes[track].contains(&s)
                            && i64::from(s) <= t
                            && span_start.is_none_or(|start| s >= start)
                    });
                    if !ok {
                        let key = keyframes[track].iter().copied().filter(|k| i64::from(*k) <= t).max();
                        problems.push(format!(
                            "{target}: {track} previewed {:?}, keyframe at or before is {key:?}",
                            p.stamp
                        ));
                    }
                    if mine[a].stamp != Some(expected) {
                        problems.push(format!(
                            "{target}: {track} then showed {:?}, expected {expected}",
                            mine[a].stamp
                        ));
                    }
                    preview_times.push(p.at - started);
                }
                other => problems.push(format!(
                    "{target}: {track} preview/accurate frames missing: {:?}",
                    (other.0.is_some(), other.1.is_some())
                )),
            }
        }
    }
    ensure!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    preview_times.sort();
    eprintln!(
        "preview frame after p50 {:?}, max {:?}",
        preview_times[preview_times.len() / 2],
        preview_times.last()
    );
    Ok(())
}

#[test]
fn a_track_whose_file_is_corrupt_mid_way_fails_alone() -> Result<()> {
    let dir = copy_of_meeting("meeting")?;
    // Bit rot in bob's frames from media 20 s on (the container stays readable): the payloads
    // of those blocks become noise after their 3-byte VP8 frame tag.
    let bob = dir.path().join("bob_video.webm");
    let mut bytes = std::fs::read(&bob)?;
    let source = bytes::Bytes::from(bytes.clone());
    let index = tandem::index::TrackIndex::open("bob_video", &source)?;
    let from = index.seek(&source, MediaTime::from_secs(20))?;
    let batch = index.samples(&source, from.pos, 150)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for sample in batch.samples.iter().filter(|s| s.pts >= MediaTime::from_secs(20)) {
        for b in &mut bytes[sample.offset as usize + 3..sample.end() as usize] {
            *b = rng.gen();
        }
    }
    std::fs::write(&bob, bytes)?;
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(dir.path())?, &recorder)?;
    let events = player.events();
    player.seek(MediaTime::from_secs(21), SeekMode::Accurate)?;
    player.play()?;
    let mark = recorder.mark().0;
    std::thread::sleep(Duration::from_secs(8));
    let error = first_track_error(&events);
    let Some((track, message)) = error else { anyhow::bail!("no error reported for the corrupt track") };
    ensure!(&*track == "bob_video", "the error names {track}: {message}");
    eprintln!("bob_video failed: {message}");
    let frames = recorder.frames_since(mark);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?} around bob's failure");
    let end = player.position();
    let last_alice =
        frames.iter().rev().find(|f| &*f.track == "alice_video").and_then(|f| f.stamp).unwrap_or(0);
    ensure!(end > MediaTime::from_secs(27), "the cursor only reached {end}");
    ensure!(
        i64::from(last_alice) >= end.as_millis() - 150,
        "alice stopped playing after bob failed (last frame {last_alice}, cursor {end})"
    );
    let mut problems = Vec::new();
    check_sync(&recorder, mark, "corrupt bob", &mut problems);
    // Bob's damaged frames before the decoder gave up carry no readable stamp.
    problems.retain(|p| !p.contains("bob_video"));
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn a_track_that_lost_bytes_reports_it_skips_to_its_next_keyframe_and_plays_on() -> Result<()> {
    let dir = copy_of_meeting("meeting")?;
    let oracle = video_oracle(&fixture_meeting("meeting"))?;
    // Destroy the SimpleBlock header of one of bob's delta frames near media 17 s: the index
    // loses the rest of that cluster and marks the next block it finds.
    let bob = dir.path().join("bob_video.webm");
    let mut bytes = std::fs::read(&bob)?;
    let source = bytes::Bytes::from(bytes.clone());
    let index = tandem::index::TrackIndex::open("bob_video", &source)?;
    let from = index.seek(&source, MediaTime::from_secs(17))?;
    let batch = index.samples(&source, from.pos, 40)?;
    let victim = batch.samples.iter().filter(|s| !s.keyframe).nth(4).copied();
    let Some(victim) = victim else { anyhow::bail!("no delta frame after bob's keyframe at {}", from.pts) };
    // The element: ID 0xA3, a size vint of `len` bytes, then the track, timecode and flags.
    let p = victim.offset as usize - 4;
    let header = (1..=8usize).find(|&len| {
        let size = &bytes[p - len..p];
        let value =
            size[1..].iter().fold(u64::from(size[0]) & (0xFF >> len), |acc, &b| (acc << 8) | u64::from(b));
        bytes[p - len - 1] == 0xA3 && size[0].leading_zeros() as usize + 1 == len && value == victim.size + 4
    });
    let Some(len) = header else { anyhow::bail!("no SimpleBlock header before byte {}", victim.offset) };
    bytes[p - len - 1] = 0x00;
    std::fs::write(&bob, bytes)?;
    // Bob's media starts at meeting time 5 s.
    let victim_at = victim.pts.saturating_add(MediaTime::from_secs(5));
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(dir.path())?, &recorder)?;
    let events = player.events();
    player.seek(victim_at.saturating_sub(MediaTime::from_secs(2)), SeekMode::Accurate)?;
    let mark = recorder.mark().0;
    player.play()?;
    std::thread::sleep(Duration::from_secs(9));
    let events: Vec<_> = events.try_iter().collect();
    let reports: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            tandem::player::PlayerEvent::Damaged { track, at, message, .. } => {
                Some((track.clone(), *at, message.clone()))
            }
            _ => None,
        })
        .collect();
    let failures: Vec<_> =
        events.iter().filter(|e| matches!(e, tandem::player::PlayerEvent::TrackError { .. })).collect();
    ensure!(failures.is_empty(), "a track failed: {failures:?}");
    let Some((track, at, message)) = reports.first() else { anyhow::bail!("no damage reported") };
    eprintln!("{track}: {message}");
    ensure!(&**track == "bob_video", "the damage names {track}");
    ensure!(*at > victim_at && *at < victim_at.saturating_add(MediaTime::from_secs(6)), "reported at {at}");
    // Bob plays on past the damage, and shows only what GStreamer's decode of the intact file
    // shows at each frame's time.
    let frames = recorder.frames_since(mark);
    let bob_frames: Vec<_> = frames.iter().filter(|f| &*f.track == "bob_video" && !f.preroll).collect();
    let last = bob_frames.iter().filter_map(|f| f.stamp).max().unwrap_or(0);
    ensure!(i64::from(last) > at.as_millis() + 1000, "bob stopped at {last} ms (damage at {at})");
    for f in &bob_frames {
        let Some(stamp) = f.stamp else { continue };
        let shown = oracle["bob_video"].frames.iter().any(|(_, s)| *s == stamp);
        ensure!(shown, "bob showed a frame stamped {stamp} that the file does not hold");
    }
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?} around bob's damage");
    Ok(())
}

/// A link shared by every track: a fixed latency per request and a bandwidth cap.
struct Link {
    latency: Duration,
    bytes_per_sec: f64,
    free_at: std::sync::Mutex<Instant>,
}

struct Throttled {
    inner: std::sync::Arc<dyn tandem::RangeSource>,
    link: std::sync::Arc<Link>,
}

impl tandem::RangeSource for Throttled {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_range(&self, start: u64, len: u64) -> Result<bytes::Bytes, tandem::SourceError> {
        std::thread::sleep(self.link.latency);
        let done = {
            let mut free = self.link.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let begin = (*free).max(Instant::now());
            *free = begin + Duration::from_secs_f64(len as f64 / self.link.bytes_per_sec);
            *free
        };
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
        self.inner.read_range(start, len)
    }
}

/// The standard meeting through a link of `times` its average bitrate with 40 ms latency.
fn throttled_meeting(times: f64) -> Result<Meeting> {
    let dir = fixture_meeting("meeting");
    let meeting = Meeting::from_folder(&dir)?;
    let bytes: u64 =
        std::fs::read_dir(&dir)?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    let seconds = meeting.duration().unwrap_or(MediaTime::from_secs(60)).as_secs_f64();
    let link = std::sync::Arc::new(Link {
        latency: Duration::from_millis(40),
        bytes_per_sec: bytes as f64 / seconds * times,
        free_at: std::sync::Mutex::new(Instant::now()),
    });
    Ok(meeting.wrap_sources(move |_, inner| std::sync::Arc::new(Throttled { inner, link: link.clone() })))
}

#[test]
fn a_slow_link_at_three_times_the_bitrate_plays_without_stalls() -> Result<()> {
    let recorder = Recorder::default();
    let player = open_recorded(throttled_meeting(3.0)?, &recorder)?;
    let events = player.events();
    let started = Instant::now();
    player.seek(MediaTime::from_secs(20), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(20)), "seek over the slow link");
    let seek_time = started.elapsed();
    let _ = events.try_iter().count();
    let mark = recorder.mark().0;
    player.play()?;
    std::thread::sleep(Duration::from_secs(8));
    let stalls: Vec<_> = events
        .try_iter()
        .filter(|e| matches!(e, tandem::player::PlayerEvent::Buffering { percent, .. } if *percent < 100))
        .collect();
    ensure!(stalls.is_empty(), "playback waited for data: {stalls:?}");
    let frames = recorder.frames_since(mark);
    let pause = longest_pause(&frames, "alice_video");
    ensure!(pause < Duration::from_millis(150), "alice paused {pause:?}");
    let mut problems = Vec::new();
    check_sync(&recorder, mark, "3x link", &mut problems);
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("3x link with 40 ms latency: seek took {seek_time:?}, longest alice pause {pause:?}");
    Ok(())
}

#[test]
fn a_link_slower_than_the_bitrate_gives_way_or_buffers_then_plays_on_by_itself() -> Result<()> {
    let recorder = Recorder::default();
    let player = open_recorded(throttled_meeting(0.6)?, &recorder)?;
    let events = player.events();
    player.seek(MediaTime::from_secs(20), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(30)), "seek over the slow link");
    let from = player.position();
    player.play()?;
    std::thread::sleep(Duration::from_secs(12));
    let events: Vec<tandem::player::PlayerEvent> = events.try_iter().collect();
    let buffering: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            tandem::player::PlayerEvent::Buffering { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    // A video track the link cannot carry may give way (shows keyframes as they come, out of
    // step by design) rather than stall the meeting: from then on its frames are not judged
    // for sync, the others' are.
    let degraded: Vec<(std::sync::Arc<str>, MediaTime)> = events
        .iter()
        .filter_map(|e| match e {
            tandem::player::PlayerEvent::Degraded { track, degraded: true, at } => Some((track.clone(), *at)),
            _ => None,
        })
        .collect();
    // The link must show: video gives way (before or after a stall), or playback waits.
    // A wait must end by itself.
    let waited = buffering.iter().position(|p| *p < 100);
    ensure!(
        waited.is_some() || !degraded.is_empty(),
        "neither a buffering event nor a degraded track on a link below the bitrate"
    );
    if let Some(waited) = waited {
        ensure!(buffering.iter().skip(waited).any(|p| *p == 100), "playback never resumed: {buffering:?}");
    }
    let advanced = player.position().saturating_sub(from);
    ensure!(advanced > MediaTime::from_secs(3), "the cursor only advanced {advanced} in 12 s");
    let mut problems = Vec::new();
    check_sync_of(&recorder, 0, "0.6x link", &mut problems, |f| {
        !degraded.iter().any(|(track, at)| *track == f.track && f.pts >= *at)
    });
    ensure!(problems.is_empty(), "{}", problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    eprintln!(
        "0.6x link: {} buffering events, cursor advanced {advanced} in 12 s, degraded {degraded:?}",
        buffering.len()
    );
    Ok(())
}

#[test]
fn the_webrtc_meeting_plays_and_seeks_in_sync() -> Result<()> {
    // Fragmented MP4, WebM without Cues, Opus and MP3 (both audio tracks play).
    let dir = fixture_meeting("meeting-webrtc");
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    let mut problems = Vec::new();
    let mark = recorder.mark();
    player.play()?;
    std::thread::sleep(Duration::from_secs(4));
    check_sync(&recorder, mark.0, "webrtc from the start", &mut problems);
    for (t, pauses) in [(12_500i64, 0), (2_750, 3)] {
        player.seek(MediaTime::from_millis(t), SeekMode::Accurate)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "seek to {t}");
        let mark = recorder.mark().0;
        if pauses > 0 {
            // Pausing within the first moments after a seek's preroll is a known race (see the
            // player's module doc); pause/resume is checked once playback runs.
            std::thread::sleep(Duration::from_secs(1));
        }
        for _ in 0..pauses {
            player.pause()?;
            std::thread::sleep(Duration::from_millis(150));
            player.play()?;
            std::thread::sleep(Duration::from_millis(400));
        }
        std::thread::sleep(Duration::from_secs(2));
        check_sync(&recorder, mark, &format!("webrtc after seeking to {t}"), &mut problems);
    }
    let audio = recorder.audio_since(mark.1);
    for track in ["mixed_audio", "dialin_audio"] {
        let heard = audio.iter().filter(|a| &*a.track == track).count();
        ensure!(heard > 50, "{track}: only {heard} audio buffers");
    }
    no_problems(&problems)?;
    Ok(())
}

#[test]
fn fast_seeks_snap_the_cursor_to_a_keyframe() -> Result<()> {
    let dir = fixture_meeting("meeting");
    let oracle = video_oracle(&dir)?;
    // alice's keyframes (the first video track) per ffprobe, in meeting time.
    let keyframes: Vec<i64> = tandem_tests::ffprobe_packets(&dir.join("alice_video.mp4"))?
        .iter()
        .filter(|p| p.keyframe)
        .filter_map(|p| p.pts_ms)
        .map(|ms| ms.round() as i64)
        .collect();
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(&dir)?, &recorder)?;
    for t in [7_777i64, 31_234, 52_100] {
        let mark = recorder.mark().0;
        let landed = player.seek(MediaTime::from_millis(t), SeekMode::Fast)?;
        ensure!(player.wait_seek(Duration::from_secs(10)), "fast seek to {t}");
        let expected = keyframes.iter().copied().filter(|k| *k <= t).max().unwrap_or(0);
        ensure!(
            (landed.as_millis() - expected).abs() <= 1,
            "fast seek to {t} landed at {landed}, keyframe {expected}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let frames = recorder.frames_since(mark);
        for (track, truth) in &oracle {
            let Some(want) = truth.on_screen_at(landed) else { continue };
            let first = frames.iter().find(|f| &*f.track == track).and_then(|f| f.stamp);
            ensure!(
                first == Some(want),
                "fast seek to {t} ({landed}): {track} showed {first:?}, expected {want}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_track_that_cannot_be_opened_is_reported_and_the_others_play() -> Result<()> {
    let dir = copy_of_meeting("meeting")?;
    std::fs::write(dir.path().join("screen_share.mkv"), vec![0u8; 4096])?;
    let recorder = Recorder::default();
    let player = open_recorded(Meeting::from_folder(dir.path())?, &recorder)?;
    let error = first_track_error(&player.events());
    let Some((track, message)) = error else { anyhow::bail!("no error for the unreadable screen share") };
    ensure!(&*track == "screen_share", "the error names {track}: {message}");
    ensure!(
        !player.subscribed().iter().any(|t| &**t == "screen_share"),
        "the broken track is still subscribed"
    );
    player.seek(MediaTime::from_secs(15), SeekMode::Accurate)?;
    ensure!(player.wait_seek(Duration::from_secs(10)), "the other tracks did not seek");
    let shown =
        recorder.frames.lock().map(|f| f.iter().filter(|f| &*f.track == "alice_video").count()).unwrap_or(0);
    ensure!(shown > 0, "alice showed nothing");
    Ok(())
}
