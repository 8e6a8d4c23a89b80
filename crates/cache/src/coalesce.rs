//! Coalescing: when several callers ask for the same key at once, the first (the leader) runs
//! the computation and every other caller waits for and receives the same value, success or
//! error. As with `moka`'s `get_with`, this is the contract: for concurrent callers of one key,
//! `compute` runs once.
//!
//! If the leader's computation panics, waiting callers are released and one of them computes
//! instead; nobody waits forever.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex};

enum State<V> {
    Running,
    Done(V),
    Abandoned,
}

struct Slot<V> {
    state: Mutex<State<V>>,
    changed: Condvar,
}

pub struct Coalescer<K, V> {
    in_flight: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether a call computed its value or waited for another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl<K: Hash + Eq + Clone, V: Clone> Coalescer<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `compute` for `key` unless another caller already is, in which case waits for its
    /// result. Either way returns the value and this caller's role.
    pub fn run(&self, key: K, compute: impl FnOnce() -> V) -> (V, Role) {
        let mut compute = Some(compute);
        loop {
            let (slot, leader) = {
                let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(&key) {
                    Some(slot) => (slot.clone(), false),
                    None => {
                        let slot = Arc::new(Slot {
                            state: Mutex::new(State::Running),
                            changed: Condvar::new(),
                        });
                        map.insert(key.clone(), slot.clone());
                        (slot, true)
                    }
                }
            };
            if leader {
                let guard = LeaderGuard {
                    coalescer: self,
                    key: &key,
                    slot: &slot,
                    done: false,
                };
                let f = compute.take().expect("a caller leads at most once");
                let value = f();
                guard.finish(value.clone());
                return (value, Role::Leader);
            }
            let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match &*state {
                    State::Running => {
                        state = slot.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                    State::Done(v) => return (v.clone(), Role::Follower),
                    State::Abandoned => break,
                }
            }
            // The leader panicked: try again, possibly as the new leader.
        }
    }

    /// Keys being computed right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

struct LeaderGuard<'a, K: Hash + Eq, V> {
    coalescer: &'a Coalescer<K, V>,
    key: &'a K,
    slot: &'a Arc<Slot<V>>,
    done: bool,
}

impl<K: Hash + Eq, V> LeaderGuard<'_, K, V> {
    fn finish(mut self, value: V) {
        self.publish(State::Done(value));
        self.done = true;
    }

    fn publish(&self, state: State<V>) {
        self.coalescer
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.key);
        *self.slot.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.slot.changed.notify_all();
    }
}

impl<K: Hash + Eq, V> Drop for LeaderGuard<'_, K, V> {
    fn drop(&mut self) {
        if !self.done {
            self.publish(State::Abandoned);
        }
    }
}
