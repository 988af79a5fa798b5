//! The endpoint's deadline bookkeeping: a map of transactions (or calls) that files each entry under its next
//! deadline in an ordered set, so the earliest deadline is read in O(log n) and a wake-up visits only what is
//! due, instead of scanning every live transaction and call.
//!
//! An entry's deadline lives inside the entry (a transaction's [`TimerTable`](crate::sip::transaction::TimerTable),
//! a call's retransmission and linger fields) and changes wherever the endpoint mutates it. Rather than asking
//! every such place to report the change, [`TimedMap::get_mut`] and [`TimedMap::insert`] mark the key dirty;
//! [`TimedMap::flush`] re-reads the deadlines of the dirty keys and re-files them. Until then,
//! [`TimedMap::next_deadline`] reads the dirty entries directly and skips their (possibly stale) filed deadline,
//! so it is exact at any moment, from `&self`. The endpoint flushes on every input and output call, so the dirty
//! list holds only what the last call touched.
//!
//! An ordered set with eager removal rather than a binary heap with lazy deletion: a heap's top may be a stale
//! entry, which a `&self` [`poll_timeout`](super::Endpoint::poll_timeout) could neither skip nor remove.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Something with a next deadline.
pub(super) trait Deadline {
    /// When the owner must next call its timeout handler for this entry, if ever.
    fn deadline(&self) -> Option<Instant>;
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    /// The deadline this entry is filed under in `queue`.
    filed: Option<Instant>,
    /// Borrowed mutably since the last flush: `filed` may be stale.
    dirty: bool,
}

/// A `BTreeMap<u64, V>` that keeps its entries ordered by deadline. See the module docs.
#[derive(Debug)]
pub(super) struct TimedMap<V> {
    map: BTreeMap<u64, Slot<V>>,
    queue: BTreeSet<(Instant, u64)>,
    dirty: Vec<u64>,
}

impl<V: Deadline> TimedMap<V> {
    pub(super) fn new() -> Self {
        Self {
            map: BTreeMap::new(),
            queue: BTreeSet::new(),
            dirty: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, key: &u64) -> Option<&V> {
        self.map.get(key).map(|s| &s.value)
    }

    /// The entry, marked for re-filing at the next [`Self::flush`].
    pub(super) fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let slot = self.map.get_mut(key)?;
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(*key);
        }
        Some(&mut slot.value)
    }

    pub(super) fn insert(&mut self, key: u64, value: V) {
        self.remove(&key);
        self.map.insert(
            key,
            Slot {
                value,
                filed: None,
                dirty: true,
            },
        );
        self.dirty.push(key);
    }

    pub(super) fn remove(&mut self, key: &u64) -> Option<V> {
        let slot = self.map.remove(key)?;
        if let Some(at) = slot.filed {
            self.queue.remove(&(at, *key));
        }
        // A stale key left in `dirty` is skipped by `flush`: keys are never reused.
        Some(slot.value)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.map.iter().map(|(k, s)| (k, &s.value))
    }

    /// Re-files the entries borrowed mutably since the last flush. Returns how many changed deadline.
    pub(super) fn flush(&mut self) -> usize {
        let mut changed = 0;
        for key in self.dirty.drain(..) {
            let Some(slot) = self.map.get_mut(&key) else {
                continue;
            };
            slot.dirty = false;
            let at = slot.value.deadline();
            if at != slot.filed {
                if let Some(old) = slot.filed {
                    self.queue.remove(&(old, key));
                }
                if let Some(new) = at {
                    self.queue.insert((new, key));
                }
                slot.filed = at;
                changed += 1;
            }
        }
        changed
    }

    /// The earliest deadline of any entry. O(log n) plus the entries touched since the last flush.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let filed = self
            .queue
            .iter()
            .find(|(_, k)| self.map.get(k).is_some_and(|s| !s.dirty))
            .map(|(at, _)| *at);
        let touched = self
            .dirty
            .iter()
            .filter_map(|k| self.map.get(k))
            .filter_map(|s| s.value.deadline())
            .min();
        match (filed, touched) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Flushes, then returns the keys whose deadline is at or before `now`, in key order.
    pub(super) fn due(&mut self, now: Instant) -> Vec<u64> {
        self.flush();
        let mut keys: Vec<u64> = self
            .queue
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| *k)
            .collect();
        keys.sort_unstable();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug)]
    struct T(Option<Instant>);

    impl Deadline for T {
        fn deadline(&self) -> Option<Instant> {
            self.0
        }
    }

    #[test]
    fn next_deadline_follows_changes_before_and_after_flush() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = TimedMap::new();
        m.insert(1, T(Some(t0 + s(5))));
        m.insert(2, T(Some(t0 + s(3))));
        m.insert(3, T(None));
        assert_eq!(
            m.next_deadline(),
            Some(t0 + s(3)),
            "unflushed inserts count"
        );
        m.flush();
        assert_eq!(m.next_deadline(), Some(t0 + s(3)));
        // Moving the earliest entry later: its stale filing must not be reported.
        m.get_mut(&2).unwrap().0 = Some(t0 + s(9));
        assert_eq!(m.next_deadline(), Some(t0 + s(5)));
        m.get_mut(&3).unwrap().0 = Some(t0 + s(1));
        assert_eq!(m.next_deadline(), Some(t0 + s(1)));
        m.flush();
        assert_eq!(m.next_deadline(), Some(t0 + s(1)));
        assert_eq!(m.due(t0 + s(5)), vec![1, 3]);
        m.remove(&3);
        assert_eq!(m.next_deadline(), Some(t0 + s(5)));
        m.get_mut(&1).unwrap().0 = None;
        m.get_mut(&2).unwrap().0 = None;
        assert_eq!(m.next_deadline(), None);
        m.flush();
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.due(t0 + s(100)), Vec::<u64>::new());
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn removed_dirty_keys_are_skipped() {
        let t0 = Instant::now();
        let mut m = TimedMap::new();
        m.insert(7, T(Some(t0)));
        assert!(m.remove(&7).is_some());
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.flush(), 0);
        assert_eq!(m.due(t0), Vec::<u64>::new());
    }

    #[test]
    fn same_deadline_keeps_every_key() {
        let t0 = Instant::now();
        let mut m = TimedMap::new();
        let t1 = t0 + Duration::from_millis(1);
        for k in [4, 2, 9] {
            m.insert(k, T(Some(t1)));
        }
        assert_eq!(m.due(t0), Vec::<u64>::new());
        assert_eq!(m.due(t1), vec![2, 4, 9]);
    }
}
