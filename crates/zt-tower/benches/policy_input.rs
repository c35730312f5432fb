//! The policy input for a request on an mTLS connection: the peer identity serialized and
//! converted on every request, against the conversion cached once per connection (what
//! `PolicyLayer` does), side by side in one run.
//!
//!   cargo bench -p zt-tower --bench policy_input
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use mtls_verify::PeerIdentity;
use policy_rego::InputOptions;
use zt_tower::{TlsConnectInfo, policy_input};

fn bench(c: &mut Criterion) {
    let ca = ztkit_test_support::TestCa::new("Bench Root");
    let leaf = ca
        .leaf("frontend")
        .spiffe_id("spiffe://example.org/ns/web/sa/frontend")
        .dns("frontend.web.svc")
        .client_auth()
        .issue();
    let peer = Arc::new(PeerIdentity::from_der(&leaf.cert_der).unwrap());
    let addr = "10.0.0.7:51234".parse().unwrap();
    let options = InputOptions::default();
    let request = |info: TlsConnectInfo| {
        let mut req = Request::get("/api/v1/orders/42?expand=items")
            .header("accept", "application/json")
            .header("user-agent", "bench/1.0")
            .body(())
            .unwrap();
        req.extensions_mut().insert(info);
        req
    };

    let mut g = c.benchmark_group("policy_input");
    g.bench_function("identity_converted_per_request", |b| {
        b.iter_batched(
            || request(TlsConnectInfo::new(addr, Some(peer.clone()))),
            |req| black_box(policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    let connection = TlsConnectInfo::new(addr, Some(peer.clone()));
    g.bench_function("identity_cached_per_connection", |b| {
        b.iter_batched(
            || request(connection.clone()),
            |req| black_box(policy_input(&req, &options)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
