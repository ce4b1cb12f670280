//! The peer link: serve and fetch track byte ranges (`stream.get`, `stream.read_range`) over
//! iroh/QUIC with fastn ID52 identities. (being written)
