//! Helpers for the end-to-end tests in `tests/`: root checks, binaries, unique lab names,
//! reachability matrices.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_lab::{probe, Lab, LabGuard, LabOptions};

pub mod matrix;

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// True when the test may run. Not root: fails under CI=true, else prints a loud SKIP.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: end-to-end tests need root and CI=true is set");
    }
    eprintln!("\n**********\nSKIP {test}: end-to-end tests need root\n**********\n");
    false
}

/// `SLUICE_BIN_DIR`, default `<workspace>/target/debug`; panics naming what is missing.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("SLUICE_BIN_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug"));
    let missing: Vec<_> = ["sluice", "sluice-agent", "sluice-cni"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?} in {} (build them: cargo build -p sluice -p sluice-agent -p sluice-cni, or set SLUICE_BIN_DIR)",
        dir.display()
    );
    dir
}

/// A lab name unique to this process and call: `e2e-<pid>-<n>`.
pub fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The example cluster file `examples/<file>`.
pub fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(file)
}

/// Brings up `examples/<file>` under a unique name; the guard tears it down.
pub fn up_example(file: &str) -> LabGuard {
    let opts = LabOptions {
        name: Some(unique_name()),
        bin_dir: Some(bin_dir()),
        quiet: false,
        ..Default::default()
    };
    match Lab::up(example(file).as_path(), opts) {
        Ok(lab) => lab.into_guard(),
        Err(e) => panic!("lab up {file}: {e}"),
    }
}

/// Brings up `examples/<file>` with `spec_lines` (e.g. "  kvstore: etcd\n") added to its
/// Cluster spec, under a unique name; the guard tears it down.
pub fn up_example_with(file: &str, spec_lines: &str) -> LabGuard {
    let text = std::fs::read_to_string(example(file)).unwrap();
    // The Cluster document comes first, so the first spec is its spec.
    let cluster = text.find("kind: Cluster").expect("a Cluster document");
    assert!(
        text.find("\nspec:\n").is_some_and(|at| at > cluster),
        "{file}: Cluster spec"
    );
    let text = text.replacen("\nspec:\n", &format!("\nspec:\n{spec_lines}"), 1);
    let opts = LabOptions {
        name: Some(unique_name()),
        bin_dir: Some(bin_dir()),
        quiet: false,
        ..Default::default()
    };
    match Lab::up(sluice_lab::ClusterSource::Text(text), opts) {
        Ok(lab) => lab.into_guard(),
        Err(e) => panic!("lab up {file} with {spec_lines:?}: {e}"),
    }
}

/// Retries `ok` every 200 ms until it succeeds; after `within`, panics with its last error.
pub fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + within;
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One probe kind against a pod's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp(p) => write!(f, "tcp/{p}"),
            Probe::Udp(p) => write!(f, "udp/{p}"),
        }
    }
}

/// Probes `dst` (whose servers identify as `dst_name`) from the calling thread's namespace.
/// TCP: HTTP answer names the pod and a raw payload echoes; UDP: `whoami` names the pod and a
/// payload echoes. Returns what went wrong.
pub fn probe_pod(dst: Ipv4Addr, dst_name: &str, probe: Probe) -> Result<(), String> {
    match probe {
        Probe::Tcp(port) => {
            let addr = SocketAddr::from((dst, port));
            let body = probe::http_get(addr, PROBE_TIMEOUT).map_err(|e| format!("HTTP: {e}"))?;
            if body != format!("{dst_name}\n") {
                return Err(format!("HTTP answered {body:?}, expected {dst_name:?}"));
            }
            let echo = probe::tcp_echo(addr, b"echo this please", PROBE_TIMEOUT)
                .map_err(|e| format!("echo: {e}"))?;
            if echo != b"echo this please" {
                return Err(format!(
                    "echo returned {:?}",
                    String::from_utf8_lossy(&echo)
                ));
            }
            Ok(())
        }
        Probe::Udp(port) => {
            let addr = SocketAddr::from((dst, port));
            let who = probe::udp_echo(addr, b"whoami", PROBE_TIMEOUT)
                .map_err(|e| format!("whoami: {e}"))?;
            if who != dst_name.as_bytes() {
                return Err(format!(
                    "whoami answered {:?}, expected {dst_name:?}",
                    String::from_utf8_lossy(&who)
                ));
            }
            let echo =
                probe::udp_echo(addr, b"ping", PROBE_TIMEOUT).map_err(|e| format!("echo: {e}"))?;
            if echo != b"ping" {
                return Err(format!(
                    "echo returned {:?}",
                    String::from_utf8_lossy(&echo)
                ));
            }
            Ok(())
        }
    }
}

/// Expected-vs-observed reachability: rows are sources, columns destinations × probes.
pub struct Matrix {
    pub sources: Vec<String>,
    pub columns: Vec<(String, Probe)>,
    /// `cells[source][column]`: `None` when reachable, else why not.
    pub cells: Vec<Vec<Option<String>>>,
    pub expected: Vec<Vec<bool>>,
}

impl Matrix {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            for (j, (dst, probe)) in self.columns.iter().enumerate() {
                let ok = self.cells[i][j].is_none();
                if ok != self.expected[i][j] {
                    let why = self.cells[i][j]
                        .clone()
                        .unwrap_or_else(|| "reachable".into());
                    out.push(format!(
                        "{src} -> {dst} {probe}: expected {}, got {why}",
                        if self.expected[i][j] {
                            "reachable"
                        } else {
                            "blocked"
                        }
                    ));
                }
            }
        }
        out
    }

    /// Expected and observed grids (`.` reachable, `X` not) side by side.
    pub fn render(&self) -> String {
        let grid = |cell: &dyn Fn(usize, usize) -> bool| {
            let mut s = format!("{:>8} ", "");
            for (dst, probe) in &self.columns {
                s += &format!("{:>12}", format!("{dst}:{probe}"));
            }
            s.push('\n');
            for (i, src) in self.sources.iter().enumerate() {
                s += &format!("{src:>8} ");
                for j in 0..self.columns.len() {
                    s += &format!("{:>12}", if cell(i, j) { "." } else { "X" });
                }
                s.push('\n');
            }
            s
        };
        format!(
            "expected:\n{}observed:\n{}",
            grid(&|i, j| self.expected[i][j]),
            grid(&|i, j| self.cells[i][j].is_none())
        )
    }
}

/// Probes every pod from every pod on every declared port; all expected reachable.
pub fn pod_matrix(lab: &Lab) -> Matrix {
    let pods = lab.pods().to_vec();
    let mut columns = Vec::new();
    for p in &pods {
        columns.extend(p.tcp_ports.iter().map(|&port| (p.key(), Probe::Tcp(port))));
        columns.extend(p.udp_ports.iter().map(|&port| (p.key(), Probe::Udp(port))));
    }
    let targets: Vec<(Ipv4Addr, String, Probe)> = columns
        .iter()
        .map(|(key, probe)| {
            (
                lab.pod_ip(key).expect("every pod has an address"),
                key.clone(),
                *probe,
            )
        })
        .collect();
    let mut cells = Vec::new();
    for src in &pods {
        let row = lab
            .run_in_pod(&src.key(), || {
                targets
                    .iter()
                    .map(|(ip, name, probe)| probe_pod(*ip, name, *probe).err())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| panic!("enter pod {}: {e}", src.key()));
        cells.push(row);
    }
    Matrix {
        sources: pods.iter().map(|p| p.key()).collect(),
        expected: vec![vec![true; columns.len()]; pods.len()],
        columns,
        cells,
    }
}

/// A TCP+UDP echo server on `port` inside a node's namespace, stopped when dropped.
pub struct NodeServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl NodeServer {
    pub fn start(lab: &Lab, node: &str, port: u16) -> NodeServer {
        use std::io::{Read, Write};
        let (tcp, udp) = lab
            .run_in_node(node, || {
                let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                (
                    std::net::TcpListener::bind(any),
                    std::net::UdpSocket::bind(any),
                )
            })
            .unwrap_or_else(|e| panic!("enter node {node}: {e}"));
        let tcp = tcp.unwrap_or_else(|e| panic!("node {node}: bind TCP {port}: {e}"));
        let udp = udp.unwrap_or_else(|e| panic!("node {node}: bind UDP {port}: {e}"));
        tcp.set_nonblocking(true).expect("nonblocking listener");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("UDP timeout");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(PROBE_TIMEOUT));
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        NodeServer {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Tears the lab down and asserts nothing of it is left: no netns with its prefix, no cgroup,
/// no pin dir, no state dir, none of its processes.
pub fn down_and_check(lab: LabGuard) {
    let name = lab.name().to_string();
    let mut pids: Vec<u32> = lab.nodes().iter().filter_map(|n| n.agent_pid).collect();
    pids.extend(lab.pods().iter().filter_map(|p| p.server_pid));
    pids.extend(lab.state().etcd_pid);
    pids.extend(lab.state().apiserver_pid);
    let report = lab.down().unwrap_or_else(|e| panic!("down {name}: {e}"));
    assert!(report.found, "down {name} found nothing to remove");
    let left = sluice_lab::leftovers(&name);
    assert!(left.is_empty(), "after down, lab {name} left {left:?}");
    // Zombies are reaped by the lab's reaper threads; give them a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| running(*p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after down, processes {alive:?} of lab {name} still run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = Lab::down(&name).unwrap_or_else(|e| panic!("second down {name}: {e}"));
    assert!(!again.found, "second down of {name} found something");
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next()),
                Some("Z") | Some("X")
            )
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_shows_expected_and_observed() {
        let m = Matrix {
            sources: vec!["x/a".into(), "y/b".into()],
            columns: vec![
                ("x/a".into(), Probe::Tcp(80)),
                ("y/b".into(), Probe::Udp(81)),
            ],
            cells: vec![vec![None, Some("timed out".into())], vec![None, None]],
            expected: vec![vec![true, true], vec![true, true]],
        };
        assert_eq!(
            m.failures(),
            ["x/a -> y/b udp/81: expected reachable, got timed out"]
        );
        let r = m.render();
        assert!(
            r.contains("expected:") && r.contains("observed:") && r.contains('X'),
            "{r}"
        );
        assert_eq!(r.matches('X').count(), 1, "{r}");
    }
}
