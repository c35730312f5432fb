//! Byte layouts shared with `bpf/l7_filter.c`: the config value, the rule keys and values,
//! and the event. Kept as byte arrays (aya's `Pod` is implemented for `[u8; N]`), so no
//! `unsafe impl Pod` is needed; a change on either side must be made on both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{FLOOR_ANY, MAX_PATH, PathMatch, RuleSet, Verdict};

/// Bytes of `struct l7_config`: 16 bytes of header, then the 65,536-bit port bitmap.
pub(crate) const CONFIG_SIZE: usize = 16 + 8192;
/// Bytes of `struct rule_key` after its `prefixlen`: generation, method, path, end byte, pad.
pub(crate) const RULE_KEY_DATA: usize = 2 + MAX_PATH + 2;
/// Bytes of `struct l7_event`.
pub(crate) const EVENT_SIZE: usize = 136;

/// `CFG_STRICT`: refusals are denied.
const CFG_STRICT: u8 = 1;
/// `CFG_NO_WAKEUP`: events are submitted without waking the reader (it polls on a timer).
pub(crate) const CFG_NO_WAKEUP: u8 = 2;

/// The config value: default verdict, strict flag, the generation of the rule keys in
/// force, the non-strict floors, and the ports.
pub(crate) fn config_value(
    rules: &RuleSet,
    generation: u8,
    ports: &[u16],
    extra_flags: u8,
) -> [u8; CONFIG_SIZE] {
    let mut value = [0u8; CONFIG_SIZE];
    value[0] = rules.default_verdict().code();
    value[1] = extra_flags | if rules.strict_paths() { CFG_STRICT } else { 0 };
    value[2] = generation;
    for (slot, floor) in value[4..4 + FLOOR_ANY + 1].iter_mut().zip(rules.floors()) {
        *slot = floor.code();
    }
    for &port in ports {
        let byte = 16 + usize::from(port >> 3);
        if let Some(b) = value.get_mut(byte) {
            *b |= 1 << (port & 7);
        }
    }
    value
}

/// One LPM entry: the key's prefix length in bits, its data, and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleEntry {
    pub(crate) prefix_bits: u32,
    pub(crate) data: [u8; RULE_KEY_DATA],
    pub(crate) rank: u16,
    pub(crate) rule_id: u32,
    pub(crate) action: Verdict,
}

impl RuleEntry {
    pub(crate) fn value(&self) -> [u8; 8] {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&self.rule_id.to_ne_bytes());
        v[4..6].copy_from_slice(&self.rank.to_ne_bytes());
        v[6] = self.action.code();
        v
    }
}

/// The LPM entries of a rule set under `generation`. A rule becomes one key per method
/// (method byte 0 when it has no `methods`): `P\0` for `exact P`; `P\0` and `P/` for
/// `prefix P`; `P` for `prefix P/`. The kernel looks up `path\0`, so the longest key found
/// is the longest matching rule path; keys two rules share go to the one the spec ranks
/// first (longer rule path, then exact). Method-specific and any-method rules are looked up
/// separately and compared by `rank` in the kernel.
pub(crate) fn rule_entries(rules: &RuleSet, generation: u8) -> Vec<RuleEntry> {
    let mut entries: Vec<RuleEntry> = Vec::new();
    for (index, rule) in rules.rules().iter().enumerate() {
        let path = rule.path().path().as_bytes();
        let exact = matches!(rule.path(), PathMatch::Exact(_));
        let rank = u16::try_from(path.len() * 2 + usize::from(exact)).unwrap_or(u16::MAX);
        let rule_id = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let mut suffixes: Vec<Option<u8>> = Vec::with_capacity(2);
        if exact {
            suffixes.push(Some(0));
        } else if path.ends_with(b"/") {
            suffixes.push(None);
        } else {
            suffixes.push(Some(0));
            suffixes.push(Some(b'/'));
        }
        let methods: Vec<u8> = match rule.methods() {
            None => vec![0],
            Some(set) => set.iter().map(|m| m.id()).collect(),
        };
        for method in methods {
            for suffix in &suffixes {
                let mut data = [0u8; RULE_KEY_DATA];
                data[0] = generation;
                data[1] = method;
                let end = 2 + path.len().min(MAX_PATH);
                data[2..end].copy_from_slice(&path[..end - 2]);
                let mut len = end;
                if let Some(s) = suffix {
                    data[end] = *s;
                    len += 1;
                }
                let entry = RuleEntry {
                    prefix_bits: u32::try_from(len * 8).unwrap_or(u32::MAX),
                    data,
                    rank,
                    rule_id,
                    action: rule.action(),
                };
                match entries
                    .iter_mut()
                    .find(|e| e.prefix_bits == entry.prefix_bits && e.data == entry.data)
                {
                    Some(existing) if existing.rank >= entry.rank => {}
                    Some(existing) => *existing = entry,
                    None => entries.push(entry),
                }
            }
        }
    }
    entries
}

/// An event as the kernel wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) time_ns: u64,
    pub(crate) source: IpAddr,
    pub(crate) destination: IpAddr,
    pub(crate) source_port: u16,
    pub(crate) destination_port: u16,
    pub(crate) verdict: u8,
    pub(crate) reason: u8,
    pub(crate) method: u8,
    pub(crate) rule_id: u32,
    pub(crate) path_len: u16,
    pub(crate) method_text: Vec<u8>,
    pub(crate) path: Vec<u8>,
}

fn address(family: u8, bytes: &[u8]) -> IpAddr {
    let mut b16 = [0u8; 16];
    b16.copy_from_slice(bytes.get(..16).unwrap_or(&[0; 16]));
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(b16))
    } else {
        IpAddr::V4(Ipv4Addr::new(b16[0], b16[1], b16[2], b16[3]))
    }
}

/// Decodes an event; `None` when the record is shorter than an event.
pub(crate) fn parse_event(bytes: &[u8]) -> Option<RawEvent> {
    if bytes.len() < EVENT_SIZE {
        return None;
    }
    let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let mut time = [0u8; 8];
    time.copy_from_slice(&bytes[0..8]);
    let mut rule = [0u8; 4];
    rule.copy_from_slice(&bytes[48..52]);
    let family = bytes[44];
    let method_len = usize::from(bytes[54]).min(16);
    let path_copied = usize::from(bytes[55]).min(64);
    Some(RawEvent {
        time_ns: u64::from_ne_bytes(time),
        source: address(family, &bytes[8..24]),
        destination: address(family, &bytes[24..40]),
        source_port: u16_at(40),
        destination_port: u16_at(42),
        verdict: bytes[45],
        reason: bytes[46],
        method: bytes[47],
        rule_id: u32::from_ne_bytes(rule),
        path_len: u16_at(52),
        method_text: bytes[56..56 + method_len].to_vec(),
        path: bytes[72..72 + path_copied].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_exact_share_a_key_and_exact_wins() {
        let rules = RuleSet::from_yaml(
            r#"
default: deny
rules:
  - { id: p, action: deny, path: { prefix: "/a" } }
  - { id: e, action: allow, path: { exact: "/a" } }
  - { id: s, action: audit, methods: [GET], path: { prefix: "/a/" } }
"#,
        )
        .unwrap();
        let entries = rule_entries(&rules, 1);
        // "/a\0" (exact wins), "/a/" (prefix /a, any method), "/a/" with method GET.
        assert_eq!(entries.len(), 3);
        let end = entries.iter().find(|e| e.data[2..5] == *b"/a\0").unwrap();
        assert_eq!((end.rule_id, end.action), (2, Verdict::Allow));
        let get = entries.iter().find(|e| e.data[1] == 1).unwrap();
        assert_eq!((get.rule_id, get.prefix_bits), (3, 5 * 8));
        assert!(entries.iter().all(|e| e.data[0] == 1));
    }

    #[test]
    fn config_sets_port_bits_and_floors() {
        let rules = RuleSet::from_yaml("default: allow\nstrict_paths: false\nrules: []\n").unwrap();
        let v = config_value(&rules, 0, &[8080, 80], 0);
        assert_eq!(v[0], Verdict::Allow.code());
        assert_eq!(v[1], 0);
        assert_eq!(v[16 + 8080 / 8] & (1 << (8080 % 8)), 1 << (8080 % 8));
        assert_eq!(v[16 + 10] & 1, 1);
    }
}
