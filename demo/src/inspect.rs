//! `index`, `seek-range` and (for now) `play`: what the indexes say about local files.

use std::path::Path;

use anyhow::{bail, Result};

pub fn play(_meeting: &Path) -> Result<()> {
    bail!("not yet")
}

pub fn index(_file: &Path) -> Result<()> {
    bail!("not yet")
}

pub fn seek_range(_file: &Path, _at: &str) -> Result<()> {
    bail!("not yet")
}
