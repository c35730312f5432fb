//! What `L7RulesLayer` adds to a request: a tower stack around a trivial service, with and
//! without the layer, side by side in one run (allowed HTTP path, denied path, gRPC path).
//!
//!   cargo bench -p zt-tower --bench l7_rules
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ebpf_l7_filter::RuleSet;
use futures_util::FutureExt as _;
use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt};
use zt_tower::L7RulesLayer;

const RULES: &str = r#"
default: deny
rules:
  - { id: health, action: allow, methods: [GET], path: { exact: "/health" } }
  - { id: orders-read, action: allow, methods: [GET, HEAD], path: { prefix: "/api/orders" } }
  - { id: orders-write, action: audit, methods: [POST], path: { prefix: "/api/orders" } }
  - { id: admin, action: deny, path: { prefix: "/admin" } }
  - { id: greeter, action: allow, methods: [POST], path: { prefix: "/helloworld.Greeter" } }
"#;

fn call<S>(svc: &mut S, req: Request<()>) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible>,
{
    // Every future here is ready at once: no runtime needed.
    svc.ready().now_or_never().unwrap().unwrap();
    svc.call(req).now_or_never().unwrap().unwrap()
}

fn bench(c: &mut Criterion) {
    let app = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let mut bare = ServiceBuilder::new().service(app);
    let mut ruled = ServiceBuilder::new()
        .layer(L7RulesLayer::new(RuleSet::from_yaml(RULES).unwrap()))
        .service(app);
    let get = |path: &str| Request::get(path).body(()).unwrap();
    let grpc = || {
        Request::post("/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let mut g = c.benchmark_group("l7_rules");
    g.bench_function("no_layer", |b| {
        b.iter(|| black_box(call(&mut bare, get("/api/orders/7?expand=items"))))
    });
    g.bench_function("allowed", |b| {
        b.iter(|| black_box(call(&mut ruled, get("/api/orders/7?expand=items"))))
    });
    g.bench_function("denied", |b| {
        b.iter(|| black_box(call(&mut ruled, get("/admin/users"))))
    });
    g.bench_function("grpc_allowed", |b| {
        b.iter(|| black_box(call(&mut ruled, grpc())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
