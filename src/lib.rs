//! ztkit: zero-trust building blocks for Rust network services.
//!
//! This facade re-exports each ztkit crate behind a feature of the same name, so one
//! dependency line brings the parts you use and nothing else:
//!
//! | feature | crate | what it does |
//! |---|---|---|
//! | `mtls-verify` (default) | [`mtls_verify`] | hardened rustls configs, client-chain verification, `PeerIdentity`, hot reload |
//! | `jwt-oidc` (default) | [`jwt_oidc`] | OIDC discovery, JWKS cache, strict JWT validation |
//! | `policy-rego` (default) | [`policy_rego`] | Rego policies and OPA bundles with hot reload |
//! | `zt-audit` (default) | [`zt_audit`] | append-only, hash-chained audit log |
//! | `zt-rotate` (default) | [`zt_rotate`] | the rotation seam the others share: holder trait, status, file watching, task handles |
//! | `svid-client` | `svid_client` | SPIFFE X.509-SVIDs from the Workload API rotating into `mtls-verify`'s holders |
//! | `ebpf` | `ebpf_l7_filter` | HTTP method/path rules for the kernel tc filter and the userspace twin (`L7RulesLayer`) |
//! | `zt-tower` (default) | [`zt_tower`] | the TLS acceptor for axum/tonic and the tower layers (with the layers of the crates enabled above) |
//!
//! ```
//! use ztkit::mtls_verify::SpiffeId;
//!
//! let id: SpiffeId = "spiffe://example.org/ns/web/sa/frontend".parse().unwrap();
//! assert_eq!(id.trust_domain(), "example.org");
//! ```

#[cfg(feature = "ebpf")]
pub use ebpf_l7_filter;
#[cfg(feature = "jwt-oidc")]
pub use jwt_oidc;
#[cfg(feature = "mtls-verify")]
pub use mtls_verify;
#[cfg(feature = "policy-rego")]
pub use policy_rego;
#[cfg(feature = "svid-client")]
pub use svid_client;
#[cfg(feature = "zt-audit")]
pub use zt_audit;
#[cfg(feature = "zt-rotate")]
pub use zt_rotate;
#[cfg(feature = "zt-tower")]
pub use zt_tower;
