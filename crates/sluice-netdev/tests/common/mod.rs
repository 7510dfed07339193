//! Shared helpers: root gating and namespaces that are always cleaned up.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_netdev::Netns;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True if we can run. Not root: fail under CI=true, else skip loudly.
pub fn need_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    // write(2) on fd 2 directly: libtest captures Rust's stderr of passing tests.
    let msg = format!(
        "\n!!!!!!!! SKIPPING {test}: needs root (run as root; CI=true makes this a failure) !!!!!!!!\n"
    );
    let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
    false
}

/// A unique namespace name `sntest-<pid>-<n>-<tag>` (not created).
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sntest-{}-{n}-{tag}", std::process::id())
}

/// Creates namespaces and deletes all of them on drop, even on panic.
#[derive(Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn create(&mut self, tag: &str) -> Netns {
        let name = unique_name(tag);
        // Registered first, so a half-created namespace is removed too.
        self.names.push(name.clone());
        Netns::create(&name).unwrap_or_else(|e| panic!("create netns {name}: {e}"))
    }

    /// A name that will be cleaned up but is not created.
    pub fn reserve(&mut self, tag: &str) -> String {
        let name = unique_name(tag);
        self.names.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = Netns::delete(name) {
                eprintln!("cleanup: delete netns {name}: {e}");
            }
        }
    }
}
