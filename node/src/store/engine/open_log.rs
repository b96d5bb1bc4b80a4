//! The storage engines' own log lines while a data directory is opened. fjall (its LSM tree,
//! its file archive format `sfa`) and sled log at ERROR what they find wrong in their files before they return the
//! error; the node then refuses the directory with one line that carries the engine's reason.
//! So while a data directory is being opened ([`opening`]) their lines are left out of the
//! node's log ([`is_quieted`], a filter the node's log applies), and the refusal stays one
//! line. Once the directory is open they are logged as usual: at run time they are the only
//! word of an engine's background trouble.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The log targets of the engines' crates (their module paths).
const ENGINE_LOG_TARGETS: [&str; 4] = ["fjall", "lsm_tree", "sfa", "sled"];

/// How many data directories are being opened in this process right now.
static OPENING: AtomicUsize = AtomicUsize::new(0);

/// Leaves the engines' log lines out until it is dropped.
pub struct Opening(());

/// The engines' log lines are left out while the returned guard lives: hold it while a data
/// directory is opened.
pub fn opening() -> Opening {
    OPENING.fetch_add(1, Ordering::SeqCst);
    Opening(())
}

impl Drop for Opening {
    fn drop(&mut self) {
        OPENING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a log line of `target` is left out now: one of an engine's, while a data directory
/// is being opened.
pub fn is_quieted(target: &str) -> bool {
    OPENING.load(Ordering::Relaxed) > 0 && is_engine_target(target)
}

fn is_engine_target(target: &str) -> bool {
    ENGINE_LOG_TARGETS.iter().any(|engine| {
        target
            .strip_prefix(engine)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_engines_lines_are_left_out_and_only_while_opening() {
        // Other tests may be opening directories at the same time: only the target is checked
        // outside a guard.
        assert!(is_engine_target("fjall"));
        assert!(is_engine_target("lsm_tree::table::block"));
        assert!(!is_engine_target("fjallish"));
        assert!(!is_engine_target("raftkv_node::store"));
        let guard = opening();
        assert!(is_quieted("lsm_tree::table"));
        assert!(!is_quieted("raftkv_node::app"));
        drop(guard);
    }
}
