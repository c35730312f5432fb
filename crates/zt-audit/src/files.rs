//! File naming, the directory lock, and crash recovery of a log file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::chain::{ChainHead, LineInfo, check_line};
use crate::clock::parse_rfc3339;
use crate::error::AuditError;
use crate::verify::VerifyFailure;

/// The name of log file number `index` (1-based): `{prefix}-{index:08}.jsonl`, so
/// lexical order is chain order up to 99,999,999 files.
pub(crate) fn file_name(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index:08}.jsonl")
}

fn parse_index(prefix: &str, name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".jsonl")?;
    if digits.len() < 8 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files of `prefix` in `dir`, in chain order (by index). Side files
/// (`.torn`) and the lock file are not included.
///
/// # Errors
///
/// [`AuditError::Io`] when the directory cannot be read.
pub fn log_files(dir: impl AsRef<Path>, prefix: &str) -> Result<Vec<PathBuf>, AuditError> {
    Ok(indexed_files(dir.as_ref(), prefix)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

pub(crate) fn indexed_files(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| AuditError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| AuditError::io("read directory", dir, e))?;
        if let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(|n| parse_index(prefix, n))
        {
            out.push((index, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes a directory entry change (a created or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AuditError::io("fsync directory", dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Takes the exclusive lock on `{dir}/{prefix}.lock`; held as long as the file is open.
pub(crate) fn lock(dir: &Path, prefix: &str) -> Result<File, AuditError> {
    let path = dir.join(format!("{prefix}.lock"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::io("open lock file", &path, e))?;
    #[cfg(unix)]
    {
        use rustix::fs::{FlockOperation, flock};
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(AuditError::Locked { path });
            }
            Err(e) => return Err(AuditError::io("lock", &path, e.into())),
        }
    }
    Ok(file)
}

/// Opens (creating if needed) a log file for appending.
pub(crate) fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io("open", path, e))
}

/// What a scan of one file's bytes found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Bytes of complete, chained records from the start.
    pub(crate) good_len: usize,
    pub(crate) first: Option<LineInfo>,
    pub(crate) last: Option<LineInfo>,
    /// The first bad line: (1-based number, why).
    pub(crate) bad: Option<(u64, VerifyFailure)>,
    /// Whether a well-formed record (its own hash right) follows the first bad line,
    /// which a torn write cannot produce.
    pub(crate) valid_after_bad: bool,
}

pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut s = Scan {
        good_len: 0,
        first: None,
        last: None,
        bad: None,
        valid_after_bad: false,
    };
    let mut head: Option<ChainHead> = None;
    let mut pos = 0usize;
    let mut line_no = 0u64;
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        line_no += 1;
        let Some(nl) = rest.iter().position(|&c| c == b'\n') else {
            if s.bad.is_none() {
                s.bad = Some((line_no, VerifyFailure::MissingNewline));
            }
            break;
        };
        let line = rest.get(..nl).unwrap_or_default();
        pos += nl + 1;
        if s.bad.is_some() {
            if check_line(line).is_ok() {
                s.valid_after_bad = true;
                break;
            }
            continue;
        }
        let checked = check_line(line).and_then(|info| {
            let next = match head {
                Some(h) => h.check_next(&info)?,
                None => ChainHead::after(&info),
            };
            Ok((info, next))
        });
        match checked {
            Ok((info, next)) => {
                head = Some(next);
                s.good_len = pos;
                if s.first.is_none() {
                    s.first = Some(info.clone());
                }
                s.last = Some(info);
            }
            Err(reason) => s.bad = Some((line_no, reason)),
        }
    }
    s
}

/// The outcome of opening the newest file.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) len: u64,
    pub(crate) last: Option<LineInfo>,
    pub(crate) started: Option<SystemTime>,
    pub(crate) torn: Option<PathBuf>,
}

/// Reads a log file; a damaged tail that a crash could have left is moved to a side
/// file and cut off, damage before the tail is refused.
pub(crate) fn recover(path: &Path) -> Result<Recovered, AuditError> {
    let bytes = fs::read(path).map_err(|e| AuditError::io("read", path, e))?;
    let s = scan(&bytes);
    let mut torn = None;
    if let Some((line, reason)) = s.bad {
        if s.valid_after_bad {
            return Err(AuditError::Corrupt {
                file: path.to_owned(),
                line,
                reason,
            });
        }
        let tail = bytes.get(s.good_len..).unwrap_or_default();
        let side = write_side_file(path, tail)?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| AuditError::io("open", path, e))?;
        file.set_len(s.good_len as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| AuditError::io("truncate torn tail of", path, e))?;
        tracing::warn!(
            file = %path.display(),
            line,
            %reason,
            bytes = tail.len(),
            side_file = %side.display(),
            "audit log: torn last record moved aside; the chain resumes from the last good record"
        );
        torn = Some(side);
    }
    Ok(Recovered {
        len: s.good_len as u64,
        started: s.first.as_ref().and_then(|f| parse_rfc3339(&f.ts)),
        last: s.last,
        torn,
    })
}

/// Writes `tail` to `{path}.torn` (or `.torn.1`, `.torn.2`… if taken) durably.
fn write_side_file(path: &Path, tail: &[u8]) -> Result<PathBuf, AuditError> {
    let base = path.as_os_str().to_owned();
    for n in 0u32..10_000 {
        let mut name = base.clone();
        name.push(if n == 0 {
            ".torn".to_owned()
        } else {
            format!(".torn.{n}")
        });
        let side = PathBuf::from(name);
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&side) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(AuditError::io("create", &side, e)),
        };
        f.write_all(tail)
            .and_then(|()| f.sync_all())
            .map_err(|e| AuditError::io("write", &side, e))?;
        if let Some(dir) = side.parent() {
            sync_dir(dir)?;
        }
        return Ok(side);
    }
    Err(AuditError::Config(format!(
        "too many torn side files next to {}",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_parse_back() {
        assert_eq!(file_name("audit", 7), "audit-00000007.jsonl");
        assert_eq!(parse_index("audit", "audit-00000007.jsonl"), Some(7));
        assert_eq!(
            parse_index("audit", "audit-123456789.jsonl"),
            Some(123_456_789)
        );
        assert_eq!(parse_index("audit", "audit-00000007.jsonl.torn"), None);
        assert_eq!(parse_index("audit", "audit-7.jsonl"), None);
        assert_eq!(parse_index("audit", "other-00000007.jsonl"), None);
        assert!(file_name("a", 9) < file_name("a", 10));
    }
}
