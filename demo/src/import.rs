//! `meeting-replay import <dir> -o <meeting>`: a thin wrapper over `tandem::import`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tandem::import;
use tandem::MediaTime;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A BigBlueButton raw recording folder (with events.xml) or a folder of LiveKit track
    /// egress files with their manifests and/or egress_ended EgressInfo JSON; omit it with
    /// --track.
    pub dir: Option<PathBuf>,
    /// The meeting folder to write; it must not exist, and its name is the meeting's name.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// A file of any other recorder: NAME=FILE@OFFSET, the offset where its media starts on
    /// the meeting timeline (90, 1:30.5, 1500ms); the kind comes from the file.
    #[arg(long = "track")]
    pub tracks: Vec<String>,
    /// Who a --track belongs to: NAME=WHO.
    #[arg(long = "participant")]
    pub participants: Vec<String>,
}

/// `NAME=FILE@OFFSET` tracks with their `NAME=WHO` participants.
fn manual(args: &ImportArgs) -> Result<Vec<import::Manual>> {
    let mut out = Vec::new();
    for spec in &args.tracks {
        let (name, rest) =
            spec.split_once('=').with_context(|| format!("--track {spec:?} is not NAME=FILE@OFFSET"))?;
        let (file, offset) =
            rest.rsplit_once('@').with_context(|| format!("--track {spec:?} has no @OFFSET"))?;
        let offset = MediaTime::parse(offset).filter(|t| *t >= MediaTime::ZERO).with_context(|| {
            format!("--track {spec:?}: offset {offset:?} is not a time (90, 1:30.5, 1500ms)")
        })?;
        let participant = args
            .participants
            .iter()
            .find_map(|p| p.split_once('=').filter(|(n, _)| *n == name).map(|(_, who)| who.to_string()));
        out.push(import::Manual {
            name: name.to_string(),
            file: PathBuf::from(file),
            offset_ms: offset.as_nanos().max(0) as u64 / 1_000_000,
            participant,
        });
    }
    for p in &args.participants {
        if !p.split_once('=').is_some_and(|(n, _)| out.iter().any(|t| t.name == n)) {
            bail!("--participant {p:?} is not NAME=WHO for a --track NAME");
        }
    }
    Ok(out)
}

pub fn run(args: ImportArgs) -> Result<()> {
    let (plan, manifest) = match (&args.dir, args.tracks.is_empty()) {
        (Some(dir), true) => import::import(dir, &args.output)?,
        (None, false) => {
            let plan = import::manual(&manual(&args)?)?;
            let manifest = import::write(&plan, &args.output)?;
            (plan, manifest)
        }
        _ => bail!("give a recording folder, or --track NAME=FILE@OFFSET (not both)"),
    };
    let dir = args.dir.clone().unwrap_or_default();
    println!("layout: {}", plan.layout);
    println!(
        "participants: {}",
        if plan.participants.is_empty() { "-".into() } else { plan.participants.join(", ") }
    );
    for (track, planned) in manifest.tracks.iter().zip(&plan.tracks) {
        let spans: Vec<String> = planned
            .segments
            .iter()
            .map(|s| {
                let file = s.source.strip_prefix(&dir).unwrap_or(&s.source);
                format!("{} ({})", import::span_text(s), file.display())
            })
            .collect();
        println!(
            "track {} {} {} {}: {}",
            track.name,
            track.kind,
            track.role,
            track.participant.as_deref().unwrap_or("-"),
            spans.join(", ")
        );
    }
    if let Some(speakers) = manifest.tracks.get(plan.tracks.len()) {
        println!(
            "track {} {} {}: {} talking spans",
            speakers.name,
            speakers.kind,
            speakers.role,
            plan.talking.len()
        );
    }
    for note in &plan.notes {
        println!("note: {note}");
    }
    for skipped in &plan.skipped {
        println!("skipped: {}: {}", skipped.what, skipped.why);
    }
    println!("wrote {}", args.output.join(tandem::manifest::Manifest::FILE_NAME).display());
    Ok(())
}
