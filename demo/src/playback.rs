//! `play` and `snapshot`: the player from the command line.
//!
//! - `play <folder | id52/meeting>` plays a meeting in a window (when a display is there) or
//!   headless, printing the cursor, each track's buffer and the captions as they come, until
//!   the meeting ends, `--for` runs out, or Ctrl-C.
//! - `snapshot ... --at T --track NAME -o frame.png` writes the frame an accurate seek to `T`
//!   shows on that track, at the track's own size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem::player::{
    ExportLayout, ExportOptions, Meeting, Output, Player, PlayerEvent, PlayerOptions, SeekMode, VideoFrame,
};
use tandem::MediaTime;

use crate::peer::{self, DialArgs};

#[derive(Debug, clap::Args)]
pub struct PlayArgs {
    /// A meeting folder (with meeting.json), or a peer's meeting: <id52>/<meeting>.
    pub meeting: String,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Start here: 90, 1:30.5, 1500ms.
    #[arg(long, default_value = "0")]
    pub at: String,
    /// Stop after this much meeting time.
    #[arg(long = "for")]
    pub duration: Option<String>,
    /// Only these tracks (repeatable); all when absent.
    #[arg(long = "track")]
    pub tracks: Vec<String>,
    /// No window and no sound, even with a display.
    #[arg(long)]
    pub headless: bool,
}

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// A meeting folder, or a peer's meeting: <id52>/<meeting>.
    pub meeting: String,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Meeting time of the frame: 90, 1:30.5, 1500ms.
    #[arg(long)]
    pub at: String,
    /// The video track to take the frame from, at its own size; without it, the grid the
    /// window shows.
    #[arg(long)]
    pub track: Option<String>,
    /// Output PNG file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// A meeting from a folder or a peer; the runtime (for a peer) must live as long as it.
fn open_meeting(target: &str, dial: &DialArgs) -> Result<(Option<tokio::runtime::Runtime>, Meeting)> {
    let path = std::path::Path::new(target);
    if path.join("meeting.json").is_file() {
        return Ok((None, Meeting::from_folder(path)?));
    }
    if path.exists() {
        bail!("{} has no meeting.json", path.display());
    }
    let parts: Vec<&str> = target.split('/').collect();
    if parts.len() != 2 || parts[0].is_empty() || target.starts_with(['.', '~']) {
        bail!("{target}: no such meeting folder (a folder with meeting.json, or <id52>/<meeting> on a peer)");
    }
    let (rt, meeting) = peer::open_remote_meeting(target, dial)?;
    Ok((Some(rt), meeting))
}

fn parse_time(text: &str) -> Result<MediaTime> {
    MediaTime::parse(text).with_context(|| format!("{text:?} is not a time (90, 1:30.5, 1500ms)"))
}

/// Why play cannot show the screen and the window, if it cannot.
fn headless_reason(args: &PlayArgs) -> Option<&'static str> {
    use std::io::IsTerminal;
    if args.headless {
        Some("--headless")
    } else if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        Some("no display (DISPLAY is not set)")
    } else if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        Some("not a terminal")
    } else {
        None
    }
}

pub fn play(args: PlayArgs) -> Result<()> {
    let remote = !std::path::Path::new(&args.meeting).exists();
    let (_rt, meeting) = open_meeting(&args.meeting, &args.dial)?;
    let start = parse_time(&args.at)?;
    let stop_after = args.duration.as_deref().map(parse_time).transpose()?;
    if let Some(end) = meeting.duration().filter(|&end| start >= end) {
        bail!("--at ({start}) is past the end of the meeting ({end})");
    }
    for name in &args.tracks {
        if meeting.track(name).is_none() {
            let names: Vec<&str> = meeting.tracks().iter().map(|t| &*t.name).collect();
            bail!("no track {name:?} in {}; it has {}", meeting.name(), names.join(", "));
        }
    }
    let reason = headless_reason(&args);
    let interactive = reason.is_none() && stop_after.is_none();
    let options = PlayerOptions {
        output: if reason.is_none() { Output::Window } else { Output::Headless },
        subscribe: (!args.tracks.is_empty()).then(|| args.tracks.clone()),
        start_at: start,
        ..PlayerOptions::default()
    };
    // Said on the screen when interactive, as a line otherwise.
    let silent = reason.is_none() && tandem::player::sound_output().is_none();
    if silent && !interactive {
        println!("no sound device could be opened: the audio plays silently, in sync");
    }
    let player = Player::open(meeting, options)?;
    player.wait_seek(Duration::from_secs(20));
    let opened = crate::since_start();
    if interactive {
        let mut notes = Vec::new();
        if silent {
            notes.push("no sound device: the audio plays silently".to_string());
        }
        let failed = crate::screen::run(&player, remote, notes)?;
        println!("stopped at {}", MediaTime::from_millis(player.position().as_millis()));
        for (track, message) in &failed {
            eprintln!("track {track} failed: {message}");
        }
        if !failed.is_empty() {
            bail!(
                "the meeting played without {}",
                failed.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(());
    }
    print_tracks(&player);
    match reason {
        Some(why) => println!("headless ({why}): no window and no sound; q and Enter stops"),
        None => println!("showing the window"),
    }
    println!("at {start} in {opened:?} ({})", player.subscribed().join(", "));
    play_lines(&player, start, stop_after)
}

fn print_tracks(player: &Player) {
    let meeting = player.meeting();
    println!(
        "meeting {} ({})",
        meeting.name(),
        meeting.duration().map(|d| d.to_string()).unwrap_or_default()
    );
    for t in meeting.tracks() {
        let spans: Vec<String> = t
            .timeline
            .spans()
            .iter()
            .map(|s| format!("{}-{}", s.start, s.end.map(|e| e.to_string()).unwrap_or_default()))
            .collect();
        println!(
            "  {:<14} {:<9} {:<12} {:<8} {}",
            t.name,
            format!("{:?}", t.kind).to_lowercase(),
            t.role,
            t.participant.as_deref().unwrap_or("-"),
            spans.join(", ")
        );
    }
}

/// Plays with a status line per second until the end, `--for`, `q` on stdin or a signal.
fn play_lines(player: &Player, start: MediaTime, stop_after: Option<MediaTime>) -> Result<()> {
    let quit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, quit.clone()).context("catching signals")?;
    }
    {
        let quit = quit.clone();
        std::thread::spawn(move || {
            // Only a typed `q` stops; stdin at its end (no input) plays on.
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l.trim() == "q" => {
                        quit.store(true, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        });
    }
    let events = player.events();
    player.play()?;
    let mut buffers: BTreeMap<Arc<str>, (MediaTime, f64)> = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    let mut last_status = Instant::now();
    loop {
        if quit.load(std::sync::atomic::Ordering::Relaxed) {
            println!("stopped at {}", MediaTime::from_millis(player.position().as_millis()));
            break;
        }
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(PlayerEvent::Caption { start, text, .. }) => {
                println!("[{start}] {}", crate::screen::plain_caption(&text))
            }
            Ok(PlayerEvent::Damaged { track, message, .. }) => eprintln!("track {track} damaged: {message}"),
            Ok(PlayerEvent::TrackError { track, message }) => {
                eprintln!("track {track} failed: {message}");
                failed.push(track.to_string());
            }
            Ok(PlayerEvent::Degraded { track, degraded: true, at }) => eprintln!(
                "degraded {track}: at {at} the link cannot carry it; it shows keyframes as they come \
                 and the sound plays on"
            ),
            Ok(PlayerEvent::Degraded { track, degraded: false, at }) => {
                eprintln!("degraded {track}: keeps up again at {at}")
            }
            Ok(PlayerEvent::Buffering { track, percent }) if percent < 100 => {
                eprintln!("buffering {track}: {percent}%")
            }
            Ok(PlayerEvent::Buffer { track, buffered, throughput, .. }) => {
                buffers.insert(track, (buffered, throughput));
            }
            Ok(PlayerEvent::EndOfMeeting) => {
                println!("end of meeting at {}", MediaTime::from_millis(player.position().as_millis()));
                break;
            }
            _ => {}
        }
        let position = MediaTime::from_millis(player.position().as_millis());
        if stop_after.is_some_and(|d| position >= start.saturating_add(d)) {
            println!("stopped at {position}");
            break;
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            let figures: Vec<String> = buffers
                .iter()
                .map(|(t, (b, rate))| format!("{t} {:.1}s @{:.0} KB/s", b.as_secs_f64(), rate / 1000.0))
                .collect();
            println!("{position}  buffered: {}", figures.join("  "));
        }
    }
    if !failed.is_empty() {
        bail!("the meeting played without {} (see above)", failed.join(", "));
    }
    Ok(())
}

pub fn snapshot(args: SnapshotArgs) -> Result<()> {
    let (_rt, meeting) = open_meeting(&args.meeting, &args.dial)?;
    let at = parse_time(&args.at)?;
    let Some(track) = args.track.clone() else {
        let image = tandem::player::compose_grid(meeting, at)?;
        write_rgb_png(&args.output, image.width, image.height, &image.rgb)?;
        println!("{}: the grid at {at}, {}x{}", args.output.display(), image.width, image.height);
        return Ok(());
    };
    let args = SnapshotArgs { track: Some(track.clone()), ..args };
    let Some(desc) = meeting.track(&track) else {
        let names: Vec<&str> = meeting.tracks().iter().map(|t| &*t.name).collect();
        bail!("no track {track:?}; the meeting has {}", names.join(", "));
    };
    if desc.kind != tandem::manifest::TrackKind::Video {
        bail!("{track} is not a video track");
    }
    if !desc.timeline.is_active(at) {
        bail!("{track} shows nothing at {at} (its spans: {:?})", desc.timeline.spans());
    }
    let frame: Arc<Mutex<Option<VideoFrame>>> = Arc::default();
    let slot = frame.clone();
    let wanted_seek = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let wanted = wanted_seek.clone();
    let options = PlayerOptions {
        output: Output::Callbacks {
            video: Some(Arc::new(move |f: &VideoFrame| {
                if f.seek == wanted.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.is_none() {
                        *slot = Some(f.clone());
                    }
                }
            })),
            audio: None,
        },
        subscribe: Some(vec![track.clone()]),
        ..PlayerOptions::default()
    };
    let player = Player::open(meeting, options)?;
    wanted_seek.store(player.seek_count() + 1, std::sync::atomic::Ordering::Relaxed);
    player.seek(at, SeekMode::Accurate)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let frame = loop {
        if let Some(f) = frame.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break f;
        }
        if Instant::now() > deadline {
            bail!("no frame of {track} at {at} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    write_rgb_png(&args.output, frame.width, frame.height, &frame.to_rgb())?;
    println!("{}: {track} at {at}, {}x{}", args.output.display(), frame.width, frame.height);
    Ok(())
}

fn write_rgb_png(path: &std::path::Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("writing the PNG header")?;
    writer.write_image_data(rgb).context("writing the PNG")?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A meeting folder, or a peer's meeting: <id52>/<meeting>.
    pub meeting: String,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Meeting time the clip starts at: 90, 1:30.5, 1500ms.
    #[arg(long)]
    pub from: String,
    /// Meeting time the clip ends at.
    #[arg(long)]
    pub to: String,
    /// One video track at its own size (with the audio); the grid when absent.
    #[arg(long)]
    pub track: Option<String>,
    /// Output MP4 file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let (_rt, meeting) = open_meeting(&args.meeting, &args.dial)?;
    let (from, to) = (parse_time(&args.from)?, parse_time(&args.to)?);
    if to <= from {
        bail!("--to ({to}) must come after --from ({from})");
    }
    if let Some(end) = meeting.duration().filter(|&end| from >= end) {
        bail!("--from ({from}) is past the end of the meeting ({end})");
    }
    let layout = match &args.track {
        Some(track) => ExportLayout::Track(track.clone()),
        None => ExportLayout::Grid,
    };
    let total = to.saturating_sub(from).as_millis().max(1) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {elapsed} (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(format!("exporting {from}-{to}"));
    // Without a terminal the bar is hidden: a line per 10 % instead.
    let lines = bar.is_hidden();
    let mut decile = 0;
    let started = Instant::now();
    tandem::player::export_mp4(meeting, &ExportOptions::new(from, to, layout), &args.output, &mut |p| {
        let done = p.done.as_millis().max(0) as u64;
        bar.set_position(done);
        let now = done * 10 / total;
        if lines && now > decile {
            decile = now;
            eprintln!("exporting: {}%", now * 10);
        }
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}: {from} to {to} ({:.1} s of meeting in {seconds:.1} s, {:.1}x real time)",
        args.output.display(),
        total as f64 / 1000.0,
        total as f64 / 1000.0 / seconds.max(0.001)
    );
    Ok(())
}
