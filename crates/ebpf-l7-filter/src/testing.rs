//! The shared differential corpus (feature `testing`): request lines with the path tricks the
//! spec names, and rule sets over the same path vocabulary, generated from a seed so the
//! kernel's `BPF_PROG_TEST_RUN` test, this crate's tests and the fuzz seeds use the same
//! inputs.
//!
//! ```
//! use ebpf_l7_filter::{testing, RuleSet};
//!
//! let rules = RuleSet::from_yaml(&testing::rule_set_yaml(7))?;
//! for payload in testing::request_lines(42, 1000) {
//!     let _ = rules.classify_segment(&payload); // compare with the kernel's verdict here
//! }
//! # Ok::<(), ebpf_l7_filter::FilterError>(())
//! ```

use crate::verdict::{MAX_PATH, Method};

/// A small deterministic generator (SplitMix64): the same seed gives the same corpus on
/// every machine and in every version of this crate's dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice (the first when empty would be asked: callers pass
    /// constants).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

/// Path segments rules and requests are built from, so generated requests often hit
/// generated rules, their segment boundaries (`orders` / `orders-internal`) and gRPC paths.
pub const SEGMENTS: &[&str] = &[
    "api",
    "orders",
    "orders-internal",
    "v1",
    "health",
    "admin",
    "static",
    "a",
    "b",
    "x.y",
    "helloworld.Greeter",
    "SayHello",
    "%20",
    "%3A",
    "...",
];

const OTHER_METHODS: &[&str] = &["PROPFIND", "MKCOL", "X", "QUERY", "BREW"];

/// A canonical path of 1..=4 segments from [`SEGMENTS`] (sometimes `/` alone, sometimes with
/// a trailing `/`).
pub fn canonical_path(rng: &mut Rng) -> String {
    segments_path(rng, 4, |rng, i| {
        // The first two segments mostly from the half rules are built from.
        let range = if i < 2 && rng.chance(80) {
            SEGMENTS.len() / 2
        } else {
            SEGMENTS.len()
        };
        rng.below(range)
    })
}

/// A rule path: like [`canonical_path`] but of 1..=2 segments from the first half of
/// [`SEGMENTS`], so that generated requests match generated rules often.
pub fn rule_path(rng: &mut Rng) -> String {
    segments_path(rng, 2, |rng, _| rng.below(SEGMENTS.len() / 2))
}

/// `/` alone (5 %), or 1..=`extra` segments, the i-th being `SEGMENTS[pick(rng, i)]`,
/// with a trailing `/` 15 % of the time.
fn segments_path(rng: &mut Rng, extra: usize, pick: impl Fn(&mut Rng, usize) -> usize) -> String {
    if rng.chance(5) {
        return "/".to_owned();
    }
    let mut path = String::new();
    for i in 0..=rng.below(extra) {
        path.push('/');
        let index = pick(rng, i);
        path.push_str(SEGMENTS.get(index).copied().unwrap_or("a"));
    }
    if rng.chance(15) {
        path.push('/');
    }
    path
}

/// A path with one of the spec's tricks applied to a canonical one (`//`, `/./`, `/../`,
/// trailing dot segments, percent-encoded `.` `/` `\` or letters, lower-case hex, malformed
/// `%`, `\`, `#`, control and non-ASCII bytes, absolute-form, `*`, empty, no leading `/`).
pub fn tricky_path(rng: &mut Rng) -> Vec<u8> {
    let base = canonical_path(rng).into_bytes();
    let cut = rng.below(base.len() + 1);
    let (head, tail) = base.split_at(cut);
    let insert: &[u8] = match rng.below(22) {
        0 => b"/",
        1 => b"/./",
        2 => b"/../",
        3 => b"/%2e%2e/",
        4 => b"%2F",
        5 => b"%2f",
        6 => b"%5C",
        7 => b"%41",
        8 => b"%7e",
        9 => b"%",
        10 => b"%G1",
        11 => b"\\",
        12 => b"#frag",
        13 => b"\t",
        14 => b"\x00",
        15 => b"\xc3\xa9",
        16 => b"\x7f",
        17 => return [b"http://shop".as_slice(), &base].concat(),
        18 => return b"*".to_vec(),
        19 => return Vec::new(),
        20 => return base.get(1..).unwrap_or_default().to_vec(),
        _ => return [base.as_slice(), b"/.."].concat(),
    };
    [head, insert, tail].concat()
}

/// `n` TCP payloads generated from `seed`: request lines with known, other, lower-case,
/// overlong and truncated methods; canonical and tricky paths; paths of exactly
/// [`MAX_PATH`] and [`MAX_PATH`] + 1 bytes; queries (with `/../` and `#` inside, which do not
/// count); segments cut anywhere (split request lines); and non-request payloads.
pub fn request_lines(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| request_line(&mut rng)).collect()
}

/// One payload of the [`request_lines`] kind.
pub fn request_line(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(5) {
        let junk: &[&[u8]] = &[
            b"",
            b"{\"order\": 7}",
            b"\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GE",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ /",
            b"\x16\x03\x01\x02\x00",
        ];
        return rng.pick(junk).copied().unwrap_or_default().to_vec();
    }
    let method: Vec<u8> = match rng.below(20) {
        0 => rng.pick(OTHER_METHODS).copied().unwrap_or("X").into(),
        1 => b"get".to_vec(),
        2 => b"GETTTTTTTTTTTTTTTTT".to_vec(),
        _ => rng.pick(&Method::ALL).map_or("GET", |m| m.as_str()).into(),
    };
    let path = match rng.below(10) {
        0..=3 => canonical_path(rng).into_bytes(),
        4..=7 => tricky_path(rng),
        _ => {
            // Around the length limit.
            let len = MAX_PATH - 1 + rng.below(3);
            let mut p = canonical_path(rng).into_bytes();
            while p.len() < len {
                p.extend_from_slice(b"/abcdefg");
            }
            p.truncate(len);
            if (p.last() == Some(&b'/') || p.ends_with(b"/."))
                && let Some(last) = p.last_mut()
            {
                *last = b'z';
            }
            p
        }
    };
    let mut line = method;
    line.push(b' ');
    line.extend_from_slice(&path);
    if rng.chance(30) {
        let queries: &[&[u8]] = &[b"?x=1", b"?", b"?a=/../admin", b"?q=%2e#f", b"?x=1&y=2"];
        line.extend_from_slice(rng.pick(queries).copied().unwrap_or_default());
    }
    let ends: &[&[u8]] = &[
        b" HTTP/1.1\r\nHost: shop\r\nUser-Agent: t\r\n\r\n",
        b" HTTP/1.0\r\n\r\n",
        b"\r\n",
        b"\n",
        b" HTTP/1.1\r\nHost: shop\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
    ];
    line.extend_from_slice(rng.pick(ends).copied().unwrap_or_default());
    if rng.chance(15) {
        line.truncate(rng.below(line.len() + 1));
    }
    line
}

/// A valid rule file (YAML) generated from `seed`: 0..=12 rules over [`SEGMENTS`] with every
/// action, exact and prefix paths (with and without trailing `/`, and `/`), with and without
/// `methods`, either default, either mode; complete ties are avoided by construction.
pub fn rule_set_yaml(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let default = if rng.chance(50) { "allow" } else { "deny" };
    let strict = rng.chance(70);
    let mut yaml = format!("default: {default}\nstrict_paths: {strict}\nrules:\n");
    let mut taken: Vec<(bool, String, Option<u16>)> = Vec::new();
    let count = rng.below(13);
    if count == 0 {
        yaml.push_str("  []\n");
    }
    let mut written = 0;
    for i in 0..count {
        let exact = rng.chance(40);
        let path = rule_path(&mut rng);
        let methods: Option<u16> = if rng.chance(50) {
            None
        } else {
            let mut bits = 0u16;
            for _ in 0..=rng.below(3) {
                let m = rng.pick(&Method::ALL).copied().unwrap_or(Method::Get);
                bits |= 1 << m.id();
            }
            Some(bits)
        };
        let ties = taken.iter().any(|(e, p, m)| {
            *e == exact
                && *p == path
                && match (m, methods) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a & b != 0,
                    _ => false,
                }
        });
        if ties {
            continue;
        }
        taken.push((exact, path.clone(), methods));
        let action = *rng.pick(&["allow", "deny", "audit"]).unwrap_or(&"deny");
        let kind = if exact { "exact" } else { "prefix" };
        yaml.push_str(&format!("  - id: r{i}\n    action: {action}\n"));
        if let Some(bits) = methods {
            let names: Vec<&str> = Method::ALL
                .iter()
                .filter(|m| bits & (1 << m.id()) != 0)
                .map(|m| m.as_str())
                .collect();
            yaml.push_str(&format!("    methods: [{}]\n", names.join(", ")));
        }
        yaml.push_str(&format!("    path: {{ {kind}: \"{path}\" }}\n"));
        written += 1;
    }
    if count > 0 && written == 0 {
        yaml.push_str("  []\n");
    }
    yaml
}
