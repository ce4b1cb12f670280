//! One way to take a mutex everywhere in the crate.

use std::sync::{Mutex, MutexGuard};

/// Takes `m` even if a thread panicked while holding it: every value behind these locks is
/// whole between statements (a list, a state, counters), so the data stays usable and one
/// failed track does not take the others down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
