//! `meeting-replay`: serve a folder (or a bucket) of meetings, inspect their indexes, fetch from a peer, and
//! play a meeting. Thin: every command is a few calls into the `tandem` crate.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod import;
mod inspect;
mod peer;
mod playback;
mod screen;

#[derive(Debug, Parser)]
#[command(name = "meeting-replay", version, about = "Replay recorded meetings, locally or from a peer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play a meeting (a folder, or <id52>/<meeting> on a peer): in a window when there is a
    /// display, headless otherwise.
    Play(playback::PlayArgs),
    /// Write what a time shows as a PNG: the grid, or one track at its own size.
    Snapshot(playback::SnapshotArgs),
    /// Write a stretch of a meeting as an MP4 clip (H.264/AAC), as fast as the machine allows.
    Export(playback::ExportArgs),
    /// List a meeting folder's tracks and what opening their indexes costs.
    Tracks {
        /// A meeting folder (with meeting.json).
        meeting: PathBuf,
    },
    /// Print one JSON line per keyframe of a media file, then a summary line.
    Index {
        /// A local file, or a peer's track: <id52>/<meeting>/<track>.
        target: String,
        #[command(flatten)]
        dial: peer::DialArgs,
    },
    /// Print the keyframe at or before a time and the byte range needed to show it.
    SeekRange {
        /// A local file, or a peer's track: <id52>/<meeting>/<track>.
        target: String,
        /// Media time: 90, 1:30.5, 1500ms.
        #[arg(long)]
        at: String,
        #[command(flatten)]
        dial: peer::DialArgs,
    },
    /// Serve a folder of meetings, or s3://BUCKET[/PREFIX], to peers.
    Serve(peer::ServeArgs),
    /// Print a remote stream's tracks: <id52>/<meeting>.
    Info(peer::InfoArgs),
    /// Fetch a byte range of a remote track: <id52>/<meeting>/<track>.
    Fetch(peer::FetchArgs),
    /// Turn a BigBlueButton raw recording or LiveKit track egress output into a meeting folder.
    Import(import::ImportArgs),
}

/// Errors are printed as one message with its causes, never a backtrace, and exit 1.
/// When the process started: `play` counts its opening time from here, dial and
/// `stream.get` included, as a person waiting would.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

pub(crate) fn since_start() -> std::time::Duration {
    STARTED.get_or_init(std::time::Instant::now).elapsed()
}

fn main() -> std::process::ExitCode {
    STARTED.get_or_init(std::time::Instant::now);
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Warnings from the engine (a frozen track in an export, say) go to stderr, one line each;
/// `RUST_LOG` chooses more. `play` starts none: it shows the player's events itself, on the
/// screen or as lines.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}

fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Play(_)) {
        init_logging();
    }
    match cli.command {
        Command::Play(args) => playback::play(args),
        Command::Snapshot(args) => playback::snapshot(args),
        Command::Export(args) => playback::export(args),
        Command::Tracks { meeting } => inspect::play(&meeting),
        Command::Index { target, dial } => inspect::index(&target, &dial),
        Command::SeekRange { target, at, dial } => inspect::seek_range(&target, &at, &dial),
        Command::Serve(args) => peer::serve(args),
        Command::Info(args) => peer::info(args),
        Command::Fetch(args) => peer::fetch(args),
        Command::Import(args) => import::run(args),
    }
}
