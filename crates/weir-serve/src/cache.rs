//! The opt-in response cache: answers keyed by protocol, model, version and
//! the exact request body, least recently used evicted first, bounded by
//! the bytes of the answers it holds. Models are deterministic, so a cached
//! answer is the answer.

use std::sync::Mutex;

use lru::LruCache;
use serde_json::Value;

pub(crate) type Key = [u8; 32];

pub(crate) struct ResponseCache {
    budget: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: LruCache<Key, (Value, usize)>,
    bytes: usize,
}

impl ResponseCache {
    /// A cache of at most `budget` bytes of answers; 0 turns it off.
    pub(crate) fn new(budget: usize) -> ResponseCache {
        ResponseCache {
            budget,
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub(crate) fn key(protocol: &str, model: &str, version: i64, body: &[u8]) -> Key {
        let mut h = blake3::Hasher::new();
        // Length-prefixed, so no two different tuples hash the same bytes.
        for part in [protocol.as_bytes(), model.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&version.to_le_bytes());
        h.update(body);
        *h.finalize().as_bytes()
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Value> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.entries.get(key).map(|(v, _)| v.clone())
    }

    pub(crate) fn put(&self, key: Key, answer: &Value) {
        // What the answer costs to keep, roughly: its JSON text.
        let size = answer.to_string().len() + std::mem::size_of::<Key>();
        if size > self.budget {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, old)) = inner.entries.put(key, (answer.clone(), size)) {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            let Some((_, (_, evicted))) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes -= evicted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_recent_answers_within_its_byte_budget() {
        let answer = json!({"predictions": [0.25]});
        let size = answer.to_string().len() + 32;
        let cache = ResponseCache::new(size * 2);
        let key = |i: u8| ResponseCache::key("v2", "m", 1, &[i]);
        cache.put(key(1), &answer);
        cache.put(key(2), &answer);
        assert!(cache.get(&key(1)).is_some()); // 1 is now the most recent
        cache.put(key(3), &answer);
        assert!(cache.get(&key(2)).is_none(), "the least recent went");
        assert_eq!(cache.get(&key(1)), Some(answer.clone()));
        assert!(cache.get(&key(3)).is_some());
        assert_ne!(
            ResponseCache::key("v2", "m", 1, b"x"),
            ResponseCache::key("v2", "m", 2, b"x"),
            "versions do not share answers"
        );
        let off = ResponseCache::new(0);
        off.put(key(1), &answer);
        assert!(!off.enabled() && off.get(&key(1)).is_none());
    }
}
