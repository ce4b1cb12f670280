//! `meeting-replay import <dir> -o <meeting>`: a thin wrapper over `tandem::import`.

use std::path::PathBuf;

use anyhow::Result;
use tandem::import;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A BigBlueButton raw recording folder (with events.xml) or a folder of LiveKit track
    /// egress files with their manifests and/or egress_ended EgressInfo JSON.
    pub dir: PathBuf,
    /// The meeting folder to write; it must not exist, and its name is the meeting's name.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn run(args: ImportArgs) -> Result<()> {
    let (plan, manifest) = import::import(&args.dir, &args.output)?;
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
                let file = s.source.strip_prefix(&args.dir).unwrap_or(&s.source);
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
