//! Link: tandem from a peer over shaped links (issue 15): unshaped, far (80 ms, 20 Mbit/s),
//! lossy (200 ms, 2 Mbit/s, 1 % loss), short (80 ms, 0.8x the meeting's bitrate) and relayed
//! (the far link, the peer reached by its ID52 alone through iroh's relay), made by
//! `tandem_tests::link` (two network namespaces, IP packets delayed, paced and dropped).
//!
//! The relayed case runs iroh's real relay and pkarr servers in namespace b beside a server
//! bound to b's loopback address: the client finds the peer through pkarr and every packet goes
//! client -> link -> relay -> server, since no direct path can exist (the server's own address
//! is b's loopback). The relay's byte count is in the details.
//!
//! The server (tandem's, and nginx for the baseline) runs in namespace b; everything that plays
//! (tandem's client and player, GStreamer and the threads they start) runs on a thread inside
//! namespace a, so every byte crosses the link. Per link, on the committed meeting:
//! - open and first frame: a fresh client (dial, `stream.get`, indexes, first frames) until every
//!   track showing at zero has handed over its first frame (as the `open` bench times it);
//! - accurate and preview seeks while playing, p50 and p95 (as the `seek` bench times them);
//! - stalls per minute and the audio's playing time while playing, from the first audio heard
//!   on: a stall is a gap of more than 300 ms between played audio buffers (what was heard, not
//!   the player's own reports); far and lossy play the long meeting for `TANDEM_BENCH_PLAY_SECS`
//!   (default 600), loopback and short the fixture's minute less 5 s (the short link's rate is
//!   0.8x the fixture's bitrate, which the long meeting does not share).
//!
//! Each beside (a) the link's physical limit for the same work: the bytes needed (index bytes
//! the parsers read to open, plus the coded frames from each track's keyframe to the target:
//! audio's few packets are left out) over the rate, plus the minimal protocol's round trips
//! (open: handshake, `stream.get`, one read per track in parallel, the keyframe ranges: 4;
//! seek: the keyframe ranges in parallel: 1) times the round trip; and (b) GStreamer's own
//! playback over HTTP ranges from nginx through the same link. Goals are reported, not enforced.
//!
//! `cargo bench -p tandem-benches --bench link` (`TANDEM_BENCH_SEEKS`, default 20 per mode;
//! `TANDEM_BENCH_PLAY_SECS`; `TANDEM_BENCH_MINUTES`, the long meeting, at least the play;
//! `TANDEM_BENCH_LINKS=far,relayed`, only those links; `TANDEM_BENCH_PLAY_ONLY=1`, only our play;
//! `TANDEM_BENCH_OURS_ONLY=1`, no GStreamer baseline; `TANDEM_BENCH_VERBOSE`, each seek, each
//! stall and the player's events; `RUST_LOG`, tracing on stderr). With
//! `TANDEM_BENCH_SMOKE=1`: the fixture only, 5 s of play per link; one open and one seek per
//! mode with GStreamer beside on the unshaped and far links; on the slow ones only ours playing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gstreamer as gst;
use serde_json::json;
use tandem::index::TrackIndex;
use tandem::net::{Client, PeerAddr, Reach};
use tandem::player::{Meeting, Player, PlayerOptions};
use tandem::{FileSource, MediaTime};
use tandem_benches::gst_play::{GstMeeting, GstOptions, Rendered};
use tandem_benches::nginx::Nginx;
use tandem_benches::opens::wait_first;
use tandem_benches::report::{smoke, write_part, Figure};
use tandem_benches::seeks::{http_name as http_name_of, run_gst, run_ours, targets, Mode, Runs};
use tandem_benches::tracks::{InMemoryTrack, MeetingInfo, Track};
use tandem_benches::{bench_minutes, fixture_meeting, long_meeting, meetings_dir, ms, ours, quantile};
use tandem_fixtures::Variant;
use tandem_tests::internet::RelayServers;
use tandem_tests::link::{meeting_bitrate, Namespace, ServedPeer, Shape, ShapedLink};

/// How long a first frame may take before the open counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(40);
/// A gap between played audio buffers longer than this is a stall.
const STALL_GAP: Duration = Duration::from_millis(300);

/// One of the links and the work measured over it.
struct LinkCase {
    name: &'static str,
    shape: Shape,
    /// Opens timed (each ours and the baseline's).
    opens: usize,
    /// Seeks per mode.
    seeks: usize,
    /// Whether GStreamer's baseline runs (a smoke run leaves it out on the slow links, where
    /// its preroll alone takes 13-50 s).
    baseline: bool,
    /// Seconds of play for the stall and audio figures.
    play: Duration,
    /// Whether play uses the long meeting (the fixture lasts one minute).
    long_play: bool,
    /// Whether the peer is reached through the relay (its ID52 alone) rather than dialed.
    relayed: bool,
}

/// Where the meeting is, on both servers, and what the benchmarks know of it.
struct Served {
    info: MeetingInfo,
    stream: String,
    peer: PeerAddr,
    /// How a client reaches `peer`: directly, or through the relay and pkarr.
    reach: Reach,
    nginx: Nginx,
}

impl Served {
    fn http(&self) -> GstOptions {
        let base = self.nginx.url("");
        GstOptions { uri: Arc::new(move |t: &Track| format!("{base}{}", t.file_name)), ..GstOptions::local() }
    }
}

/// A tokio runtime and a fresh client on it, bound to namespace a's address.
struct Dialer {
    runtime: tokio::runtime::Runtime,
    bind: std::net::SocketAddr,
}

impl Dialer {
    /// A fresh client that reaches `served`'s peer as it is served.
    fn client(&self, served: &Served) -> Result<Client> {
        let (bind, reach) = (self.bind, served.reach.clone());
        self.runtime.block_on(async move {
            Ok(Client::builder()
                .bind(bind)
                .reach(reach)
                .connect_timeout(Duration::from_secs(10))
                .request_timeout(Duration::from_secs(30))
                .spawn()
                .await?)
        })
    }

    /// The meeting on the peer, through a fresh client (dial and `stream.get` included).
    fn meeting(&self, served: &Served) -> Result<(Client, Meeting)> {
        let client = self.client(served)?;
        let meeting = self.runtime.block_on(Meeting::from_peer(&client, &served.peer, &served.stream))?;
        Ok((client, meeting))
    }
}

/// Ours: from nothing (a fresh client) to every first frame.
fn open_ours(dialer: &Dialer, served: &Served) -> Result<Duration> {
    let log: Arc<Mutex<Vec<Rendered>>> = Arc::default();
    let start = Instant::now();
    let client = dialer.client(served)?;
    let bound = start.elapsed();
    let meeting = dialer.runtime.block_on(Meeting::from_peer(&client, &served.peer, &served.stream))?;
    let got = start.elapsed();
    let player = Player::open(
        meeting,
        PlayerOptions { output: ours::output(log.clone(), false), ..Default::default() },
    )?;
    player.play()?;
    let took = wait_first(&log, &served.info, start, OPEN_TIMEOUT);
    if verbose() {
        // Where an open's time goes: binding the endpoint, dial and `stream.get`, the rest.
        eprintln!(
            "ours: open: client bound in {bound:?}, stream.get answered at {got:?}, first frames at {took:?}"
        );
    }
    drop(player);
    dialer.runtime.block_on(client.close());
    took
}

/// GStreamer over HTTP: from nothing to every first frame.
fn open_gst(served: &Served) -> Result<Duration> {
    let options = served.http();
    let log = options.log.clone();
    let start = Instant::now();
    let gst = GstMeeting::open(&served.info.tracks, served.info.duration, options)?;
    gst.play()?;
    wait_first(&log, &served.info, start, OPEN_TIMEOUT)
}

/// What was heard while playing: the audio's playing time over the wall time, and stalls.
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    wall: Duration,
    audio: Duration,
    stalls: usize,
}

impl Heard {
    // A zero wall time: not measured (NaN, null in the report).
    fn audio_fraction(&self) -> f64 {
        if self.wall.is_zero() {
            return f64::NAN;
        }
        self.audio.as_secs_f64() / self.wall.as_secs_f64()
    }
    fn stalls_per_minute(&self) -> f64 {
        if self.wall.is_zero() {
            return f64::NAN;
        }
        self.stalls as f64 * 60.0 / self.wall.as_secs_f64()
    }
    fn json(&self) -> serde_json::Value {
        json!({"wall_s": self.wall.as_secs_f64(), "audio_s": self.audio.as_secs_f64(),
               "audio_fraction": self.audio_fraction(), "stalls": self.stalls, "stalls_per_minute": self.stalls_per_minute()})
    }
}

/// Plays for `play` after `started` (play called), then reads the log's audio from the first
/// buffer heard on (the wait before it is the open's figure): its playing time over the wall
/// time, and the gaps longer than [`STALL_GAP`] (one more when it stops before the end).
fn heard(log: &Mutex<Vec<Rendered>>, started: Instant, play: Duration) -> Heard {
    std::thread::sleep((started + play).saturating_duration_since(Instant::now()));
    let end = Instant::now();
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let played: Vec<&Rendered> = log.iter().filter(|r| !r.video && !r.preroll && r.at >= started).collect();
    let Some(first) = played.first() else {
        return Heard { wall: end.duration_since(started), audio: Duration::ZERO, stalls: 1 };
    };
    let (mut audio, mut stalls, mut last) = (Duration::ZERO, 0, first.at);
    for r in &played {
        let len = match (r.pts, r.end) {
            (Some(p), Some(e)) => Duration::from_nanos((e.as_nanos() - p.as_nanos()).max(0) as u64),
            _ => Duration::ZERO,
        };
        audio += len;
        if r.at.duration_since(last) > STALL_GAP + len {
            stalls += 1;
            if verbose() {
                eprintln!(
                    "stall: {:?} without audio before {:?} (audio pts {:?}), {:.1} s into the play",
                    r.at.duration_since(last),
                    r.at.duration_since(first.at),
                    r.pts,
                    r.at.duration_since(started).as_secs_f64()
                );
            }
        }
        last = r.at;
    }
    if end.duration_since(last) > STALL_GAP * 2 {
        stalls += 1;
    }
    Heard { wall: end.duration_since(first.at), audio, stalls }
}

fn verbose() -> bool {
    std::env::var_os("TANDEM_BENCH_VERBOSE").is_some()
}

fn play_ours(dialer: &Dialer, served: &Served, play: Duration) -> Result<(Heard, usize)> {
    let log: Arc<Mutex<Vec<Rendered>>> = Arc::default();
    let (client, meeting) = dialer.meeting(served)?;
    let player = Player::open(
        meeting,
        PlayerOptions { output: ours::output(log.clone(), false), ..Default::default() },
    )?;
    let events = player.events();
    let started = Instant::now();
    player.play()?;
    let mut buffering = 0;
    while let Some(left) = (started + play).checked_duration_since(Instant::now()) {
        let Ok(event) = events.recv_timeout(left) else { continue };
        let shown = !matches!(event, tandem::player::PlayerEvent::Buffer { .. });
        if verbose() && shown {
            eprintln!("{:.1} s into the play: {event:?}", started.elapsed().as_secs_f64());
        }
        buffering += usize::from(matches!(event, tandem::player::PlayerEvent::Buffering { .. }));
    }
    let heard = heard(&log, started, play);
    drop(player);
    dialer.runtime.block_on(client.close());
    Ok((heard, buffering))
}

fn play_gst(served: &Served, play: Duration) -> Result<Heard> {
    let options = served.http();
    let log = options.log.clone();
    let gst = GstMeeting::open(&served.info.tracks, served.info.duration, options)?;
    let started = Instant::now();
    gst.play()?;
    Ok(heard(&log, started, play))
}

/// The bytes the link must carry to open: every index's open reads, the captions whole, and the
/// first frame of each video track showing at zero.
fn open_bytes(dir: &Path, info: &MeetingInfo, videos: &[InMemoryTrack]) -> Result<u64> {
    let mut bytes = 0;
    for track in &info.tracks {
        let source = FileSource::open(&track.file)?;
        bytes += TrackIndex::open(&track.name, &source)?.open_cost().bytes;
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "vtt") {
            bytes += std::fs::metadata(&path)?.len();
        }
    }
    for video in videos.iter().filter(|v| v.track.active(MediaTime::ZERO)) {
        bytes += video.job(MediaTime::ZERO)?.map(|j| j.bytes()).unwrap_or(0);
    }
    Ok(bytes)
}

/// The limit of one seek: the coded frames from each active video's keyframe to `t` over the
/// rate, plus one round trip (the ranges of every track asked for at once).
fn seek_limit(videos: &[InMemoryTrack], t: MediaTime, shape: &Shape) -> Result<Duration> {
    let mut bytes = 0;
    for video in videos.iter().filter(|v| v.track.active(t)) {
        bytes += video.job(t)?.map(|j| j.bytes()).unwrap_or(0);
    }
    Ok(transfer(bytes, shape) + shape.round_trip())
}

/// `bytes` at the link's rate (from b to a); nothing on an unshaped link.
fn transfer(bytes: u64, shape: &Shape) -> Duration {
    shape.b_to_a.rate_bps.map_or(Duration::ZERO, |r| Duration::from_secs_f64(bytes as f64 * 8.0 / r as f64))
}

/// A figure that may have failed to measure: NaN then, and the error printed.
fn measured<T>(what: &str, result: Result<T>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("link: {what}: {e:#}");
            None
        }
    }
}

/// The seeks' time at quantile `q` in ms; NaN when none landed or none ran.
fn seek_ms(runs: &Runs, q: f64) -> f64 {
    if runs.times.is_empty() {
        f64::NAN
    } else {
        ms(quantile(&runs.times, q))
    }
}

/// One link's figures and the details behind them.
struct Measured {
    figures: Vec<Figure>,
    details: serde_json::Value,
}

/// Every figure over one link (its shape set on `link` first).
fn bench_link(
    case: &LinkCase,
    link: &ShapedLink,
    dialer: &Dialer,
    fixture: &Served,
    long: &Served,
    videos: &[InMemoryTrack],
    fixture_dir: &Path,
) -> Result<Measured> {
    link.set_shape(case.shape);
    let shape = case.shape;
    let name = case.name;
    let (runs, seeks) = (case.opens, case.seeks);
    println!(
        "\n{name}: round trip {:?}, rate {:?} bit/s, loss {}",
        shape.round_trip(),
        shape.b_to_a.rate_bps,
        shape.b_to_a.loss
    );

    let (mut open_times, mut gst_open_times) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        open_times.extend(measured(&format!("{name} open (ours)"), open_ours(dialer, fixture)));
        if case.baseline {
            gst_open_times.extend(measured(&format!("{name} open (GStreamer HTTP)"), open_gst(fixture)));
        }
    }
    let open_limit =
        transfer(open_bytes(fixture_dir, &fixture.info, videos)?, &shape) + shape.round_trip() * 4;
    let med = |v: &[Duration]| if v.is_empty() { f64::NAN } else { ms(quantile(v, 0.5)) };
    println!(
        "{name} open: ours p50 {:.0} ms, GStreamer HTTP p50 {:.0} ms, limit {:.0} ms",
        med(&open_times),
        med(&gst_open_times),
        ms(open_limit)
    );

    let accurate = targets(&fixture.info, seeks, 9);
    let preview = targets(&fixture.info, seeks, 10);
    let mut seek_runs = serde_json::Map::new();
    let mut run = |label: &str, f: &mut dyn FnMut() -> Result<Runs>| -> Runs {
        if seeks == 0 || (label.starts_with("gstreamer") && !case.baseline) {
            return Runs::default();
        }
        let runs = measured(&format!("{name} {label}"), f()).unwrap_or_default();
        println!("{}", runs.line(&format!("{name} {label}")));
        seek_runs.insert(label.into(), runs.json());
        runs
    };
    let ours_accurate = run("ours accurate", &mut || {
        let (client, meeting) = dialer.meeting(fixture)?;
        let runs = run_ours(meeting, &fixture.info, &accurate, Mode::Accurate);
        dialer.runtime.block_on(client.close());
        runs
    });
    let ours_preview = run("ours preview", &mut || {
        let (client, meeting) = dialer.meeting(fixture)?;
        let runs = run_ours(meeting, &fixture.info, &preview, Mode::Preview);
        dialer.runtime.block_on(client.close());
        runs
    });
    let gst_accurate = run("gstreamer http accurate", &mut || {
        run_gst(&fixture.info, fixture.http(), Some(&fixture.nginx), &accurate, Mode::Accurate)
    });
    let gst_preview = run("gstreamer http key-unit", &mut || {
        run_gst(&fixture.info, fixture.http(), Some(&fixture.nginx), &preview, Mode::Preview)
    });
    let limits: Vec<Duration> =
        accurate.iter().map(|&t| seek_limit(videos, t, &shape)).collect::<Result<_>>()?;
    let preview_limits: Vec<Duration> =
        preview.iter().map(|&t| seek_limit(videos, t, &shape)).collect::<Result<_>>()?;

    let played = if case.long_play && !smoke() { long } else { fixture };
    // Never past the meeting's end (a short `TANDEM_BENCH_MINUTES`): the audio would stop.
    let until_end = Duration::from_millis(played.info.duration.as_millis().max(0) as u64);
    let play = case.play.min(until_end.saturating_sub(Duration::from_secs(5)));
    let (ours_heard, buffering) =
        measured(&format!("{name} play (ours)"), play_ours(dialer, played, play)).unwrap_or_default();
    let gst_heard = if case.baseline {
        measured(&format!("{name} play (GStreamer HTTP)"), play_gst(played, play)).unwrap_or_default()
    } else {
        Heard { wall: Duration::ZERO, audio: Duration::ZERO, stalls: 0 }
    };
    println!(
        "{name} play {play:?}: ours audio {:.1} % of the wall time, {} stalls ({:.2}/min, {buffering} buffering events); GStreamer HTTP audio {:.1} %, {} stalls ({:.2}/min)",
        ours_heard.audio_fraction() * 100.0,
        ours_heard.stalls,
        ours_heard.stalls_per_minute(),
        gst_heard.audio_fraction() * 100.0,
        gst_heard.stalls,
        gst_heard.stalls_per_minute()
    );

    let limit_name = "the link's limit: bytes needed / rate + minimal round trips x RTT";
    let http_name = "GStreamer uridecodebin, HTTP ranges from nginx through the same link";
    // Over HTTP, matroskademux refuses seeks in files whose SeekHead does not locate the Cues:
    // those seeks are timed on the other tracks (see the seek bench), and the name says so.
    let (http_accurate, http_preview) = (
        format!("{} through the same link", http_name_of(&gst_accurate)),
        format!("{} through the same link", http_name_of(&gst_preview)),
    );
    let f = |figure: &str| format!("link_{name}_{figure}");
    let mut figures = vec![
        Figure::new(&f("open_first_frame"), "ms", med(&open_times), ms(open_limit), limit_name),
        Figure::new(&f("open_first_frame_vs_http"), "ms", med(&open_times), med(&gst_open_times), http_name),
        Figure::new(
            &f("seek_accurate_p50"),
            "ms",
            seek_ms(&ours_accurate, 0.5),
            ms(quantile(&limits, 0.5)),
            limit_name,
        ),
        Figure::new(
            &f("seek_accurate_p95"),
            "ms",
            seek_ms(&ours_accurate, 0.95),
            ms(quantile(&limits, 0.95)),
            limit_name,
        ),
        Figure::new(
            &f("seek_accurate_p50_vs_http"),
            "ms",
            seek_ms(&ours_accurate, 0.5),
            seek_ms(&gst_accurate, 0.5),
            &http_accurate,
        ),
        Figure::new(
            &f("seek_accurate_p95_vs_http"),
            "ms",
            seek_ms(&ours_accurate, 0.95),
            seek_ms(&gst_accurate, 0.95),
            &http_accurate,
        ),
        Figure::new(
            &f("seek_preview_p50"),
            "ms",
            seek_ms(&ours_preview, 0.5),
            ms(quantile(&preview_limits, 0.5)),
            limit_name,
        ),
        Figure::new(
            &f("seek_preview_p95"),
            "ms",
            seek_ms(&ours_preview, 0.95),
            ms(quantile(&preview_limits, 0.95)),
            limit_name,
        ),
        Figure::new(
            &f("seek_preview_p50_vs_http"),
            "ms",
            seek_ms(&ours_preview, 0.5),
            seek_ms(&gst_preview, 0.5),
            &http_preview,
        ),
        Figure::new(
            &f("stalls_per_minute"),
            "stalls/min",
            ours_heard.stalls_per_minute(),
            gst_heard.stalls_per_minute(),
            http_name,
        ),
        Figure::new(
            &f("audio_playing"),
            "fraction of wall time",
            ours_heard.audio_fraction(),
            1.0,
            "the wall time",
        ),
    ];
    // The goals on the far link.
    if name == "far" {
        for figure in &mut figures {
            match figure.name.trim_start_matches("link_far_") {
                "seek_accurate_p50" => figure.goal_ratio = Some(1.5),
                "seek_accurate_p50_vs_http" => figure.goal_ratio = Some(0.3),
                // Absolute: within 1.2 s.
                "open_first_frame" => figure.goal_ratio = Some(1200.0 / figure.baseline),
                _ => {}
            }
        }
    }
    if name == "far" || name == "lossy" {
        // No stall: an absolute goal of zero, written against the baseline's count (at least 1
        // so the ratio is defined; NaN when the baseline did not run).
        let gst_baseline_stalls =
            if gst_heard.wall.is_zero() { f64::NAN } else { gst_heard.stalls.max(1) as f64 };
        figures.push(
            Figure::new(&f("stalls"), "stalls", ours_heard.stalls as f64, gst_baseline_stalls, http_name)
                .goal(0.0),
        );
    }
    if name == "short" {
        figures.push(
            Figure::new(
                &f("audio_playing_goal"),
                "fraction of wall time",
                ours_heard.audio_fraction(),
                1.0,
                "the wall time",
            )
            .goal_higher(0.99),
        );
    }
    let details = json!({
        "round_trip_ms": ms(shape.round_trip()), "rate_bps": shape.b_to_a.rate_bps, "loss": shape.b_to_a.loss,
        "queue_bytes": shape.b_to_a.queue_bytes,
        "open": {"ours_ms": open_times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                 "gstreamer_http_ms": gst_open_times.iter().map(|d| ms(*d)).collect::<Vec<_>>(), "limit_ms": ms(open_limit)},
        "seeks": seek_runs,
        "play": {"seconds": play.as_secs_f64(), "meeting": played.stream, "ours": ours_heard.json(), "ours_buffering_events": buffering,
                 "gstreamer_http": gst_heard.json()},
        "link_stats_since_start": format!("{:?}", link.stats()),
    });
    Ok(Measured { figures, details })
}

/// A meeting folder served by tandem in namespace b, waiting for nginx beside it.
struct ToServe {
    dir: PathBuf,
    stream: String,
    peer: PeerAddr,
    reach: Reach,
    namespace: Namespace,
}

impl ToServe {
    /// Starts tandem's server for the folders under `root`; `dir` is the meeting among them.
    fn start(link: &ShapedLink, root: &Path, dir: &Path) -> Result<(ServedPeer, ToServe)> {
        let server = ServedPeer::start(link.b(), root)?;
        let peer = server.peer();
        Ok((server, ToServe::new(link, dir, peer, Reach::direct())?))
    }

    /// The same, the server on b's loopback address (no direct path from a) and reached
    /// through `relays`: the client gets its ID52 alone.
    fn start_relayed(
        link: &ShapedLink,
        root: &Path,
        dir: &Path,
        relays: &RelayServers,
    ) -> Result<(ServedPeer, ToServe)> {
        let reach = Reach::custom(Some(&relays.relay_url()), Some(&relays.pkarr_url()))?;
        let bind = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        let server = ServedPeer::start_on(link.b(), root, bind, reach.clone())?;
        relays.wait_published(&server.id52, Duration::from_secs(20))?;
        let peer = PeerAddr::new(server.id52.clone(), None);
        Ok((server, ToServe::new(link, dir, peer, reach)?))
    }

    fn new(link: &ShapedLink, dir: &Path, peer: PeerAddr, reach: Reach) -> Result<ToServe> {
        let stream = dir.file_name().and_then(|n| n.to_str()).context("meeting folder name")?.to_string();
        Ok(ToServe { dir: dir.to_path_buf(), stream, peer, reach, namespace: link.b().clone() })
    }

    /// Starts nginx in namespace b; called from inside namespace a, where its readiness check
    /// must reach it.
    fn with_nginx(self) -> Result<Served> {
        let ns = &self.namespace;
        let nginx = Nginx::serve_on(&self.dir, ns.addr(), |binary| ns.command(binary))?;
        Ok(Served {
            info: MeetingInfo::load(&self.dir)?,
            stream: self.stream,
            peer: self.peer,
            reach: self.reach,
            nginx,
        })
    }
}

fn main() -> Result<()> {
    if !tandem_benches::invoked_as_bench() {
        return Ok(());
    }
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_thread_names(true)
            .with_writer(std::io::stderr)
            .init();
    }
    let fixture_dir = fixture_meeting().canonicalize()?;
    let fixtures_root = fixture_dir.parent().context("fixtures folder")?.to_path_buf();
    let minutes = bench_minutes();
    let long_dir: PathBuf = if smoke() {
        fixture_dir.clone()
    } else {
        let root = meetings_dir();
        std::fs::create_dir_all(&root)?;
        long_meeting(&root, Variant::Standard, minutes)?
    };
    let env =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let play_secs = env("TANDEM_BENCH_PLAY_SECS", 600);
    let seeks = env("TANDEM_BENCH_SEEKS", 20) as usize;
    // Only our play on each link: no opens, seeks or baselines (to study a stall quickly).
    let play_only = env("TANDEM_BENCH_PLAY_ONLY", 0) != 0;
    // Ours only: no GStreamer baseline (its opens take a minute each on the short link).
    let ours_only = env("TANDEM_BENCH_OURS_ONLY", 0) != 0;
    let bitrate = meeting_bitrate(&fixture_dir)?;
    let secs = Duration::from_secs;
    // `TANDEM_BENCH_LINKS=far,lossy` measures only those links.
    let only: Option<Vec<String>> = std::env::var("TANDEM_BENCH_LINKS")
        .ok()
        .map(|s| s.split(',').map(|l| l.trim().to_string()).collect());
    let links = [
        ("loopback", Shape::loopback()),
        ("far", Shape::far()),
        ("lossy", Shape::lossy()),
        ("short", Shape::short(bitrate)),
        ("relayed", Shape::far()),
    ]
    .into_iter()
    .filter(|(name, _)| only.as_ref().is_none_or(|only| only.iter().any(|o| o == name)));
    let cases: Vec<LinkCase> = links
        .map(|(name, shape)| {
            let slow = name == "lossy" || name == "short";
            let relayed = name == "relayed";
            if smoke() {
                // Well under 2 minutes in all: the slow links (an open there takes 8-15 s) only
                // play ours (the play's open is not timed).
                let (opens, seeks) = (usize::from(!slow), usize::from(!slow));
                LinkCase {
                    name,
                    shape,
                    opens,
                    seeks,
                    baseline: !slow,
                    play: secs(5),
                    long_play: false,
                    relayed,
                }
            } else {
                // Capped below at the meeting's end less 5 s (55 s for the fixture).
                let play = if name == "far" || name == "lossy" { secs(play_secs) } else { secs(60) };
                let long_play = name == "far" || name == "lossy";
                if play_only {
                    return LinkCase {
                        name,
                        shape,
                        opens: 0,
                        seeks: 0,
                        baseline: false,
                        play,
                        long_play,
                        relayed,
                    };
                }
                LinkCase { name, shape, opens: 3, seeks, baseline: !ours_only, play, long_play, relayed }
            }
        })
        .collect();
    let link = Arc::new(ShapedLink::new(Shape::loopback())?);
    let (_fixture_server, fixture_to_serve) = ToServe::start(&link, &fixtures_root, &fixture_dir)?;
    let long_root = long_dir.parent().context("long meeting's root")?.to_path_buf();
    let (_long_server, long_to_serve) = ToServe::start(&link, &long_root, &long_dir)?;
    // The relay and its peer only when a relayed case runs.
    let relays = match cases.iter().any(|c| c.relayed) {
        true => Some(Arc::new(RelayServers::start(link.b().name(), link.b().addr())?)),
        false => None,
    };
    let relayed_to_serve = match &relays {
        Some(relays) => Some(ToServe::start_relayed(&link, &fixtures_root, &fixture_dir, relays)?),
        None => None,
    };
    let (_relayed_server, relayed_to_serve) = relayed_to_serve.unzip();
    println!(
        "link: the committed meeting ({:.2} Mbit/s) from a peer in another namespace, {} links",
        bitrate as f64 / 1e6,
        cases.len()
    );
    let names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    let inside = link.clone();
    let relay_counter = relays.clone();
    let bind = std::net::SocketAddr::from((link.a().addr(), 0));
    // Everything that plays runs inside namespace a, threads started there included.
    let measured = link.a().run(move || -> Result<Vec<Measured>> {
        gst::init()?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let dialer = Dialer { runtime, bind };
        let fixture = fixture_to_serve.with_nginx()?;
        let long = long_to_serve.with_nginx()?;
        let relayed = relayed_to_serve.map(ToServe::with_nginx).transpose()?;
        let videos: Vec<InMemoryTrack> =
            fixture.info.videos().map(InMemoryTrack::load).collect::<Result<_>>()?;
        cases
            .iter()
            .map(|case| {
                let Some(relays) = relay_counter.as_ref().filter(|_| case.relayed) else {
                    return bench_link(case, &inside, &dialer, &fixture, &long, &videos, &fixture_dir);
                };
                let served = relayed.as_ref().context("the relayed peer")?;
                let before = relays.relayed_bytes();
                let mut measured = bench_link(case, &inside, &dialer, served, served, &videos, &fixture_dir)?;
                let relayed_bytes = relays.relayed_bytes() - before;
                println!("{}: the relay passed {relayed_bytes} bytes", case.name);
                measured.details["relayed_bytes"] = json!(relayed_bytes);
                Ok(measured)
            })
            .collect()
    })??;
    let mut figures = Vec::new();
    let mut details = serde_json::Map::new();
    for (m, case) in measured.into_iter().zip(&names) {
        figures.extend(m.figures);
        details.insert((*case).into(), m.details);
    }
    details.insert("meeting_bitrate_bps".into(), json!(bitrate));
    details.insert("play_secs".into(), json!(play_secs));
    write_part("link", &figures, serde_json::Value::Object(details))
}
