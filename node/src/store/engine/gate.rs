//! The apply gate of an engine without snapshots (sled): an apply writes key by key, so
//! a reader that must see the state between two applies (a scan page, a snapshot's
//! view) holds the gate open for reading, and an apply waits until no reader holds it.
//!
//! Unlike `std::sync::RwLock`, a read guard here is owned (`Send`, `'static`): a view
//! may be made on one thread and dropped on another. Readers never wait for a writer
//! that is only waiting, only for one that is writing: a scan page served on the async
//! runtime must not wait behind an apply that waits out a long-lived view.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub(super) struct ApplyGate {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    readers: usize,
    writing: bool,
}

/// Held while reading; the gate opens for writers once every one is dropped.
pub(super) struct ReadGuard {
    gate: Arc<ApplyGate>,
}

/// Held while writing.
pub(super) struct WriteGuard<'a> {
    gate: &'a ApplyGate,
}

impl ApplyGate {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits while a writer writes, then holds the gate for reading.
    pub(super) fn read(self: &Arc<Self>) -> ReadGuard {
        let mut state = self.lock();
        while state.writing {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.readers += 1;
        ReadGuard { gate: self.clone() }
    }

    /// Waits until nobody reads or writes, then holds the gate for writing.
    pub(super) fn write(&self) -> WriteGuard<'_> {
        let mut state = self.lock();
        while state.writing || state.readers > 0 {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.writing = true;
        WriteGuard { gate: self }
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.readers -= 1;
        if state.readers == 0 {
            self.gate.changed.notify_all();
        }
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.gate.lock().writing = false;
        self.gate.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_writer_waits_for_a_reader_held_on_another_thread() {
        let gate = Arc::new(ApplyGate::default());
        let read = gate.read();
        let wrote = Arc::new(AtomicBool::new(false));
        let writer = {
            let (gate, wrote) = (gate.clone(), wrote.clone());
            std::thread::spawn(move || {
                let _w = gate.write();
                wrote.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!wrote.load(Ordering::SeqCst), "the writer waits for the reader");
        // A second reader is not held back by a writer that only waits.
        drop(gate.read());
        // Dropped on another thread than the one that took it.
        std::thread::spawn(move || drop(read)).join().unwrap();
        writer.join().unwrap();
        assert!(wrote.load(Ordering::SeqCst));
    }
}
