//! The messages of SPIFFE's public `workload.proto`, written as prost structs (no protoc).
//! Field numbers and types are the proto's; `ValidateJWTSVIDResponse.claims` is a
//! `google.protobuf.Struct` from `prost-types`.

use std::collections::HashMap;

/// `X509SVIDRequest` (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct X509SvidRequest {}

/// `X509SVIDResponse`: the workload's SVIDs, CRLs and federated bundles.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct X509SvidResponse {
    /// The SVIDs, the default one first.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    /// CRLs (DER), unused by this server.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    /// Federated trust domain (`spiffe://td`) → its CA certificates (concatenated DER).
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

/// `X509SVID`: one SVID.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct X509Svid {
    /// The SPIFFE ID (`spiffe://td/path`).
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The certificate chain, leaf first (concatenated DER).
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    /// The private key (PKCS#8 DER).
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    /// The CA certificates of the SVID's own trust domain (concatenated DER).
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    /// An operator-chosen hint to tell several SVIDs apart.
    #[prost(string, tag = "5")]
    pub hint: String,
}

/// `X509BundlesRequest` (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct X509BundlesRequest {}

/// `X509BundlesResponse`: every trust domain's CA certificates.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct X509BundlesResponse {
    /// CRLs (DER), unused by this server.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub crl: Vec<Vec<u8>>,
    /// Trust domain (`spiffe://td`) → its CA certificates (concatenated DER).
    #[prost(map = "string, bytes", tag = "2")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// `JWTSVIDRequest`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtSvidRequest {
    /// Audiences the token is for (at least one).
    #[prost(string, repeated, tag = "1")]
    pub audience: Vec<String>,
    /// The SPIFFE ID wanted (optional).
    #[prost(string, tag = "2")]
    pub spiffe_id: String,
}

/// `JWTSVIDResponse`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtSvidResponse {
    /// The JWT-SVIDs.
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<JwtSvid>,
}

/// `JWTSVID`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtSvid {
    /// The SPIFFE ID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The token.
    #[prost(string, tag = "2")]
    pub svid: String,
    /// An operator-chosen hint.
    #[prost(string, tag = "3")]
    pub hint: String,
}

/// `JWTBundlesRequest` (empty).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtBundlesRequest {}

/// `JWTBundlesResponse`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JwtBundlesResponse {
    /// Trust domain → its JWKS document.
    #[prost(map = "string, bytes", tag = "1")]
    pub bundles: HashMap<String, Vec<u8>>,
}

/// `ValidateJWTSVIDRequest`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ValidateJwtSvidRequest {
    /// The audience the token must carry.
    #[prost(string, tag = "1")]
    pub audience: String,
    /// The token.
    #[prost(string, tag = "2")]
    pub svid: String,
}

/// `ValidateJWTSVIDResponse`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ValidateJwtSvidResponse {
    /// The token's SPIFFE ID.
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// The token's claims.
    #[prost(message, optional, tag = "2")]
    pub claims: Option<prost_types::Struct>,
}
