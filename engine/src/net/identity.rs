//! Peer identities: fastn ID52 keys kept in a key file, and their iroh equivalents.
//!
//! An ID52 is the BASE32_DNSSEC encoding of an ed25519 public key; iroh's `NodeId` is the same
//! public key, so the two convert through their 32 bytes. The secret key lives in a file
//! (64 hex characters, mode 0600) created on first run, so a server keeps its ID52 across
//! restarts. No OS keyring: headless machines fall back to stores that keep nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use super::protocol::NetError;

fn identity_err(context: &str, path: &Path, e: impl std::fmt::Display) -> NetError {
    NetError::Identity(format!("{context} {}: {e}", path.display()))
}

/// Loads the secret key at `path`, or creates it (mode 0600) when the file does not exist.
///
/// Creation is atomic: the key is written to a temporary file in the same folder and hard-linked
/// into place, so a reader never sees a half-written key and two first runs racing each other
/// end up with the same key.
pub fn load_or_create_key(path: &Path) -> Result<fastn_id52::SecretKey, NetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => return parse_key(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(identity_err("reading key file", path, e)),
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| identity_err("creating folder for", path, e))?;
    let key = fastn_id52::SecretKey::generate();
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(format!("{key}\n").as_bytes())?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(identity_err("writing key file", &tmp, e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        // Someone else created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text =
                std::fs::read_to_string(path).map_err(|e| identity_err("reading key file", path, e))?;
            parse_key(path, &text)
        }
        Err(e) => Err(identity_err("creating key file", path, e)),
    }
}

/// Parses the 64 hex characters fastn-id52 writes. Decoded here rather than with
/// `SecretKey::from_str`, whose base32 fallback panics on input of the wrong length.
fn parse_key(path: &Path, text: &str) -> Result<fastn_id52::SecretKey, NetError> {
    let text = text.trim().as_bytes();
    let bad = || identity_err("parsing key file", path, "expected 64 hex characters");
    if text.len() != 64 {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
    }
    Ok(fastn_id52::SecretKey::from_bytes(&bytes))
}

/// The iroh secret key with the same ed25519 secret.
pub fn to_iroh_secret(key: &fastn_id52::SecretKey) -> iroh::SecretKey {
    iroh::SecretKey::from_bytes(&key.to_bytes())
}

/// The ID52 of an iroh node id.
pub fn node_id_to_id52(node: &iroh::NodeId) -> String {
    match fastn_id52::PublicKey::from_bytes(node.as_bytes()) {
        Ok(key) => key.to_string(),
        // Both sides validate the same curve points, so this cannot happen for a NodeId that
        // iroh accepted; keep a readable fallback rather than panic.
        Err(_) => node.to_string(),
    }
}

/// Parses an ID52 into iroh's node id.
pub fn id52_to_node_id(id52: &str) -> Result<iroh::NodeId, NetError> {
    let key = fastn_id52::PublicKey::from_str(id52)
        .map_err(|e| NetError::Identity(format!("{id52:?} is not an ID52: {e}")))?;
    iroh::NodeId::from_bytes(&key.to_bytes())
        .map_err(|e| NetError::Identity(format!("{id52:?} is not a valid public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("server.key");
        let first = load_or_create_key(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create_key(&path).expect("load");
        assert_eq!(first.id52(), second.id52());
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(path.parent().expect("parent")).expect("dir").count(), 1);
    }

    #[test]
    fn id52_equals_iroh_node_id() {
        let key = fastn_id52::SecretKey::generate();
        let iroh_key = to_iroh_secret(&key);
        let node = iroh_key.public();
        assert_eq!(node_id_to_id52(&node), key.id52());
        assert_eq!(id52_to_node_id(&key.id52()).expect("parse"), node);
        assert!(id52_to_node_id("not-an-id").is_err());
    }

    #[test]
    fn corrupt_key_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        for garbage in ["garbage", "", &"z".repeat(64), &"ab".repeat(40)] {
            std::fs::write(&path, garbage).expect("write");
            assert!(matches!(load_or_create_key(&path), Err(NetError::Identity(_))), "{garbage:?}");
        }
        // A key written by fastn-id52 (hex) loads back to the same identity.
        let key = fastn_id52::SecretKey::generate();
        std::fs::write(&path, format!("{key}\n")).expect("write");
        assert_eq!(load_or_create_key(&path).expect("load").id52(), key.id52());
    }
}
