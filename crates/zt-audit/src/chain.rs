//! The hash chain: how a line is built, which bytes are hashed, and how one line is
//! checked. Shared by the writer, crash recovery and verification so they cannot
//! disagree.
//!
//! A line is `{"seq":N,"ts":"…",<body>,"prev_hash":"<64 hex>","hash":"<64 hex>"}` and a
//! newline. Its *canonical bytes* are the line without the trailing
//! `,"hash":"<64 hex>"` member (the closing `}` is kept), i.e. exactly
//! `{"seq":N,…,"prev_hash":"<64 hex>"}`. Then
//! `hash = SHA-256(prev_hash as 32 raw bytes ‖ canonical bytes)`. The first record of a
//! log has `prev_hash` = 64 zeros.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::verify::VerifyFailure;

/// The `prev_hash` of the very first record.
pub(crate) const GENESIS_HASH: [u8; 32] = [0; 32];

const HASH_MEMBER: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = HASH_MEMBER.len() + 64 + 2;

/// Lowercase hex of a hash (fast path; `hex::encode` goes through `char`s).
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    let mut buf = [0u8; 64];
    // Encoding into a buffer of exactly twice the input length cannot fail, and hex
    // digits are ASCII.
    let _ = hex::encode_to_slice(bytes, &mut buf);
    String::from_utf8(buf.to_vec()).unwrap_or_default()
}

/// Builds one complete line (with its newline) into `out` and returns its hash.
pub(crate) fn build_line(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    body: &[u8],
    prev: &[u8; 32],
) -> [u8; 32] {
    out.clear();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.push(b'"');
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"prev_hash\":\"");
    let mut hex_buf = [0u8; 64];
    // Encoding into a buffer of exactly twice the input length cannot fail.
    let _ = hex::encode_to_slice(prev, &mut hex_buf);
    out.extend_from_slice(&hex_buf);
    out.push(b'"');
    let hash = digest(prev, out);
    out.extend_from_slice(HASH_MEMBER);
    let _ = hex::encode_to_slice(hash, &mut hex_buf);
    out.extend_from_slice(&hex_buf);
    out.extend_from_slice(b"\"}\n");
    hash
}

/// SHA-256(prev ‖ canonical), where `canonical_open` is the canonical bytes without
/// their closing brace.
fn digest(prev: &[u8; 32], canonical_open: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical_open);
    h.update(b"}");
    h.finalize().into()
}

/// What a line says about its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineInfo {
    pub(crate) seq: u64,
    pub(crate) prev_hash: [u8; 32],
    pub(crate) hash: [u8; 32],
    pub(crate) ts: String,
}

/// The fields every line must have (others are ignored here; duplicates are refused by
/// the derived deserializer).
#[derive(Deserialize)]
struct Head {
    seq: u64,
    ts: String,
    #[allow(dead_code)]
    trace_id: String,
    #[allow(dead_code)]
    kind: String,
    prev_hash: String,
    #[allow(dead_code)]
    hash: String,
}

/// Checks one line (without its newline) on its own: well-formed, and its hash matches
/// its bytes. Links to the previous record are checked by the caller.
pub(crate) fn check_line(line: &[u8]) -> Result<LineInfo, VerifyFailure> {
    let unparseable = |detail: &str| VerifyFailure::Unparseable {
        detail: detail.to_owned(),
    };
    let head: Head = serde_json::from_slice(line).map_err(|e| {
        let mut detail = e.to_string();
        detail.truncate(120);
        VerifyFailure::Unparseable { detail }
    })?;
    if head.seq == 0 {
        return Err(unparseable("seq must be at least 1"));
    }
    let split = line
        .len()
        .checked_sub(SUFFIX_LEN)
        .ok_or_else(|| unparseable("line too short"))?;
    let (canonical_open, suffix) = line.split_at(split);
    let stored_hex = suffix
        .strip_prefix(HASH_MEMBER)
        .and_then(|s| s.strip_suffix(b"\"}"))
        .ok_or_else(|| unparseable("`hash` is not the last member"))?;
    let hash = decode_hash(stored_hex)
        .ok_or_else(|| unparseable("`hash` is not 64 lowercase hex digits"))?;
    let prev_hash = decode_hash(head.prev_hash.as_bytes())
        .ok_or_else(|| unparseable("`prev_hash` is not 64 lowercase hex digits"))?;
    if digest(&prev_hash, canonical_open) != hash {
        return Err(VerifyFailure::BadHash);
    }
    Ok(LineInfo {
        seq: head.seq,
        prev_hash,
        hash,
        ts: head.ts,
    })
}

fn decode_hash(hex_digits: &[u8]) -> Option<[u8; 32]> {
    if hex_digits.len() != 64
        || !hex_digits
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).ok()?;
    Some(out)
}

/// Where the chain stands after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainHead {
    /// The seq the next record must carry.
    pub(crate) next_seq: u64,
    /// The hash the next record's `prev_hash` must carry.
    pub(crate) hash: [u8; 32],
}

impl ChainHead {
    pub(crate) const GENESIS: Self = Self {
        next_seq: 1,
        hash: GENESIS_HASH,
    };

    /// Checks that `info` continues this head.
    pub(crate) fn check_next(&self, info: &LineInfo) -> Result<Self, VerifyFailure> {
        if info.seq != self.next_seq {
            return Err(VerifyFailure::SeqGap {
                expected: self.next_seq,
                found: info.seq,
            });
        }
        if info.prev_hash != self.hash {
            return Err(VerifyFailure::BrokenLink);
        }
        Ok(Self::after(info))
    }

    pub(crate) fn after(info: &LineInfo) -> Self {
        Self {
            next_seq: info.seq.saturating_add(1),
            hash: info.hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_lines_check_and_the_hash_is_over_the_canonical_bytes() {
        let mut line = Vec::new();
        let body = b",\"trace_id\":\"0123456789abcdef0123456789abcdef\",\"kind\":\"k\"";
        let h1 = build_line(
            &mut line,
            1,
            "2025-11-24T16:00:00.000000Z",
            body,
            &GENESIS_HASH,
        );
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.ends_with(&format!(",\"hash\":\"{}\"}}\n", hex::encode(h1))));
        // Recompute the definition independently.
        let canonical = format!("{}}}", &text[..text.len() - 1 - SUFFIX_LEN]);
        assert!(canonical.ends_with(&format!("\"prev_hash\":\"{}\"}}", "0".repeat(64))));
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(canonical.as_bytes());
        assert_eq!(<[u8; 32]>::from(h.finalize()), h1);

        let info = check_line(&line[..line.len() - 1]).unwrap();
        assert_eq!((info.seq, info.prev_hash, info.hash), (1, GENESIS_HASH, h1));
        let next = ChainHead::GENESIS.check_next(&info).unwrap();
        assert_eq!(
            next,
            ChainHead {
                next_seq: 2,
                hash: h1
            }
        );

        let mut line2 = Vec::new();
        build_line(&mut line2, 2, "2025-11-24T16:00:00.000001Z", body, &h1);
        let info2 = check_line(&line2[..line2.len() - 1]).unwrap();
        assert_eq!(next.check_next(&info2).unwrap().next_seq, 3);
        assert_eq!(
            ChainHead::GENESIS.check_next(&info2),
            Err(VerifyFailure::SeqGap {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn any_changed_byte_is_caught() {
        let mut line = Vec::new();
        let body = b",\"trace_id\":\"0123456789abcdef0123456789abcdef\",\"kind\":\"abc\"";
        build_line(&mut line, 7, "2025-11-24T16:00:00.000000Z", body, &[5; 32]);
        line.pop();
        for i in 0..line.len() {
            let mut copy = line.clone();
            copy[i] ^= 0x01;
            assert!(check_line(&copy).is_err(), "flip at {i} not caught");
        }
    }
}
