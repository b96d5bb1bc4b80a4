//! Test support shared by the tests of the client library and of the router: a fake raftkv
//! node ([`FakeNode`]) to run them against without starting real nodes. Compiled for this
//! crate's own tests and, through the `test-support` feature, for the router's; never part
//! of a binary.

mod fake_node;

pub use self::fake_node::{FakeNode, Writes};
