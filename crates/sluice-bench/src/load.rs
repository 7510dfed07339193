//! The load: a server that answers one byte per request, and clients measuring what a new
//! connection costs (connect, 1-byte request and response, close — TCP_CRR) and what a
//! request costs on an open connection (TCP_RR).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_netdev::Netns;

// The first byte of a connection says what the server does with it. (A request starting
// with 'G' is HTTP: the answer names the server — its address here, the pod's name in a lab —
// so a client can tell which backend it reached.)

/// Answer one byte, then close.
pub const MODE_CRR: u8 = b'c';
/// Echo every byte until the client closes.
pub const MODE_RR: u8 = b'r';
/// Read and drop every byte; when the client closes its side, answer how many came.
pub const MODE_SINK: u8 = b's';

/// Lets the client reuse ports quickly: thousands of short connections per second.
pub fn tune_client(ns: &Netns) -> Result<(), String> {
    for (k, v) in [
        ("net/ipv4/tcp_tw_reuse", "1"),
        ("net/ipv4/ip_local_port_range", "1024 65000"),
    ] {
        sluice_netdev::sysctl_set(ns, k, v).map_err(|e| format!("{k}: {e}"))?;
    }
    Ok(())
}

/// The CPUs the load runs on: the client on the first CPU this process may use, the servers
/// on the second (the first again on a one-CPU machine). Pinned, every arm's client and
/// server meet the same way (across two CPUs) instead of on one CPU or two, as the scheduler
/// chose from one round to the next.
pub fn load_cpus() -> (usize, usize) {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let mut cpus = (0..nix::sched::CpuSet::count()).filter(|c| {
        allowed
            .as_ref()
            .is_none_or(|set| set.is_set(*c).unwrap_or(false))
    });
    let client = cpus.next().unwrap_or(0);
    (client, cpus.next().unwrap_or(client))
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// Load servers, each a thread inside some namespace, running until this is dropped. Every
/// arm's backends run these (the sluice lab's pods too), so the arms differ only in the path.
#[derive(Default)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    /// Starts a server on `addr` inside the namespace of `netns_fd`; returns once it listens.
    pub fn spawn(&mut self, netns_fd: OwnedFd, addr: SocketAddr) -> Result<(), String> {
        let handle = spawn_server(netns_fd, addr, self.stop.clone())?;
        self.threads.push(handle);
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A server thread inside the namespace of `netns_fd` until `stop` is set.
fn spawn_server(
    netns_fd: OwnedFd,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let started = (|| -> Result<TcpListener, String> {
            pin_to_cpu(load_cpus().1)?;
            nix::sched::setns(&netns_fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(l)
        })();
        let listener = match started {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let me = addr.ip().to_string();
                    // A new-connection request is answered here, as netperf's TCP_CRR
                    // server does: a thread started per connection would put its creation
                    // (and its stack's unmapping) into every measured connection.
                    match first_byte_soon(&s) {
                        Some(MODE_CRR) => answer_crr(s),
                        first => {
                            std::thread::spawn(move || serve(s, first, &me));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Wait for the next connection, waking now and then to see `stop`. (A
                    // sleep between attempts would add up to its length to every new
                    // connection's measured latency.)
                    use nix::poll::{PollFd, PollFlags, PollTimeout};
                    use std::os::fd::AsFd;
                    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    let _ = nix::poll::poll(&mut fds, PollTimeout::from(50u16));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    ready_rx
        .recv()
        .map_err(|_| "server thread died".to_string())??;
    Ok(handle)
}

/// How long the accepting thread waits for a new connection's first byte before leaving the
/// connection to a thread of its own (a client that connects and says nothing must not hold
/// up the next connection for longer).
const FIRST_BYTE_WAIT_MS: u16 = 5;

/// The connection's first byte if it arrives within FIRST_BYTE_WAIT_MS (a CRR client sends
/// it right after the handshake), else None (nothing read).
fn first_byte_soon(s: &TcpStream) -> Option<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, PollTimeout::from(FIRST_BYTE_WAIT_MS)) {
        Ok(n) if n > 0 => {
            let mut b = [0u8; 1];
            let mut reader = s;
            match reader.read(&mut b) {
                Ok(1) => Some(b[0]),
                _ => None,
            }
        }
        _ => None,
    }
}

fn answer_crr(mut s: TcpStream) {
    let _ = s.write_all(&[MODE_CRR]);
}

/// Serves one connection whose first byte, when already read, is `first`.
fn serve(mut s: TcpStream, first: Option<u8>, me: &str) {
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 1];
    match first {
        Some(f) => b[0] = f,
        None => {
            if s.read_exact(&mut b).is_err() {
                return;
            }
        }
    }
    if b[0] == b'G' {
        let mut head = vec![b'G'];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            if s.read_exact(&mut b).is_err() {
                return;
            }
            head.push(b[0]);
        }
        let _ = write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{me}",
            me.len()
        );
        return;
    }
    if b[0] == MODE_CRR {
        let _ = s.write_all(&b);
        return;
    }
    if b[0] == MODE_SINK {
        sink(s);
        return;
    }
    let mut buf = [0u8; 65536];
    let _ = s.write_all(&b);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads until the client closes its side, then answers how many bytes came (u64, big
/// endian): the client's rate counts what arrived, not what sat in its send buffer.
fn sink(mut s: TcpStream) {
    let mut buf = vec![0u8; 1 << 18];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_all(&total.to_be_bytes());
}

/// Latencies of a run, with its rate.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub count: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Every latency, µs (CRR only: runs split into rounds are merged from these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latencies_us: Vec<f64>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.seconds.max(1e-9)
    }

    fn from(lat: Vec<Duration>, errors: u64, elapsed: Duration) -> Self {
        let us = lat.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        Self::from_us(us, errors, elapsed.as_secs_f64())
    }

    fn from_us(mut lat: Vec<f64>, errors: u64, seconds: f64) -> Self {
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * p) as usize]
            }
        };
        Sample {
            count: lat.len() as u64,
            errors,
            seconds,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            latencies_us: lat,
        }
    }

    /// Drops the individual latencies (an RR run has hundreds of thousands).
    fn without_latencies(mut self) -> Self {
        self.latencies_us = Vec::new();
        self
    }

    /// One sample of several runs (rounds of one measurement): their latencies pooled, their
    /// time and errors added.
    pub fn merge(runs: &[Sample]) -> Sample {
        let lat = runs
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        Self::from_us(
            lat,
            runs.iter().map(|r| r.errors).sum(),
            runs.iter().map(|r| r.seconds).sum(),
        )
    }
}

/// New connections back to back for `duration`: connect, one byte each way, close.
pub fn crr(target: SocketAddr, duration: Duration) -> Sample {
    let mut lat = Vec::new();
    let mut errors = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(&[MODE_CRR])?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(())
        })();
        match ok {
            Ok(()) => lat.push(t.elapsed()),
            Err(_) => errors += 1,
        }
        if errors > 100 && lat.is_empty() {
            break;
        }
    }
    Sample::from(lat, errors, start.elapsed())
}

/// One-byte requests on one open connection for `duration`.
pub fn rr(target: SocketAddr, duration: Duration) -> Sample {
    let mut lat = Vec::new();
    let mut errors = 0;
    let start = Instant::now();
    let conn = (|| -> std::io::Result<TcpStream> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(&[MODE_RR])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        Ok(s)
    })();
    let Ok(mut s) = conn else {
        return Sample::from(lat, 1, start.elapsed()).without_latencies();
    };
    let start = Instant::now();
    let mut b = [0u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        if s.write_all(b"x")
            .and_then(|_| s.read_exact(&mut b))
            .is_err()
        {
            errors += 1;
            break;
        }
        lat.push(t.elapsed());
    }
    Sample::from(lat, errors, start.elapsed()).without_latencies()
}

/// The server a new connection to `target` reaches (its answer to `GET /`).
pub fn who(target: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split("\r\n\r\n").nth(1)?;
    Some(body.trim().to_string())
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes, unlike `Instant`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Polls with new connections until `consecutive` in a row reach `want`; returns the
/// monotonic time the first of them started, or None after `limit`.
pub fn first_reaching(
    target: SocketAddr,
    want: &str,
    consecutive: usize,
    limit: Duration,
) -> Option<u64> {
    let start = Instant::now();
    let mut run: Option<(u64, usize)> = None;
    while start.elapsed() < limit {
        let t = monotonic_ns();
        if who(target).as_deref() == Some(want) {
            let (first, n) = run.unwrap_or((t, 0));
            if n + 1 >= consecutive.max(1) {
                return Some(first);
            }
            run = Some((first, n + 1));
        } else {
            run = None;
        }
    }
    None
}

/// Single-stream throughput, one way as netperf's TCP_STREAM and iperf3 measure it: the
/// client writes for `duration`, closes its side, and the rate is the bytes the server
/// counted over the time until its count came back. (An echo would carry every byte twice
/// and keep three threads busy on two CPUs.)
pub fn stream(target: SocketAddr, duration: Duration) -> std::io::Result<f64> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[MODE_SINK])?;
    let chunk = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    while start.elapsed() < duration {
        s.write_all(&chunk)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    Ok(u64::from_be_bytes(count) as f64 / start.elapsed().as_secs_f64())
}

/// Busy CPU time of the whole machine (all cores, seconds) so far, from /proc/stat.
pub fn busy_cpu_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    busy / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Sample::from(lat, 0, Duration::from_secs(2));
        assert_eq!((s.p50_us.round(), s.p99_us.round()), (50.0, 99.0));
        assert_eq!(s.rate(), 50.0);
    }

    #[test]
    fn rounds_merge_into_one_sample_of_all_their_latencies() {
        let odd: Vec<Duration> = (1..=100).step_by(2).map(Duration::from_micros).collect();
        let even: Vec<Duration> = (2..=100).step_by(2).map(Duration::from_micros).collect();
        let m = Sample::merge(&[
            Sample::from(odd, 1, Duration::from_secs(1)),
            Sample::from(even, 2, Duration::from_secs(1)),
        ]);
        assert_eq!((m.count, m.errors, m.seconds), (100, 3, 2.0));
        assert_eq!((m.p50_us.round(), m.p99_us.round()), (50.0, 99.0));
    }

    #[test]
    fn a_loopback_server_answers_both_modes() {
        let listener_addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let fd: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let server = spawn_server(fd, listener_addr, stop.clone()).unwrap();
        let c = crr(listener_addr, Duration::from_millis(100));
        assert!(c.count > 0 && c.errors == 0, "{c:?}");
        // Functional checks only: how fast either mode runs depends on the machine's load.
        let r = rr(listener_addr, Duration::from_millis(100));
        assert!(r.count > 0 && r.errors == 0, "{r:?}");
        assert_eq!(who(listener_addr).as_deref(), Some("127.0.0.1"));
        assert!(first_reaching(listener_addr, "127.0.0.1", 3, Duration::from_secs(1)).is_some());
        assert!(first_reaching(listener_addr, "10.0.0.1", 1, Duration::from_millis(50)).is_none());
        assert!(
            stream(listener_addr, Duration::from_millis(100)).unwrap() > 0.0,
            "bytes/s"
        );
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap();
    }
}
