//! Arbitrary tokens through the JWT validator (static JWKS, token cache on). Mode 0: the
//! input is the token text. Mode 1: the input is `header JSON 0xFF claims JSON`, encoded and
//! signed with the trusted key, so the claim checks behind the signature are reached too.
#![no_main]

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use jwt_oidc::testing::{TestKey, b64url, jwks, sign_parts};
use jwt_oidc::{Algorithm, IssuerConfig, JwtAuthenticator, RequestContext};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    key: TestKey,
    auth: JwtAuthenticator,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = TestKey::generate(Algorithm::Es256, "k1");
        let rsa = TestKey::generate(Algorithm::Rs256, "r1");
        let auth = JwtAuthenticator::builder()
            .issuer(IssuerConfig::static_jwks("https://idp.example", jwks(&[&key, &rsa])))
            .audience("api")
            .require_claim("sub")
            .roles_claim("realm_access.roles")
            .build()
            .expect("fixture authenticator");
        Fixture { key, auth }
    })
}

fn ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let split = rest.iter().position(|b| *b == 0xFF).unwrap_or(rest.len());
        let (header, payload) = rest.split_at(split);
        let payload = payload.get(1..).unwrap_or_default();
        sign_parts(&f.key, &b64url(header), &b64url(payload))
    };
    let ctx = RequestContext::new().with_client_cert_sha256([7; 32]);
    let result = ready(f.auth.validate(&token, &ctx)).expect("static keys never wait");
    if let Ok(claims) = result {
        // Lazily parsed parts must not panic either.
        let _ = claims.raw();
        let _ = claims.roles();
        let _ = claims.scopes().count();
    } else if let Err(e) = result {
        let _ = e.to_string();
        let _ = e.bearer_error();
    }
});
