//! The stream layer without GStreamer: every packet of some tracks of a meeting, from a folder
//! or from a peer, as one JSON object per line, then a summary.
//!
//! ```text
//! cargo run --release -p tandem --no-default-features --features net --example packets -- \
//!     <meeting folder | id52/meeting> [--addr ip:port] [--key FILE] \
//!     [--relay URL] [--pkarr URL] --track NAME [--track NAME ...] --from T --to T
//! ```
//!
//! A peer is dialed at `--addr`, or found by its ID52 through n0's discovery and relays, or
//! through your own `iroh-relay` (`--relay`) and `iroh-dns-server` (`--pkarr`), as the CLI does.
//!
//! Times on the meeting timeline in milliseconds; each track's packets in decode order, the
//! tracks interleaved as the stream hands them out. A video track starts at the keyframe at or
//! before `--from` (the packets up to `--from` say `decode_only`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tandem::net::{identity, Client, PeerAddr, Reach};
use tandem::stream::{Item, Meeting, MeetingStream, StreamOptions, Subscription};
use tandem::MediaTime;

struct Args {
    meeting: String,
    addr: Option<SocketAddr>,
    key: Option<PathBuf>,
    relay: Option<String>,
    pkarr: Option<String>,
    tracks: Vec<String>,
    from: MediaTime,
    to: MediaTime,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut meeting, mut addr, mut key, mut tracks, mut from, mut to) =
        (None, None, None, Vec::new(), None, None);
    let (mut relay, mut pkarr) = (None, None);
    let time = |v: Option<String>, flag: &str| {
        let v = v.ok_or(format!("{flag} needs a time"))?;
        MediaTime::parse(&v).ok_or(format!("{v:?} is not a time (90, 1:30.5, 1500ms)"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let v = args.next().ok_or("--addr needs ip:port")?;
                addr = Some(v.parse().map_err(|e| format!("--addr {v}: {e}"))?);
            }
            "--key" => key = Some(PathBuf::from(args.next().ok_or("--key needs a file")?)),
            "--relay" => relay = Some(args.next().ok_or("--relay needs a URL")?),
            "--pkarr" => pkarr = Some(args.next().ok_or("--pkarr needs a URL")?),
            "--track" => tracks.push(args.next().ok_or("--track needs a name")?),
            "--from" => from = Some(time(args.next(), "--from")?),
            "--to" => to = Some(time(args.next(), "--to")?),
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => meeting = Some(other.to_string()),
        }
    }
    let usage = "usage: packets <meeting folder | id52/meeting> [--addr ip:port] [--key FILE] [--relay URL] [--pkarr URL] --track NAME ... --from T --to T";
    Ok(Args {
        meeting: meeting.ok_or(usage)?,
        addr,
        key,
        relay,
        pkarr,
        tracks: if tracks.is_empty() { return Err(usage.into()) } else { tracks },
        from: from.ok_or(usage)?,
        to: to.ok_or(usage)?,
    })
}

/// A folder, or `<id52>/<meeting>` on a peer (the runtime serves the peer's reads).
fn open(args: &Args) -> Result<(Option<tokio::runtime::Runtime>, Meeting), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(&args.meeting);
    if path.join("meeting.json").is_file() {
        return Ok((None, Meeting::from_folder(path)?));
    }
    let Some((id52, name)) = args.meeting.split_once('/') else {
        return Err(format!("{}: no meeting folder, and not <id52>/<meeting>", args.meeting).into());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let meeting = rt.block_on(async {
        let mut builder = if args.relay.is_some() || args.pkarr.is_some() {
            Client::builder().reach(Reach::custom(args.relay.as_deref(), args.pkarr.as_deref())?)
        } else {
            Client::builder().internet(args.addr.is_none())
        };
        if let Some(key) = &args.key {
            builder = builder.secret_key(identity::load_or_create_key(key)?);
        }
        let client = builder.spawn().await?;
        let peer = PeerAddr::new(id52, args.addr);
        Ok::<_, Box<dyn std::error::Error>>(Meeting::from_peer(&client, &peer, name).await?)
    })?;
    Ok((Some(rt), meeting))
}

fn ms(t: MediaTime) -> f64 {
    t.as_nanos() as f64 / 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let started = Instant::now();
    let (_runtime, meeting) = open(&args)?;
    let stream = MeetingStream::open(meeting, StreamOptions::default());
    stream.seek(args.from);
    let mut open: Vec<Subscription> =
        args.tracks.iter().map(|name| stream.subscribe(name)).collect::<Result<_, _>>()?;
    let (mut packets, mut first) = (0u64, None);
    while !open.is_empty() {
        let mut done = Vec::new();
        for (i, subscription) in open.iter().enumerate() {
            let Ok(item) = subscription.recv_timeout(Duration::from_millis(2)) else { continue };
            let track = &*subscription.track().name;
            let line = match item.item {
                Item::Packet(p) => {
                    // Past `--to` in decode order: a keyframe, or far enough that no reordered
                    // frame before it can follow.
                    if p.pts > args.to
                        && (p.keyframe || p.pts > args.to.saturating_add(MediaTime::from_secs(1)))
                    {
                        done.push(i);
                        continue;
                    }
                    packets += 1;
                    first.get_or_insert(started.elapsed());
                    json!({
                        "track": track, "pts_ms": ms(p.pts), "dts_ms": p.dts.map(ms),
                        "duration_ms": ms(p.duration), "size": p.data.len(),
                        "keyframe": p.keyframe, "decode_only": p.decode_only,
                    })
                }
                Item::Gap { start, duration } => {
                    if start > args.to {
                        done.push(i);
                    }
                    json!({"track": track, "gap": {"start_ms": ms(start), "duration_ms": ms(duration)}})
                }
                Item::Cue(c) => {
                    json!({"track": track, "cue": {"start_ms": ms(c.start), "end_ms": ms(c.end), "text": c.text}})
                }
                Item::Chunk { offset, data } => {
                    json!({"track": track, "chunk": {"offset": offset, "bytes": data.len()}})
                }
                Item::Damaged { message, .. } => json!({"track": track, "damaged": message}),
                Item::Failed { message } => return Err(format!("{track}: {message}").into()),
                Item::End => {
                    done.push(i);
                    json!({"track": track, "end": true})
                }
            };
            println!("{line}");
        }
        for i in done.into_iter().rev() {
            open.remove(i);
        }
    }
    let (mut bytes, mut requests) = (0, 0);
    for name in &args.tracks {
        let cost = stream.figures(name).fetched();
        bytes += cost.bytes;
        requests += cost.reads;
    }
    let first_ms = first.map(|d| d.as_secs_f64() * 1000.0);
    println!(
        "{}",
        json!({"summary": {"packets": packets, "bytes_fetched": bytes, "requests": requests, "time_to_first_packet_ms": first_ms}})
    );
    Ok(())
}
