//! `sluice bench`: how the service path scales with the number of Services, measured side by
//! side against faithful emulations of kube-proxy's iptables and nftables modes.
//!
//! * [`kube_proxy`]: the rules kube-proxy writes (pure text generation, unit-tested).

pub mod kube_proxy;
