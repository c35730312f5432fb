//! Hardened rustls configuration, client-certificate verification and peer identity.
