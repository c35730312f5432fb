//! `ztkit audit …`

use std::path::PathBuf;

use clap::Subcommand;

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the hash chain of audit log files (in order, across rotations); print the
    /// first bad record as FILE:LINE: REASON and exit 1, or exit 0 when intact.
    Verify {
        /// The log files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub(crate) fn run(cmd: AuditCommand) -> Result<(), Failure> {
    let AuditCommand::Verify { files } = cmd;
    let report = zt_audit::verify_files(&files).map_err(|e| Failure::Usage(e.to_string()))?;
    match report.problem {
        Some(problem) => Err(Failure::Refused(format!(
            "{problem} ({} records verified before it)",
            report.records
        ))),
        None => {
            println!(
                "ok: {} records in {} file(s), seq {}..{}, last hash {}",
                report.records,
                report.files,
                report.first_seq.map_or("-".into(), |s| s.to_string()),
                report.last_seq.map_or("-".into(), |s| s.to_string()),
                report.last_hash.as_deref().unwrap_or("-"),
            );
            Ok(())
        }
    }
}
