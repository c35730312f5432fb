//! ztkit: zero-trust building blocks for Rust network services.
//!
//! This facade re-exports each ztkit crate behind a feature of the same name, so one
//! dependency line brings the parts you use and nothing else:
//!
//! | feature | crate | what it does |
//! |---|---|---|
//! | `mtls-verify` (default) | [`mtls_verify`] | hardened rustls configs, client-chain verification, `PeerIdentity`, hot reload |
//! | `zt-tower` (default) | [`zt_tower`] | the TLS acceptor for axum/tonic and the tower layers |
//!
//! ```
//! use ztkit::mtls_verify::SpiffeId;
//!
//! let id: SpiffeId = "spiffe://example.org/ns/web/sa/frontend".parse().unwrap();
//! assert_eq!(id.trust_domain(), "example.org");
//! ```

#[cfg(feature = "mtls-verify")]
pub use mtls_verify;
#[cfg(feature = "zt-tower")]
pub use zt_tower;
