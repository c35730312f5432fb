//! Shared helpers for the integration tests: fixture paths and the decision-table format.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use policy_rego::{InputBuilder, InputOptions, PolicyInput};
use serde::Deserialize;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// One row of a decision table (`tests/fixtures/*_cases.yaml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub token: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A user name sent as HTTP Basic credentials (password "pw").
    #[serde(default)]
    pub basic: Option<String>,
    pub allow: bool,
    /// A substring one of the decision's reasons must contain.
    #[serde(default)]
    pub reason: Option<String>,
}

pub fn cases(file: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

impl Case {
    /// The request as a client would send it, turned into the policy input.
    pub fn input(&self, options: &InputOptions) -> PolicyInput {
        let mut req = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header("host", "api.example.org")
            .header("user-agent", "decision-table/1");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(user) = &self.basic {
            let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
            req = req.header("authorization", format!("Basic {creds}"));
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let mut b = InputBuilder::from_parts(&parts).peer_addr("10.0.0.7:51234".parse().unwrap());
        if let Some(p) = &self.principal {
            b = b.identity(serde_json::json!({"spiffe_id": p, "dns_sans": []}));
        }
        if let Some(t) = &self.token {
            b = b.token(t.clone());
        }
        b.build(options)
    }
}
