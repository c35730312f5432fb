//! The `ztkit` command-line tool.
fn main() {}
