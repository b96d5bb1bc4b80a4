//! The newest entries of the Raft log, kept in memory as they were appended: the log's
//! tail, which also holds every entry the log's files do not hold durably yet.
//!
//! `LogStore::append` returns before the entries are durable (the writer thread syncs
//! them, see `wal_writer.rs`), and openraft reads them right away: on the leader once per
//! follower to replicate them and once to apply them, on a follower once to apply them.
//! Those reads are served from here, as clones (which share the keys and values), not
//! from the log's files, which show a record only once it is durable.
//!
//! Invariants, asserted where they are cheap: the entries have consecutive indexes and the
//! last one is the log's last entry, so a range that starts among them is answered exactly
//! as the log would answer it; every entry of the log that is not durable yet is here (an
//! entry leaves only once the append that wrote it is durable, or when a truncation or a
//! purge removes it from the log), so the log's files plus this copy hold the whole log,
//! without a hole. Every change to the log changes this first. An append that does not
//! follow the newest entry would break it, and is a bug (ours or openraft's): it panics.

use std::collections::VecDeque;

use crate::types::{Entry, LogId};

/// Most bytes (as encoded in the log) of durable entries kept.
pub(super) const RECENT_ENTRIES_BYTES: usize = 4 << 20;
/// Most durable entries kept.
pub(super) const RECENT_ENTRIES: usize = 64;

/// Numbers appends in the order they are handed to the writer thread, which makes them
/// durable in that order: append `n` durable means every append up to `n` is.
pub(super) type AppendId = u64;

struct Kept {
    entry: Entry,
    /// Its size in the log.
    size: usize,
    /// The append that wrote it.
    append: AppendId,
}

/// The log's tail: see the module documentation.
#[derive(Default)]
pub(super) struct RecentEntries {
    entries: VecDeque<Kept>,
    bytes: usize,
    /// The last append handed out, and the last one known durable.
    last_append: AppendId,
    durable: AppendId,
}

impl RecentEntries {
    /// Adds the entries of a new append (each with its size in the log) and returns the
    /// append's number, for [`RecentEntries::durable`].
    pub(super) fn appended(&mut self, entries: impl IntoIterator<Item = (Entry, usize)>) -> AppendId {
        self.last_append += 1;
        for (entry, size) in entries {
            if let Some(last) = self.entries.back() {
                assert_eq!(
                    entry.log_id.index,
                    last.entry.log_id.index + 1,
                    "raft log entry {} appended after entry {}: a hole in the newest entries",
                    entry.log_id.index,
                    last.entry.log_id.index
                );
            }
            self.bytes += size;
            self.entries.push_back(Kept {
                entry,
                size,
                append: self.last_append,
            });
        }
        self.trim();
        self.last_append
    }

    /// Appends up to `append` are durable: their entries may go once there are too many.
    pub(super) fn durable(&mut self, append: AppendId) {
        assert!(
            append <= self.last_append,
            "raft log append {append} reported durable before it was made"
        );
        self.durable = self.durable.max(append);
        self.trim();
    }

    /// Forgets the oldest durable entries beyond the limits; never one that is not durable.
    fn trim(&mut self) {
        while self.bytes > RECENT_ENTRIES_BYTES || self.entries.len() > RECENT_ENTRIES {
            match self.entries.front() {
                Some(oldest) if oldest.append <= self.durable => self.pop_front(),
                _ => break,
            }
        }
    }

    /// Forgets the entries from index `from` on.
    pub(super) fn truncated(&mut self, from: u64) {
        while self.entries.back().is_some_and(|k| k.entry.log_id.index >= from) {
            let kept = self.entries.pop_back().expect("checked above");
            self.bytes -= kept.size;
        }
    }

    /// Forgets the entries up to index `upto`, included.
    pub(super) fn purged(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|k| k.entry.log_id.index <= upto) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(kept) = self.entries.pop_front() {
            self.bytes -= kept.size;
        }
    }

    /// The index of the first entry kept.
    pub(super) fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|k| k.entry.log_id.index)
    }

    /// The log id of the last entry kept: the log's last entry, when any is kept.
    pub(super) fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|k| k.entry.log_id)
    }

    /// The entries in `[from, to)`, if `from` is one of those kept (the log holds nothing
    /// after the last one, so `to` may reach past it); `None` means: read the log file.
    pub(super) fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_log_id()?.index;
        if from < first || from > last || to <= from {
            return None;
        }
        let end = to.min(last + 1);
        Some(
            self.entries
                .range((from - first) as usize..(end - first) as usize)
                .map(|k| k.entry.clone())
                .collect(),
        )
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::blank_entry as entry;

    /// Entries `from..to` of `term`, appended one at a time and durable.
    fn kept(from: u64, to: u64, term: u64) -> RecentEntries {
        let mut recent = RecentEntries::default();
        for i in from..to {
            let append = recent.appended([(entry(term, i), 10)]);
            recent.durable(append);
        }
        recent
    }

    fn ids(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|es| es.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect())
    }

    #[test]
    fn serves_ranges_that_start_among_the_newest_entries_and_nothing_else() {
        let recent = kept(5, 10, 1);
        assert_eq!(ids(recent.get(5, 7)), Some(vec![(1, 5), (1, 6)]));
        // The log ends at 9: a range reaching past it ends there too.
        assert_eq!(ids(recent.get(8, u64::MAX)), Some(vec![(1, 8), (1, 9)]));
        // Older entries, entries not written yet and empty ranges are the log file's to answer.
        assert_eq!(ids(recent.get(4, 7)), None);
        assert_eq!(ids(recent.get(10, 11)), None);
        assert_eq!(ids(recent.get(6, 6)), None);
        assert_eq!(ids(RecentEntries::default().get(0, 1)), None);
    }

    #[test]
    fn a_truncation_and_the_appends_after_it_replace_the_conflicting_entries() {
        let mut recent = kept(5, 10, 1);
        recent.truncated(7);
        assert_eq!(ids(recent.get(5, 100)), Some(vec![(1, 5), (1, 6)]));
        recent.appended([(entry(2, 7), 10)]);
        assert_eq!(ids(recent.get(6, 100)), Some(vec![(1, 6), (2, 7)]));
        recent.truncated(0);
        assert_eq!(ids(recent.get(5, 100)), None);
    }

    #[test]
    fn a_purge_forgets_the_purged_entries() {
        let mut recent = kept(5, 10, 1);
        recent.purged(6);
        assert_eq!(ids(recent.get(6, 8)), None);
        assert_eq!(ids(recent.get(7, 8)), Some(vec![(1, 7)]));
        recent.purged(9);
        assert_eq!(recent.bytes(), 0);
        assert_eq!(ids(recent.get(9, 10)), None);
    }

    #[test]
    fn keeps_a_bounded_number_of_the_newest_entries() {
        let recent = kept(0, RECENT_ENTRIES as u64 + 10, 1);
        assert_eq!(recent.len(), RECENT_ENTRIES);
        assert_eq!(ids(recent.get(9, 10)), None);
        assert_eq!(ids(recent.get(10, 11)), Some(vec![(1, 10)]));

        let mut big = RecentEntries::default();
        let append = big.appended((0..3).map(|i| (entry(1, i), RECENT_ENTRIES_BYTES / 2)));
        big.durable(append);
        assert_eq!(ids(big.get(0, 3)), None);
        assert_eq!(ids(big.get(1, 3)), Some(vec![(1, 1), (1, 2)]));
    }

    #[test]
    fn an_entry_stays_until_its_append_is_durable_however_many_follow() {
        let mut recent = RecentEntries::default();
        let first = recent.appended([(entry(1, 0), 10)]);
        let mut last = first;
        for i in 1..RECENT_ENTRIES as u64 * 3 {
            last = recent.appended([(entry(1, i), 10)]);
        }
        assert_eq!(recent.len(), RECENT_ENTRIES * 3, "nothing durable, nothing forgotten");
        assert_eq!(ids(recent.get(0, 1)), Some(vec![(1, 0)]));
        recent.durable(first);
        assert_eq!(recent.first_index(), Some(1), "only the durable entry may go");
        recent.durable(last);
        assert_eq!(recent.len(), RECENT_ENTRIES);
    }

    #[test]
    fn an_entry_appended_again_after_a_truncation_waits_for_its_own_append() {
        let n = RECENT_ENTRIES as u64;
        let mut recent = RecentEntries::default();
        let old = recent.appended((0..n + 5).map(|i| (entry(1, i), 10)));
        recent.truncated(10);
        recent.appended((10..n + 10).map(|i| (entry(2, i), 10)));
        // The old append becoming durable says nothing of the entries that replaced its tail:
        // only its own entries go, though more are kept than the limit.
        recent.durable(old);
        assert_eq!(recent.first_index(), Some(10));
        assert_eq!(recent.len(), RECENT_ENTRIES);
        assert_eq!(ids(recent.get(10, 11)), Some(vec![(2, 10)]));
        let mut over = RecentEntries::default();
        let old = over.appended((0..n).map(|i| (entry(1, i), 10)));
        over.truncated(10);
        over.appended((10..n + 20).map(|i| (entry(2, i), 10)));
        over.durable(old);
        assert_eq!(over.first_index(), Some(10), "every entry not durable stays");
        assert_eq!(over.len(), RECENT_ENTRIES + 10);
    }

    #[test]
    #[should_panic(expected = "raft log entry 20 appended after entry 9")]
    fn an_append_that_does_not_follow_the_newest_entry_is_a_bug() {
        let mut recent = kept(5, 10, 1);
        recent.appended([(entry(1, 20), 10)]);
    }
}
