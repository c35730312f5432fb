//! Validated tokens per second, against raw aws-lc-rs signature verification of the same
//! token with a key parsed once (the floor), in the same run; the token cache; 1 vs 2 threads;
//! and latency percentiles while the JWKS is refreshed under load (printed at the end).
//!
//!   cargo bench -p jwt-oidc --bench validate -- --warm-up-time 1 --measurement-time 3
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use jwt_oidc::testing::{TestKey, jwks, now_unix};
use jwt_oidc::{
    Algorithm, AuthError, BoxFuture, IssuerConfig, JwksDocument, JwksSource, JwtAuthenticator,
    RequestContext,
};
use serde_json::{Value, json};

const ISS: &str = "https://idp.example.com/realms/main";
const AUD: &str = "orders-api";

/// Polls a validation once: with warm keys it never waits.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("validation had to wait"),
    }
}

/// An RFC 9068 access token as oidc-provider issues it (client credentials).
fn rfc9068_claims() -> Value {
    json!({
        "jti": "qwXIgiQ7f5AWicA0MnOatZwP7zhuURQ7AB27c3ZeYJ3", "sub": "ztkit-test-client",
        "iat": now_unix(), "exp": now_unix() + 24 * 3600, "scope": "api:read",
        "client_id": "ztkit-test-client", "iss": ISS, "aud": AUD,
    })
}

/// A larger, Keycloak-style access token (nested roles, more claims).
fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "exp": now_unix() + 24 * 3600, "iat": now_unix(), "nbf": now_unix(),
        "jti": "6d3c0d6e-6d1c-4a1b-9f0e-8c7d5e4f3a2b", "client_id": "orders-web",
        "scope": "orders:read orders:write profile", "azp": "orders-web",
        "realm_access": {"roles": ["user", "orders-admin"]},
    })
}

struct Case {
    name: String,
    key: Arc<TestKey>,
    token: String,
}

fn case(name: &str, alg: Algorithm) -> Case {
    let key = Arc::new(TestKey::generate(alg, "bench-key"));
    let token = key.token(&claims());
    Case {
        name: name.to_owned(),
        key,
        token,
    }
}

fn authenticator(key: &TestKey, cache: usize) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .issuer(IssuerConfig::static_jwks(ISS, jwks(&[key])))
        .audience(AUD)
        .require_type("at+jwt")
        .token_cache_capacity(cache)
        .build()
        .unwrap()
}

/// The floor: the signature check alone, key parsed once, signature decoded once.
struct Raw {
    key: aws_lc_rs::signature::ParsedPublicKey,
    message: Vec<u8>,
    signature: Vec<u8>,
}

fn raw(c: &Case) -> Raw {
    let jwk = c.key.public_jwk();
    let b64 = |v: &Value| {
        base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(v.as_str().unwrap())
            .unwrap()
    };
    let alg = c.key.algorithm();
    let key = match alg {
        Algorithm::Rs256 => aws_lc_rs::signature::RsaPublicKeyComponents {
            n: b64(&jwk["n"]),
            e: b64(&jwk["e"]),
        }
        .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
        .unwrap(),
        Algorithm::Es256 => {
            let mut point = vec![4u8];
            point.extend(b64(&jwk["x"]));
            point.extend(b64(&jwk["y"]));
            aws_lc_rs::signature::ParsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .unwrap()
        }
        _ => aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ED25519,
            b64(&jwk["x"]),
        )
        .unwrap(),
    };
    let (message, signature) = c.token.rsplit_once('.').unwrap();
    Raw {
        key,
        message: message.as_bytes().to_vec(),
        signature: base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(signature)
            .unwrap(),
    }
}

fn jsonwebtoken_parts(c: &Case) -> (jsonwebtoken::DecodingKey, jsonwebtoken::Validation) {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(c.key.public_jwk()).unwrap();
    let alg = match c.key.algorithm() {
        Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        _ => jsonwebtoken::Algorithm::EdDSA,
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[AUD]);
    v.set_issuer(&[ISS]);
    (jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), v)
}

/// Per algorithm: the larger Keycloak-style token, then the RFC 9068 token of the same key.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (name, alg) in [
        ("ES256", Algorithm::Es256),
        ("RS256-2048", Algorithm::Rs256),
        ("EdDSA", Algorithm::EdDsa),
    ] {
        let big = case(name, alg);
        let token = big.key.token(&rfc9068_claims());
        let small = Case {
            name: format!("{name}/rfc9068"),
            key: Arc::clone(&big.key),
            token,
        };
        out.push(big);
        out.push(small);
    }
    out
}

fn single_thread(c: &mut Criterion) {
    for case in cases() {
        let mut g = c.benchmark_group(format!("validate/{}", case.name));
        g.throughput(Throughput::Elements(1));
        let floor = raw(&case);
        g.bench_function("raw_aws_lc_verify", |b| {
            b.iter(|| {
                floor
                    .key
                    .verify_sig(black_box(&floor.message), black_box(&floor.signature))
                    .unwrap()
            })
        });
        let auth = authenticator(&case.key, 0);
        let ctx = RequestContext::new();
        assert!(ready(auth.validate(&case.token, &ctx)).is_ok());
        g.bench_function("jwt_oidc_cache_off", |b| {
            b.iter(|| ready(auth.validate(black_box(&case.token), &ctx)).unwrap())
        });
        // The miss path under a policy layer: the whole claims set is read too (`raw()`).
        g.bench_function("jwt_oidc_cache_off_with_raw", |b| {
            b.iter(|| {
                let claims = ready(auth.validate(black_box(&case.token), &ctx)).unwrap();
                black_box(claims.raw().as_object().map(serde_json::Map::len))
            })
        });
        let (dk, v) = jsonwebtoken_parts(&case);
        g.bench_function("jsonwebtoken_decode", |b| {
            b.iter(|| jsonwebtoken::decode::<Value>(black_box(&case.token), &dk, &v).unwrap())
        });
        g.finish();
    }
}

fn token_cache(c: &mut Criterion) {
    let case = case("ES256", Algorithm::Es256);
    let auth = authenticator(&case.key, 4096);
    let ctx = RequestContext::new();
    assert!(ready(auth.validate(&case.token, &ctx)).is_ok());
    let mut g = c.benchmark_group("validate_cached/ES256");
    g.throughput(Throughput::Elements(1));
    g.bench_function("jwt_oidc_cache_hit", |b| {
        b.iter(|| ready(auth.validate(black_box(&case.token), &ctx)).unwrap())
    });
    g.bench_function("sha256_of_token", |b| {
        b.iter(|| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(case.token.as_bytes()))
        })
    });
    g.finish();
}

/// N threads validating at once; time per round of N validations (so elements/s is the
/// aggregate rate). Each thread has its own token (distinct clients).
fn threads(c: &mut Criterion) {
    for (alg, cache) in [
        (Algorithm::Es256, 0),
        (Algorithm::Rs256, 0),
        (Algorithm::Es256, 4096),
    ] {
        let key = TestKey::generate(alg, "bench-key");
        let auth = authenticator(&key, cache);
        let tokens: Vec<String> = (0..2)
            .map(|i| {
                key.token(&{
                    let mut c = claims();
                    c["jti"] = json!(i);
                    c
                })
            })
            .collect();
        let label = format!(
            "threads/{alg}/cache_{}",
            if cache > 0 { "on" } else { "off" }
        );
        let mut g = c.benchmark_group(label);
        for n in [1usize, 2] {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{n}_threads"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in tokens.iter().take(n) {
                            let auth = auth.clone();
                            s.spawn(move || {
                                let ctx = RequestContext::new();
                                for _ in 0..iters {
                                    ready(auth.validate(black_box(t), &ctx)).unwrap();
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
        g.finish();
    }
}

/// A key source in memory whose document alternates between two key sets, so every forced
/// refresh publishes a new set (one key stays, one rotates).
struct Alternating {
    docs: [Vec<u8>; 2],
    next: Mutex<usize>,
}

impl JwksSource for Alternating {
    fn fetch(&self) -> BoxFuture<'_, Result<JwksDocument, AuthError>> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let body = self.docs[*n % 2].clone();
        Box::pin(async move {
            Ok(JwksDocument {
                body,
                max_age: None,
            })
        })
    }
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration, usize) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), *v.last().unwrap(), v.len())
}

/// RS256 validations (cache off) on one thread for 2 s, with and without another thread
/// forcing JWKS refreshes back to back.
fn refresh_under_load() {
    let key = TestKey::generate(Algorithm::Rs256, "stable");
    let a = TestKey::generate(Algorithm::Es256, "rot-a");
    let b = TestKey::generate(Algorithm::Es256, "rot-b");
    let source = Arc::new(Alternating {
        docs: [
            jwks(&[&key, &a]).into_bytes(),
            jwks(&[&key, &b]).into_bytes(),
        ],
        next: Mutex::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let auth = rt.block_on(async {
        let auth = JwtAuthenticator::builder()
            .issuer(IssuerConfig::with_source(ISS, source))
            .audience(AUD)
            .token_cache_capacity(0)
            .build()
            .unwrap();
        auth.ensure_keys().await.unwrap();
        auth
    });
    let token = key.token(&claims());
    // `None`: no refresh; `Some(pause)`: forced refreshes back to back on another thread,
    // `pause` apart (zero is a refresh storm, far beyond any real key rotation).
    let run = |refreshing: Option<Duration>| {
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = refreshing.map(|pause| {
            let (auth, stop) = (auth.clone(), Arc::clone(&stop));
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    handle.block_on(auth.refresh(ISS)).unwrap();
                    n += 1;
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
                n
            })
        });
        let ctx = RequestContext::new();
        let mut lat = Vec::with_capacity(200_000);
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            let t = Instant::now();
            ready(auth.validate(black_box(&token), &ctx)).unwrap();
            lat.push(t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        let refreshes = refresher.map_or(0, |h| h.join().unwrap());
        (percentiles(lat), refreshes)
    };
    for (label, refreshing) in [
        ("no refresh", None),
        (
            "forced refresh every 10 ms",
            Some(Duration::from_millis(10)),
        ),
        ("forced refreshes back to back", Some(Duration::ZERO)),
    ] {
        let ((p50, p99, max, n), refreshes) = run(refreshing);
        println!(
            "refresh_under_load/RS256 {label}: {n} validations, p50 {p50:?}, p99 {p99:?}, max {max:?}, {refreshes} forced refreshes"
        );
    }
}

/// The ratio validated/s ÷ raw-verify/s, measured in alternating small batches so that load
/// changes on a shared machine hit both sides alike. Reported two ways: from the fastest
/// batch of each side (preemption only ever adds time, so the minimum is the undisturbed
/// cost) and as the median of per-round ratios.
fn interleaved_ratios() {
    for case in cases() {
        let floor = raw(&case);
        let auth = authenticator(&case.key, 0);
        let ctx = RequestContext::new();
        let n = match case.key.algorithm() {
            Algorithm::Rs256 => 50,
            Algorithm::Es256 => 15,
            _ => 25,
        };
        let (mut raw_min, mut ours_min, mut token_min, mut digest_min) =
            (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
        // jwt-oidc hashes RSA/ECDSA signing inputs itself and calls `verify_digest_sig`; this
        // floor is that call alone, to show how much of the ratio that choice buys.
        let digest_alg = match case.key.algorithm() {
            Algorithm::Rs256 | Algorithm::Es256 => Some(&aws_lc_rs::digest::SHA256),
            _ => None,
        };
        let mut ratios = Vec::new();
        // The miss path under a policy layer: validate, then read the whole claims set.
        let mut with_raw_min = Duration::MAX;
        for _ in 0..400 {
            let t = Instant::now();
            for _ in 0..n {
                floor
                    .key
                    .verify_sig(black_box(&floor.message), black_box(&floor.signature))
                    .unwrap();
            }
            let raw_time = t.elapsed();
            let t = Instant::now();
            for _ in 0..n {
                ready(auth.validate(black_box(&case.token), &ctx)).unwrap();
            }
            let ours = t.elapsed();
            let t = Instant::now();
            for _ in 0..n {
                // The token-level floor: split off the signature, decode it, verify.
                let (message, sig) = black_box(&case.token).rsplit_once('.').unwrap();
                let sig = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(sig).unwrap();
                floor.key.verify_sig(message.as_bytes(), &sig).unwrap();
            }
            token_min = token_min.min(t.elapsed());
            let t = Instant::now();
            for _ in 0..n {
                let claims = ready(auth.validate(black_box(&case.token), &ctx)).unwrap();
                black_box(claims.raw().as_object().map(serde_json::Map::len));
            }
            with_raw_min = with_raw_min.min(t.elapsed());
            if let Some(d) = digest_alg {
                let t = Instant::now();
                for _ in 0..n {
                    let digest = aws_lc_rs::digest::digest(d, black_box(&floor.message));
                    floor
                        .key
                        .verify_digest_sig(&digest, black_box(&floor.signature))
                        .unwrap();
                }
                digest_min = digest_min.min(t.elapsed());
            }
            raw_min = raw_min.min(raw_time);
            ours_min = ours_min.min(ours);
            ratios.push(raw_time.as_secs_f64() / ours.as_secs_f64());
        }
        ratios.sort_by(f64::total_cmp);
        let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "interleaved/{}: raw verify {:.2} µs, split+decode+verify {:.2} µs, jwt_oidc validate (cache off) {:.2} µs; ratio {:.3} to raw verify (median of rounds {:.3}), {:.3} to split+decode+verify",
            case.name,
            us(raw_min),
            us(token_min),
            us(ours_min),
            raw_min.as_secs_f64() / ours_min.as_secs_f64(),
            ratios[ratios.len() / 2],
            token_min.as_secs_f64() / ours_min.as_secs_f64(),
        );
        println!(
            "interleaved/{}: validate + raw() {:.2} µs ({:+.2} µs for the value)",
            case.name,
            us(with_raw_min),
            us(with_raw_min) - us(ours_min),
        );
        if digest_alg.is_some() {
            println!(
                "interleaved/{}: digest + verify_digest_sig {:.2} µs; ratio {:.3} to it",
                case.name,
                us(digest_min),
                digest_min.as_secs_f64() / ours_min.as_secs_f64(),
            );
        }
    }
}

/// 1 vs 2 threads validating at once (each its own token): aggregate rates from the fastest
/// of 60 alternating rounds. The raw signature check is measured the same way, as the
/// ceiling the machine allows at that moment.
fn thread_scaling() {
    let raw_case = case("ES256", Algorithm::Es256);
    let floor = raw(&raw_case);
    let setups: Vec<(String, Option<JwtAuthenticator>, Vec<String>, u32)> = [
        (Algorithm::Es256, 0usize, 60u32),
        (Algorithm::Rs256, 0, 200),
        (Algorithm::Es256, 4096, 20_000),
    ]
    .into_iter()
    .map(|(alg, cache, n)| {
        let key = TestKey::generate(alg, "bench-key");
        let tokens = (0..2)
            .map(|i| {
                let mut c = claims();
                c["jti"] = json!(i);
                key.token(&c)
            })
            .collect();
        let label = format!("{alg}/cache_{}", if cache > 0 { "on" } else { "off" });
        (label, Some(authenticator(&key, cache)), tokens, n)
    })
    .chain(std::iter::once((
        "ES256/raw_aws_lc_verify".to_owned(),
        None,
        vec![String::new(); 2],
        60,
    )))
    .collect();
    for (label, auth, tokens, n) in &setups {
        let run = |threads: usize| -> Duration {
            let start = Instant::now();
            std::thread::scope(|s| {
                let handles: Vec<_> = tokens
                    .iter()
                    .take(threads)
                    .map(|t| {
                        let (auth, floor) = (auth.clone(), &floor);
                        s.spawn(move || {
                            let ctx = RequestContext::new();
                            for _ in 0..*n {
                                match &auth {
                                    Some(a) => drop(ready(a.validate(black_box(t), &ctx)).unwrap()),
                                    None => floor
                                        .key
                                        .verify_sig(
                                            black_box(&floor.message),
                                            black_box(&floor.signature),
                                        )
                                        .unwrap(),
                                }
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
            });
            start.elapsed()
        };
        let (mut one, mut two) = (Duration::MAX, Duration::MAX);
        for _ in 0..60 {
            one = one.min(run(1));
            two = two.min(run(2));
        }
        let rate = |threads: u32, d: Duration| f64::from(threads * n) / d.as_secs_f64();
        println!(
            "threads/{label}: 1 thread {:.0}/s, 2 threads {:.0}/s, scaling {:.2}x",
            rate(1, one),
            rate(2, two),
            rate(2, two) / rate(1, one),
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    single_thread(&mut c);
    token_cache(&mut c);
    threads(&mut c);
    c.final_summary();
    // The printed measurements run unless a filter that names neither is given.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args
        .iter()
        .find(|a| !a.starts_with('-') && a.parse::<f64>().is_err());
    let wanted = |name: &str| filter.is_none_or(|f| f.contains(name));
    // Only under `cargo bench` (not `cargo test --all-targets`, which runs this unoptimized).
    if args.iter().any(|a| a == "--bench") && args.iter().all(|a| a != "--list") {
        if wanted("interleaved") {
            interleaved_ratios();
        }
        if wanted("scaling") {
            thread_scaling();
        }
        if wanted("refresh") {
            refresh_under_load();
        }
    }
}
