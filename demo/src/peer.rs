//! `serve`, `info` and `fetch`: the peer link from the command line.
//!
//! - `serve <root>` serves every meeting folder under `<root>` until Ctrl-C; `serve
//!   s3://BUCKET[/PREFIX]` serves the meetings in a bucket (configured from the standard
//!   `AWS_*` environment; `tandem::net::s3`). Its identity
//!   lives in a key file (default `$XDG_CONFIG_HOME/tandem/server.key`, else
//!   `~/.config/tandem/server.key`; created mode 0600 on first run), so the ID52 it prints
//!   stays the same across restarts.
//! - `info <id52>/<meeting>` and `fetch <id52>/<meeting>/<track>` dial the peer at `--addr`
//!   (loopback/LAN, no relays) or, without it, through n0 discovery and relays.
//! - `--relay URL` and `--pkarr URL` (every command that serves or dials) replace n0's relays
//!   and n0's discovery with your own `iroh-relay` and `iroh-dns-server`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tandem::net::server::{Loader, Resolver, ServerBuilder};
use tandem::net::{
    identity, reach, Client, Discovery, FolderProvider, PeerAddr, Reach, Relays, RemoteTrack, S3Config,
    S3Location, S3Provider,
};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A folder of meetings (sub-folders with meeting.json), or s3://BUCKET[/PREFIX]: the
    /// meetings are then <PREFIX>/<meeting>/meeting.json and their files in the bucket, read
    /// with the standard AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION and AWS_ALLOW_HTTP (true for a plain http:// endpoint).
    pub root: PathBuf,
    /// Key file holding the server identity [default: ~/.config/tandem/server.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Only these client ID52s may fetch (repeatable); everyone when absent.
    #[arg(long = "allow", value_name = "ID52")]
    pub allow: Vec<String>,
    /// Local UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub bind: SocketAddr,
    /// No relays and no discovery: reachable by direct address only (loopback, LAN).
    #[arg(long, conflicts_with_all = ["relay", "pkarr"])]
    pub no_relay: bool,
    #[command(flatten)]
    pub reach: ReachArgs,
}

/// Own relay and discovery servers instead of n0's public ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ReachArgs {
    /// Relay to use instead of n0's (an `iroh-relay`): https://relay.example.org, or
    /// http://host:port for `iroh-relay --dev`. Name it on both sides.
    #[arg(long, value_name = "URL")]
    pub relay: Option<String>,
    /// Pkarr relay to publish our address to (serve) or resolve the peer's ID52 through
    /// (dialing commands), instead of n0's DNS: an `iroh-dns-server`'s http(s)://host[:port]/pkarr.
    #[arg(long, value_name = "URL")]
    pub pkarr: Option<String>,
}

impl ReachArgs {
    /// `--relay` and `--pkarr` over `base` (n0's, or none for direct addresses).
    pub fn reach(&self, base: Reach) -> Result<Reach> {
        let mut out = base;
        if let Some(url) = &self.relay {
            out.relays = Relays::Custom(vec![reach::relay_url(url)?]);
        }
        if let Some(url) = &self.pkarr {
            out.discovery = Discovery::Pkarr(reach::pkarr_url(url)?);
        }
        Ok(out)
    }

    /// The same flags, to print in hints for the other side.
    fn flags(&self) -> String {
        let mut out = String::new();
        if let Some(url) = &self.relay {
            out.push_str(&format!(" --relay {url}"));
        }
        if let Some(url) = &self.pkarr {
            out.push_str(&format!(" --pkarr {url}"));
        }
        out
    }
}

/// How the fetching commands reach a peer and who they are.
#[derive(Debug, clap::Args)]
pub struct DialArgs {
    /// The peer's direct address (loopback/LAN); without it, discovery and relays are used
    /// (n0's, or --relay and --pkarr).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Key file for this client's identity (for servers with an allow-list); fresh when absent.
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub reach: ReachArgs,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// `<id52>/<meeting>`
    pub target: String,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Print the stream description as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// `<id52>/<meeting>/<track>`
    pub target: String,
    /// Bytes to fetch, like `curl -r`: `start-end` (end inclusive) or `start-` (to the end).
    #[arg(long)]
    pub range: String,
    /// Which of the track's files: a track a recorder cut into several files (a camera turned
    /// off and on) has one per file, numbered from 0 in the order `info` lists their sizes.
    #[arg(long, default_value_t = 0)]
    pub file: u32,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

fn default_key_file() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("tandem").join("server.key")
}

/// Meeting folder names under `root`, for the hints printed at start.
fn meetings(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("meeting.json").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn serve(args: ServeArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let key_file = args.key.clone().unwrap_or_else(default_key_file);
        let key = identity::load_or_create_key(&key_file)?;
        let root = args.root.to_string_lossy().into_owned();
        if root.starts_with("s3://") {
            let location = S3Location::parse(&root)?;
            let provider = S3Provider::new(S3Config::from_env(location))?;
            // The bucket answers before anyone is told to connect: a wrong name, endpoint or
            // key fails here, within the provider's deadline.
            let names = provider.meetings().await.with_context(|| format!("serving {root}"))?;
            let what = format!("{root} (at {})", provider.endpoint());
            run_server(provider.server_builder().secret_key(key), &args, &key_file, &what, names).await
        } else {
            let provider = FolderProvider::new(&args.root)?;
            let names = meetings(provider.root());
            let what = provider.root().display().to_string();
            run_server(provider.server_builder().secret_key(key), &args, &key_file, &what, names).await
        }
    })
}

/// Starts `builder` (with its identity) as `args` say, prints who it is and how to reach it, serves until Ctrl-C.
async fn run_server<R: Resolver, L: Loader>(
    builder: ServerBuilder<R, L>,
    args: &ServeArgs,
    key_file: &Path,
    what: &str,
    names: Vec<String>,
) -> Result<()> {
    let base = if args.no_relay { Reach::direct() } else { Reach::n0() };
    let reach = args.reach.reach(base)?;
    let mut builder = builder.bind(args.bind).reach(reach);
    if !args.allow.is_empty() {
        builder = builder.allow(args.allow.clone());
    }
    let server = builder.spawn().await?;
    let addrs = server.direct_addrs();
    println!("serving {what} as {}", server.id52());
    println!("key file: {}", key_file.display());
    for addr in &addrs {
        println!("listening on {addr}");
    }
    if !args.allow.is_empty() {
        println!("allowed clients: {}", args.allow.join(", "));
    }
    let example = names.first().cloned().unwrap_or_else(|| "<meeting>".into());
    let addr = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first());
    println!("meetings: {}", if names.is_empty() { "(none yet)".to_string() } else { names.join(", ") });
    println!("on the other side:");
    if let Some(addr) = addr {
        println!("  meeting-replay play {}/{example} --addr {addr}", server.id52());
        println!("  meeting-replay info {}/{example} --addr {addr}", server.id52());
    }
    if !args.no_relay {
        println!("  meeting-replay play {}/{example}{}", server.id52(), args.reach.flags());
    }
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    eprintln!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Splits `<id52>/<meeting>[/<track>]`.
fn parse_target(target: &str, with_track: bool) -> Result<(String, String, Option<String>)> {
    let parts: Vec<&str> = target.split('/').collect();
    match (parts.as_slice(), with_track) {
        ([id52, meeting], false) => Ok((id52.to_string(), meeting.to_string(), None)),
        ([id52, meeting, track], true) => {
            Ok((id52.to_string(), meeting.to_string(), Some(track.to_string())))
        }
        _ if with_track => bail!("expected <id52>/<meeting>/<track>, got {target:?}"),
        _ => bail!("expected <id52>/<meeting>, got {target:?}"),
    }
}

async fn dial(dial: &DialArgs, id52: &str) -> Result<(Client, PeerAddr)> {
    // With a direct address, relays and discovery only when asked for by name.
    let base = if dial.addr.is_some() { Reach::direct() } else { Reach::n0() };
    let mut builder = Client::builder().reach(dial.reach.reach(base)?);
    if let Some(key) = &dial.key {
        builder = builder.secret_key(identity::load_or_create_key(key)?);
    }
    let client = builder.spawn().await?;
    let peer = PeerAddr::new(id52, dial.addr);
    peer.node_addr()?;
    Ok((client, peer))
}

/// A meeting on a peer (`<id52>/<meeting>`), for the player. The runtime must outlive the
/// meeting: its reads run there.
pub fn open_remote_meeting(
    target: &str,
    dial_args: &DialArgs,
) -> Result<(tokio::runtime::Runtime, tandem::player::Meeting)> {
    let (id52, meeting, _) = parse_target(target, false)?;
    let rt = runtime()?;
    let opened = rt.block_on(async {
        let (client, peer) = dial(dial_args, &id52).await?;
        tandem::player::Meeting::from_peer(&client, &peer, &meeting)
            .await
            .with_context(|| format!("opening {meeting} on {id52}"))
    })?;
    Ok((rt, opened))
}

/// A remote track as a [`tandem::RangeSource`], for commands that index over the network. The
/// runtime must outlive the track: its reads run there while the calling thread waits.
pub fn open_remote_track(
    target: &str,
    dial_args: &DialArgs,
) -> Result<(tokio::runtime::Runtime, RemoteTrack)> {
    let (id52, meeting, track) = parse_target(target, true)?;
    let track = track.unwrap_or_default();
    let rt = runtime()?;
    let remote = rt.block_on(async {
        let (client, peer) = dial(dial_args, &id52).await?;
        let stream = client.get(&peer, &meeting).await.with_context(|| format!("stream.get {meeting}"))?;
        anyhow::Ok(RemoteTrack::new(client, peer, &stream, &track)?)
    })?;
    Ok((rt, remote))
}

pub fn info(args: InfoArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let (id52, meeting, _) = parse_target(&args.target, false)?;
        let (client, peer) = dial(&args.dial, &id52).await?;
        let stream = client.get(&peer, &meeting).await.with_context(|| format!("stream.get {meeting}"))?;
        client.close().await;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&stream)?);
            return Ok(());
        }
        println!(
            "{}  duration {}  read window {}..{} bytes",
            stream.name,
            stream.duration_ms.map(|d| format!("{:.1} s", d as f64 / 1000.0)).unwrap_or_else(|| "?".into()),
            stream.read_window.min,
            stream.read_window.max
        );
        println!(
            "{:<20} {:<9} {:<12} {:<12} {:>12}  segments (ms)",
            "track", "kind", "role", "participant", "bytes"
        );
        for t in &stream.tracks {
            let segments: Vec<String> = t
                .segments
                .iter()
                .map(|s| {
                    let end = s.end_ms.map(|e| e.to_string()).unwrap_or_default();
                    if s.media_start_ms > 0 {
                        format!("{}-{end} (media {})", s.start_ms, s.media_start_ms)
                    } else {
                        format!("{}-{end}", s.start_ms)
                    }
                })
                .collect();
            println!(
                "{:<20} {:<9} {:<12} {:<12} {:>12}  {}",
                t.name,
                t.kind,
                t.role,
                t.participant.as_deref().unwrap_or("-"),
                t.sizes.iter().map(u64::to_string).collect::<Vec<_>>().join("+"),
                segments.join(", ")
            );
        }
        Ok(())
    })
}

/// `start-end` (inclusive) or `start-` over a track of `size` bytes -> (start, len).
fn parse_range(range: &str, size: u64) -> Result<(u64, u64)> {
    let (start, end) = range.split_once('-').with_context(|| format!("range {range:?} is not start-end"))?;
    let start: u64 = start.trim().parse().with_context(|| format!("range start {start:?}"))?;
    let last = size.checked_sub(1).context("the track is empty")?;
    let end: u64 =
        if end.trim().is_empty() { last } else { end.trim().parse::<u64>().context("range end")?.min(last) };
    if start > end {
        bail!("range {range:?} is empty or starts past the end ({size} bytes)");
    }
    Ok((start, end - start + 1))
}

pub fn fetch(args: FetchArgs) -> Result<()> {
    runtime()?.block_on(async move {
        let (id52, meeting, track) = parse_target(&args.target, true)?;
        let track = track.unwrap_or_default();
        let (client, peer) = dial(&args.dial, &id52).await?;
        let stream = client.get(&peer, &meeting).await.with_context(|| format!("stream.get {meeting}"))?;
        let remote = RemoteTrack::file(client.clone(), peer, &stream, &track, args.file)?;
        let size = tandem::RangeSource::len(&remote);
        let (start, len) = parse_range(&args.range, size)?;
        let step = stream.read_window.max.max(1);
        let pieces: Vec<(u64, u64)> =
            (0..len.div_ceil(step)).map(|i| (start + i * step, step.min(len - i * step))).collect();
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?,
        );
        let began = std::time::Instant::now();
        let mut chunks = futures::stream::iter(pieces).map(|(at, n)| remote.read(at, n)).buffered(4);
        let mut written = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            out.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        out.flush()?;
        let secs = began.elapsed().as_secs_f64();
        let path = client.path(remote.peer()).await.map(|p| p.to_string()).unwrap_or_else(|| "none".into());
        client.close().await;
        eprintln!(
            "wrote {written} bytes ({start}-{}) to {} in {secs:.3} s ({:.1} MB/s), path {path}",
            start + len - 1,
            args.output.display(),
            written as f64 / 1e6 / secs.max(1e-9)
        );
        Ok(())
    })
}
