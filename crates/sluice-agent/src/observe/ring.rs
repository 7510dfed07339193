//! The bounded buffer of recent flows (Hubble keeps 4095 by default) plus a broadcast for
//! followers. Writers and readers share it behind a mutex held only to push or copy.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

pub struct FlowRing<T> {
    inner: Mutex<Inner<T>>,
    live: broadcast::Sender<Arc<T>>,
}

/// Flows are kept by value (a busy node pushes tens of thousands a second: no allocation each,
/// nor a free when one falls out); readers get shared copies.
struct Inner<T> {
    flows: VecDeque<T>,
    capacity: usize,
    /// Every flow ever pushed, including those evicted since.
    seen: u64,
}

impl<T: Clone> FlowRing<T> {
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
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Sent under the lock a follower subscribes under: it gets each flow once, in its
        // snapshot or from here. Without followers there is nothing to copy.
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(Arc::new(flow.clone()));
        }
        if inner.flows.len() == inner.capacity {
            inner.flows.pop_front();
        }
        inner.flows.push_back(flow);
        inner.seen += 1;
    }

    /// The buffered flows, oldest first, and a subscription that continues right after them
    /// (taken under the same lock, so a follower neither misses nor repeats a flow).
    pub fn snapshot_and_follow(&self) -> (Vec<Arc<T>>, broadcast::Receiver<Arc<T>>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.live.subscribe();
        (copies(&inner.flows), rx)
    }

    pub fn snapshot(&self) -> Vec<Arc<T>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        copies(&inner.flows)
    }

    /// (flows buffered, capacity, flows seen since start).
    pub fn stats(&self) -> (u64, u64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.flows.len() as u64, inner.capacity as u64, inner.seen)
    }
}

fn copies<T: Clone>(flows: &VecDeque<T>) -> Vec<Arc<T>> {
    flows.iter().cloned().map(Arc::new).collect()
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

    #[tokio::test]
    async fn without_followers_nothing_is_sent_and_a_later_follower_starts_at_its_snapshot() {
        let ring = FlowRing::new(4);
        ring.push(1);
        ring.push(2);
        assert_eq!(ring.live.len(), 0, "no follower: nothing queued for one");
        let (past, mut rx) = ring.snapshot_and_follow();
        assert_eq!(past.iter().map(|f| **f).collect::<Vec<_>>(), vec![1, 2]);
        ring.push(3);
        assert_eq!(*rx.recv().await.unwrap(), 3);
        assert!(rx.try_recv().is_err(), "each flow once");
    }
}
