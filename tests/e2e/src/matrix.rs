//! Reachability matrices under NetworkPolicy: every pod probes every other pod on TCP/UDP
//! 80/81 in parallel and the result is compared with the expected matrix (printed side by
//! side on failure). Policies take effect through the agents' watchers, so cells that differ
//! are probed again until they match or time runs out.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sluice_lab::{probe, Lab};

use crate::{Matrix, Probe};

pub const TIMEOUT: Duration = Duration::from_millis(1500);
pub const SETTLE: Duration = Duration::from_secs(12);
pub const PROBES: [Probe; 4] = [
    Probe::Tcp(80),
    Probe::Tcp(81),
    Probe::Udp(80),
    Probe::Udp(81),
];

/// One reachability probe with a short timeout: a blocked port costs one timeout.
pub fn reach(dst: Ipv4Addr, name: &str, probe: Probe) -> Option<String> {
    let result = match probe {
        Probe::Tcp(port) => probe::http_get(SocketAddr::from((dst, port)), TIMEOUT)
            .map(|body| body.trim().to_string()),
        Probe::Udp(port) => probe::udp_echo(SocketAddr::from((dst, port)), b"whoami", TIMEOUT)
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
    };
    match result {
        Ok(who) if who == name => None,
        Ok(who) => Some(format!("answered as {who:?}")),
        Err(e) => Some(e.to_string()),
    }
}

/// Probes `cells` (source, destination, probe) all at once; returns why each failed.
pub fn probe_cells(lab: &Lab, cells: &[(String, String, Probe)]) -> Vec<Option<String>> {
    let targets: Vec<Ipv4Addr> = cells
        .iter()
        .map(|(_, d, _)| lab.pod_ip(d).unwrap())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = cells
            .iter()
            .zip(targets)
            .map(|((src, dst, probe), ip)| {
                s.spawn(move || {
                    lab.run_in_pod(src, || reach(ip, dst, *probe))
                        .unwrap_or_else(|e| Some(format!("enter {src}: {e}")))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Probes the whole matrix until it matches `expect` (source, destination, probe) or
/// SETTLE passes; panics with both matrices otherwise.
pub fn check(lab: &Lab, scenario: &str, expect: impl Fn(&str, &str, Probe) -> bool) {
    let pods: Vec<String> = lab.pods().iter().map(|p| p.key()).collect();
    let columns: Vec<(String, Probe)> = pods
        .iter()
        .flat_map(|p| PROBES.iter().map(move |probe| (p.clone(), *probe)))
        .collect();
    let expected: Vec<Vec<bool>> = pods
        .iter()
        .map(|s| {
            // A pod always reaches itself (not probed: it never leaves the pod).
            columns
                .iter()
                .map(|(d, p)| s == d || expect(s, d, *p))
                .collect()
        })
        .collect();
    // Self-probes stay inside the pod: no policy applies, so they are not asked.
    let all: Vec<(usize, usize)> = (0..pods.len())
        .flat_map(|i| (0..columns.len()).map(move |j| (i, j)))
        .filter(|(i, j)| pods[*i] != columns[*j].0)
        .collect();
    let mut cells: Vec<Vec<Option<String>>> = vec![vec![None; columns.len()]; pods.len()];
    let deadline = Instant::now() + SETTLE;
    let mut todo = all.clone();
    loop {
        let asked: Vec<(String, String, Probe)> = todo
            .iter()
            .map(|(i, j)| (pods[*i].clone(), columns[*j].0.clone(), columns[*j].1))
            .collect();
        for ((i, j), got) in todo.iter().zip(probe_cells(lab, &asked)) {
            cells[*i][*j] = got;
        }
        todo = all
            .iter()
            .copied()
            .filter(|(i, j)| cells[*i][*j].is_none() != expected[*i][*j])
            .collect();
        if todo.is_empty() {
            eprintln!("scenario {scenario}: matrix as expected");
            return;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let m = Matrix {
        sources: pods,
        columns,
        cells,
        expected,
    };
    panic!(
        "scenario {scenario}: reachability differs\n{}\n{}",
        m.render(),
        m.failures().join("\n")
    );
}

pub fn ns(pod: &str) -> &str {
    pod.split('/').next().unwrap()
}

pub fn apply(lab: &Lab, yaml: &str) {
    lab.apply_manifest("policy", yaml).unwrap();
}

pub fn policy(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: {name}, namespace: \"{namespace}\" }}\nspec:\n{spec}\n"
    )
}

/// One policy (replacing the previous one): namespace `into` admits ingress only from pods of
/// namespace `from`.
pub fn admit_only_from(lab: &Lab, into: &str, from: &str) {
    apply(
        lab,
        &policy(
            "admit-only",
            into,
            &format!("  podSelector: {{}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - namespaceSelector: {{ matchLabels: {{ ns: \"{from}\" }} }}"),
        ),
    );
}
