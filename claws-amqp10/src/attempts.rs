//! [`Attempts`]: delivery counts the broker does not keep.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

/// Delivery counts RabbitMQ does not keep, by message key. Bounded: when full it is cleared
/// (counts restart, which only delays a dead-lettering).
#[derive(Debug, Default)]
pub(crate) struct Attempts(StdMutex<HashMap<u64, u32>>);

const MAX_TRACKED: usize = 50_000;

impl Attempts {
    /// The attempt this delivery is. A first delivery is 1 and is not stored (the common
    /// case costs no lock); only redeliveries are counted.
    pub(crate) fn next(&self, key: u64, redelivered: bool) -> u32 {
        if !redelivered {
            return 1;
        }
        let mut map = self.0.lock().expect("attempts lock");
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
        let n = map.entry(key).or_insert(1);
        *n = (*n + 1).max(2);
        *n
    }

    pub(crate) fn forget(&self, key: u64, attempt: u32) {
        if attempt > 1 {
            self.0.lock().expect("attempts lock").remove(&key);
        }
    }
}
