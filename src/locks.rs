//! Per-key async locks inside one process. The route takes one before asking the store for
//! its own (cross-process) lock, so concurrent disconnects of one session in one gateway
//! queue here instead of each holding a database connection while they wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    /// Entries live while someone holds or waits for them; the last one out removes it.
    map: Mutex<HashMap<i64, Arc<AsyncMutex<()>>>>,
}

/// Held until dropped; owns what it needs, so it can move into a spawned task.
pub struct KeyGuard {
    locks: Arc<KeyedLocks>,
    key: i64,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub async fn lock(self: &Arc<Self>, key: i64) -> KeyGuard {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(key).or_default())
        };
        let guard = mutex.lock_owned().await;
        self.held(key, guard)
    }

    /// The key's lock if it is free now, without waiting. Done under the map lock, so a
    /// failed attempt leaves the map as it found it.
    pub fn try_lock(self: &Arc<Self>, key: i64) -> Option<KeyGuard> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let guard = Arc::clone(map.entry(key).or_default())
            .try_lock_owned()
            .ok()?;
        Some(self.held(key, guard))
    }

    fn held(self: &Arc<Self>, key: i64, guard: OwnedMutexGuard<()>) -> KeyGuard {
        KeyGuard {
            locks: Arc::clone(self),
            key,
            guard: Some(guard),
        }
    }

    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut map = self
            .locks
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Release first, then drop the entry if nobody else holds a reference to it (the
        // map's own reference is the only one left). Both happen under the map lock, so a
        // newcomer either finds the entry before removal or creates a fresh one after.
        self.guard.take();
        if let Some(mutex) = map.get(&self.key) {
            if Arc::strong_count(mutex) == 1 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_per_key_and_no_leak() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (locks, inside, max_inside) = (locks.clone(), inside.clone(), max_inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock(7).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert!(
            locks.is_empty(),
            "entries are removed when the last holder leaves"
        );
        // try_lock: refused while held, granted once released, and leaves nothing behind
        let held = locks.lock(7).await;
        assert!(locks.try_lock(7).is_none());
        assert_eq!(locks.len(), 1);
        drop(held);
        assert!(locks.is_empty());
        let tried = locks.try_lock(7).expect("free after release");
        assert!(locks.try_lock(7).is_none());
        drop(tried);
        assert!(locks.is_empty());
        // different keys do not block each other
        let _a = locks.lock(1).await;
        let _b = locks.lock(2).await;
        assert_eq!(locks.len(), 2);
    }
}
