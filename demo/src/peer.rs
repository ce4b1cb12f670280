//! `serve`, `info` and `fetch`: the peer link from the command line. (being written)

use anyhow::{bail, Result};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    pub root: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    pub target: String,
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    pub target: String,
}

pub fn serve(_args: ServeArgs) -> Result<()> {
    bail!("not yet")
}

pub fn info(_args: InfoArgs) -> Result<()> {
    bail!("not yet")
}

pub fn fetch(_args: FetchArgs) -> Result<()> {
    bail!("not yet")
}
