//! How an endpoint reaches peers it has no direct address for: relays and address discovery.
//!
//! Three set-ups matter: loopback/LAN (neither: the default, so tests and LANs never touch
//! the internet), n0's public relays and discovery (a bare ID52 reaches a peer anywhere), and
//! your own relay (`iroh-relay`) and pkarr relay (`iroh-dns-server`), for networks that must
//! not depend on n0 or cannot reach it. Relays and discovery are chosen independently.

use iroh::discovery::pkarr::{PkarrPublisher, PkarrResolver};
use iroh::{RelayMap, RelayMode, RelayUrl};
use url::Url;

use super::protocol::NetError;

/// Relays carry packets between peers that cannot reach each other directly (NATs,
/// firewalls), and help them find a direct path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Relays {
    /// Direct addresses only.
    #[default]
    Disabled,
    /// n0's public relays.
    N0,
    /// These relays only (your own `iroh-relay`, `http://` for one run with `--dev`).
    Custom(Vec<RelayUrl>),
}

/// How an ID52 becomes addresses (a home relay URL, or direct addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Discovery {
    /// None: peers must be dialed with a direct address.
    #[default]
    Disabled,
    /// n0's: publish to its pkarr relay, resolve through its DNS server.
    N0,
    /// One pkarr relay (`iroh-dns-server` serves one at `/pkarr`): the endpoint publishes its
    /// own addresses there and resolves other ID52s there, over plain HTTP(S).
    Pkarr(Url),
}

/// Relays and discovery of one endpoint (client or server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub relays: Relays,
    pub discovery: Discovery,
}

impl Reach {
    /// Direct addresses only: loopback and LAN.
    pub fn direct() -> Reach {
        Reach::default()
    }

    /// n0's public relays and discovery.
    pub fn n0() -> Reach {
        Reach { relays: Relays::N0, discovery: Discovery::N0 }
    }

    /// Own relay and pkarr relay URLs where given, n0's defaults for the rest; each URL is
    /// checked here so a typo fails before anything is bound.
    pub fn custom(relay: Option<&str>, pkarr: Option<&str>) -> Result<Reach, NetError> {
        let relays = match relay {
            Some(url) => Relays::Custom(vec![relay_url(url)?]),
            None => Relays::N0,
        };
        let discovery = match pkarr {
            Some(url) => Discovery::Pkarr(pkarr_url(url)?),
            None => Discovery::N0,
        };
        Ok(Reach { relays, discovery })
    }

    /// True when neither relays nor discovery are on.
    pub fn is_direct(&self) -> bool {
        self.relays == Relays::Disabled && self.discovery == Discovery::Disabled
    }

    /// Applies this set-up to an iroh endpoint builder.
    pub(crate) fn apply(&self, builder: iroh::endpoint::Builder) -> iroh::endpoint::Builder {
        let builder = builder.relay_mode(match &self.relays {
            Relays::Disabled => RelayMode::Disabled,
            Relays::N0 => RelayMode::Default,
            Relays::Custom(urls) => RelayMode::Custom(urls.iter().cloned().collect::<RelayMap>()),
        });
        match &self.discovery {
            // An empty static provider rather than none: with no discovery at all, every dial
            // makes iroh build a "no discovery configured" error, and with RUST_BACKTRACE=1
            // that error's backtrace costs a quarter of a second per connection.
            Discovery::Disabled => builder.discovery(iroh::discovery::static_provider::StaticProvider::new()),
            Discovery::N0 => builder.discovery_n0(),
            Discovery::Pkarr(url) => builder
                .clear_discovery()
                .add_discovery(PkarrPublisher::builder(url.clone()))
                .add_discovery(PkarrResolver::builder(url.clone())),
        }
    }
}

/// An `http(s)://` URL, or an error naming what was given and for what.
fn http_url(what: &str, text: &str) -> Result<Url, NetError> {
    let url = Url::parse(text).map_err(|e| NetError::Config(format!("{what} URL {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(NetError::Config(format!(
            "{what} URL {text:?}: expected http://host[:port] or https://host[:port]"
        )));
    }
    Ok(url)
}

/// A relay's URL (`https://relay.example.org`, or `http://host:port` for `iroh-relay --dev`).
pub fn relay_url(text: &str) -> Result<RelayUrl, NetError> {
    Ok(RelayUrl::from(http_url("relay", text)?))
}

/// A pkarr relay's URL, path included (`https://dns.example.org/pkarr`).
pub fn pkarr_url(text: &str) -> Result<Url, NetError> {
    http_url("pkarr", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_named_in_the_error() {
        assert!(relay_url("http://127.0.0.1:3340").is_ok());
        assert!(pkarr_url("https://dns.example.org/pkarr").is_ok());
        for bad in ["", "relay.example.org", "ftp://x", "http://"] {
            let e = relay_url(bad).expect_err(bad).to_string();
            assert!(e.contains("relay URL") && e.contains(&format!("{bad:?}")), "{e}");
        }
        let e = Reach::custom(None, Some("nope")).expect_err("bad pkarr").to_string();
        assert!(e.contains("pkarr URL \"nope\""), "{e}");
    }

    #[test]
    fn custom_keeps_n0_for_what_is_not_given() {
        let reach = Reach::custom(Some("http://10.0.0.1:3340"), None).expect("reach");
        assert!(matches!(reach.relays, Relays::Custom(ref urls) if urls.len() == 1));
        assert_eq!(reach.discovery, Discovery::N0);
        assert!(Reach::direct().is_direct() && !Reach::n0().is_direct());
    }
}
