//! The bounded buffer of recent flows (Hubble keeps 4095 by default) plus a broadcast for
//! followers. Writers and readers share it behind a mutex held only to push or copy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

pub struct FlowRing<T> {
    inner: Mutex<Inner<T>>,
    live: broadcast::Sender<Arc<T>>,
}

struct Inner<T> {
    flows: VecDeque<Arc<T>>,
    capacity: usize,
    /// Every flow ever pushed, including those evicted since.
    seen: u64,
}

impl<T> FlowRing<T> {
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(capacity.clamp(16, 65536));
        Self {
            inner: Mutex::new(Inner {
                flows: VecDeque::with_capacity(capacity),
                capacity: capacity.max(1),
                seen: 0,
            }),
            live,
        }
    }

    pub fn push(&self, flow: T) {
        let flow = Arc::new(flow);
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if inner.flows.len() == inner.capacity {
                inner.flows.pop_front();
            }
            inner.flows.push_back(flow.clone());
            inner.seen += 1;
        }
        // No followers is not an error.
        let _ = self.live.send(flow);
    }

    /// The buffered flows, oldest first, and a subscription that continues right after them
    /// (taken under the same lock, so a follower neither misses nor repeats a flow).
    pub fn snapshot_and_follow(&self) -> (Vec<Arc<T>>, broadcast::Receiver<Arc<T>>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.live.subscribe();
        (inner.flows.iter().cloned().collect(), rx)
    }

    pub fn snapshot(&self) -> Vec<Arc<T>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.flows.iter().cloned().collect()
    }

    /// (flows buffered, capacity, flows seen since start).
    pub fn stats(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.flows.len() as u64, inner.capacity as u64, inner.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_up_to_capacity_and_counts_all() {
        let ring = FlowRing::new(3);
        for i in 0..5 {
            ring.push(i);
        }
        let kept: Vec<i32> = ring.snapshot().iter().map(|f| **f).collect();
        assert_eq!(kept, vec![2, 3, 4]);
        assert_eq!(ring.stats(), (3, 3, 5));
    }

    #[tokio::test]
    async fn followers_get_what_comes_after_the_snapshot() {
        let ring = FlowRing::new(4);
        ring.push(1);
        let (past, mut rx) = ring.snapshot_and_follow();
        ring.push(2);
        assert_eq!(past.len(), 1);
        assert_eq!(*rx.recv().await.unwrap(), 2);
    }
}
