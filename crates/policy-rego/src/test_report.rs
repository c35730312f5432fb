//! Results of running a policy set's `test_*` rules (what `opa test` reports).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
#[serde(tag = "outcome", content = "error", rename_all = "lowercase")]
pub enum TestOutcome {
    /// The rule's value was `true`.
    Pass,
    /// The rule was `false` or undefined.
    Fail,
    /// Evaluation failed (the message says why).
    Error(String),
    /// A `todo_test_*` rule, not run.
    Skip,
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TestResult {
    /// The rule's full name, `data.package.test_name`.
    pub name: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: TestOutcome,
    /// How long it ran, in nanoseconds.
    pub duration_ns: u64,
}

/// The results of [`PolicySet::run_tests`](crate::PolicySet::run_tests), sorted by name.
///
/// Its `Display` form follows `opa test`: failures and errors listed, then the counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct TestReport {
    /// One entry per test rule.
    pub results: Vec<TestResult>,
}

impl TestReport {
    /// Tests that passed.
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, TestOutcome::Pass))
    }

    /// Tests that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, TestOutcome::Fail))
    }

    /// Tests whose evaluation raised an error.
    pub fn errors(&self) -> usize {
        self.count(|o| matches!(o, TestOutcome::Error(_)))
    }

    /// Tests skipped (`todo_test_*`).
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, TestOutcome::Skip))
    }

    /// Whether nothing failed or errored. A report without tests counts as a success here;
    /// callers that require tests (as `opa test` does) also check `results.is_empty()`.
    pub fn is_success(&self) -> bool {
        self.failed() == 0 && self.errors() == 0
    }

    fn count(&self, f: impl Fn(&TestOutcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// A verbose listing (every test with its outcome), like `opa test -v`.
    pub fn verbose(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            s.push_str(&line(r));
            s.push('\n');
        }
        s.push_str(&self.summary());
        s
    }

    fn summary(&self) -> String {
        let total = self.results.len();
        let mut s = format!("{}\n", "-".repeat(80));
        if self.passed() > 0 {
            s.push_str(&format!("PASS: {}/{total}\n", self.passed()));
        }
        if self.failed() > 0 {
            s.push_str(&format!("FAIL: {}/{total}\n", self.failed()));
        }
        if self.errors() > 0 {
            s.push_str(&format!("ERROR: {}/{total}\n", self.errors()));
        }
        if self.skipped() > 0 {
            s.push_str(&format!("SKIPPED: {}/{total}\n", self.skipped()));
        }
        s
    }
}

fn line(r: &TestResult) -> String {
    let ms = r.duration_ns as f64 / 1e6;
    match &r.outcome {
        TestOutcome::Pass => format!("{}: PASS ({ms:.3}ms)", r.name),
        TestOutcome::Fail => format!("{}: FAIL ({ms:.3}ms)", r.name),
        TestOutcome::Error(e) => format!("{}: ERROR ({ms:.3}ms)\n  {e}", r.name),
        TestOutcome::Skip => format!("{}: SKIPPED", r.name),
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad: Vec<&TestResult> = self
            .results
            .iter()
            .filter(|r| matches!(r.outcome, TestOutcome::Fail | TestOutcome::Error(_)))
            .collect();
        if !bad.is_empty() {
            writeln!(f, "FAILURES")?;
            writeln!(f, "{}", "-".repeat(80))?;
            for r in bad {
                writeln!(f, "{}", line(r))?;
            }
            writeln!(f)?;
            writeln!(f, "SUMMARY")?;
        }
        write!(f, "{}", self.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: TestOutcome) -> TestResult {
        TestResult {
            name: name.into(),
            outcome,
            duration_ns: 1_000_000,
        }
    }

    #[test]
    fn the_report_reads_like_opa_test() {
        let report = TestReport {
            results: vec![
                result("data.p.test_a", TestOutcome::Pass),
                result("data.p.test_b", TestOutcome::Fail),
                result("data.p.todo_test_c", TestOutcome::Skip),
            ],
        };
        assert!(!report.is_success());
        let shown = report.to_string();
        assert!(shown.starts_with("FAILURES\n"), "{shown}");
        assert!(shown.contains("data.p.test_b: FAIL (1.000ms)"));
        assert!(shown.contains("PASS: 1/3\nFAIL: 1/3\nSKIPPED: 1/3\n"));
        assert!(report.verbose().contains("data.p.test_a: PASS"));
        let json = serde_json::to_value(&report.results[1]).unwrap();
        assert_eq!(json["outcome"], "fail");
    }
}
