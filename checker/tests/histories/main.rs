//! Tests of the linearizability checker, through its public API: histories it must
//! reject and accept, its reports and budgets, the recorder and JSON dumps, and large
//! generated and random histories cross-checked against a brute-force search.
//!
//! Run with `cargo test -p raftkv-checker` (add `-- --nocapture` to see the timings of the
//! generated histories).

mod accepted;
mod cross_checks;
mod generated;
mod recorder;
mod rejected;
mod reports;
mod support;
