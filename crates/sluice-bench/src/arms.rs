//! The arms of the comparison and how each is set up, loaded with N Services, measured and
//! torn down: the kube-proxy emulations and the no-rules floor on the plain topology, sluice
//! (the real agent and datapath, socket-LB on and off) in a one-node lab.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::kube_proxy::{self, ServicePort};
use crate::load::{self, Sample};
use crate::topology::{Topology, BACKEND_PORT, POD_CIDR};

/// The measured Service's frontend.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// The kernel's own path between the client and a backend: no Service at all.
    NoRules,
    IptablesLegacy,
    IptablesNft,
    Nftables,
    Sluice,
    SluiceNoSocketLb,
    /// The sluice datapath without a Service: the client straight to a pod no Service selects,
    /// in the same kind of lab.
    SluicePodToPod,
}

impl Arm {
    pub const ALL: [Arm; 7] = [
        Arm::NoRules,
        Arm::IptablesLegacy,
        Arm::IptablesNft,
        Arm::Nftables,
        Arm::Sluice,
        Arm::SluiceNoSocketLb,
        Arm::SluicePodToPod,
    ];

    /// Runs in a sluice lab (not on the plain topology).
    pub fn in_lab(self) -> bool {
        matches!(
            self,
            Arm::Sluice | Arm::SluiceNoSocketLb | Arm::SluicePodToPod
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Arm::NoRules => "no-rules",
            Arm::IptablesLegacy => "iptables-legacy",
            Arm::IptablesNft => "iptables-nft",
            Arm::Nftables => "nftables",
            Arm::Sluice => "sluice",
            Arm::SluiceNoSocketLb => "sluice-no-socket-lb",
            Arm::SluicePodToPod => "sluice-pod-to-pod",
        }
    }

    pub fn parse(s: &str) -> Result<Arm, String> {
        Arm::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Arm::ALL.iter().map(|a| a.name()).collect();
            format!("arm {s:?} is not one of: {}", names.join(", "))
        })
    }
}

/// One arm at one number of Services.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub arm: Arm,
    pub services: usize,
    /// Seconds from handing over the N+1 Services to their being in effect.
    pub load_seconds: f64,
    pub crr_rate: f64,
    pub crr_p50_us: f64,
    pub crr_p99_us: f64,
    pub crr_errors: u64,
    /// CRR p50 of the no-rules floor measured interleaved with this run (the sluice arms), µs.
    #[serde(default)]
    pub floor_crr_p50_us: Option<f64>,
    /// Stream throughput of the no-rules floor measured interleaved with this run, Gbit/s.
    #[serde(default)]
    pub floor_stream_gbps: Option<f64>,
    /// This run's CRR p50 over the floor's, paired round by round (each round's ratio of
    /// the two p50s taken back to back; the median of the rounds).
    #[serde(default)]
    pub crr_vs_floor: Option<f64>,
    /// This run's stream throughput over the floor's, paired round by round likewise.
    #[serde(default)]
    pub stream_vs_floor: Option<f64>,
    /// The paired rounds behind those ratios, in the order they ran (empty without a floor):
    /// this run's CRR p50 (µs) and stream rate (Gbit/s) per round, and the floor's beside each.
    #[serde(default, skip_serializing_if = "Rounds::is_empty")]
    pub rounds: Rounds,
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    /// Requests answered in the RR run (and failures: 0 unless the connection broke).
    pub rr_count: u64,
    pub rr_errors: u64,
    /// Busy CPU (all cores) per new connection during the CRR run.
    pub cpu_us_per_conn: f64,
    /// Single-stream throughput, one way (client to backend, as TCP_STREAM), Gbit/s.
    pub stream_gbps: f64,
    /// The stream broke before its time was up (the client says why on stderr).
    #[serde(default)]
    pub stream_failed: bool,
    /// From handing over a change of the measured Service's only endpoint to the first new
    /// connection that reaches the new one, ms (None: the arm has no Service to change).
    pub update_ms: Option<f64>,
    /// sluice: the agent's own reconcile of one endpoint change (map writes), ms: the median
    /// of `AGENT_CHANGES` changes, each timed on its own.
    pub agent_update_ms: Option<f64>,
    /// sluice: the slowest of those changes, ms.
    #[serde(default)]
    pub agent_update_max_ms: Option<f64>,
}

/// Per-round figures of the paired runs (see `Measurement::rounds`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rounds {
    pub crr_p50_us: Vec<f64>,
    pub floor_crr_p50_us: Vec<f64>,
    pub stream_gbps: Vec<f64>,
    pub floor_stream_gbps: Vec<f64>,
    /// The noise control (an A/A test): the floor paired with itself in CRR rounds run the
    /// same way, right after this run's, so the spread two identical paths show at that
    /// moment can be read beside this run's ratio to the floor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_crr_p50_us: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_floor_crr_p50_us: Vec<f64>,
    /// The same for the stream: the floor's rate paired with itself, after this run's rounds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_stream_gbps: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_floor_stream_gbps: Vec<f64>,
}

impl Rounds {
    pub fn is_empty(&self) -> bool {
        self.crr_p50_us.is_empty() && self.stream_gbps.is_empty()
    }

    /// Quartiles of the rounds' CRR p50 ratios (this run over the floor).
    pub fn crr_quartiles(&self) -> Option<(f64, f64)> {
        paired_quartiles(&self.crr_p50_us, &self.floor_crr_p50_us)
    }

    /// Quartiles of the rounds' stream ratios.
    pub fn stream_quartiles(&self) -> Option<(f64, f64)> {
        paired_quartiles(&self.stream_gbps, &self.floor_stream_gbps)
    }

    /// The noise control's median CRR ratio (the floor over itself) and its quartiles.
    pub fn control_crr(&self) -> Option<(f64, f64, f64)> {
        median_and_quartiles(&self.control_crr_p50_us, &self.control_floor_crr_p50_us)
    }

    /// The noise control's median stream ratio and its quartiles.
    pub fn control_stream(&self) -> Option<(f64, f64, f64)> {
        median_and_quartiles(&self.control_stream_gbps, &self.control_floor_stream_gbps)
    }
}

fn median_and_quartiles(ours: &[f64], floors: &[f64]) -> Option<(f64, f64, f64)> {
    let (q1, q3) = paired_quartiles(ours, floors)?;
    Some((paired_median_ratio(ours, floors)?, q1, q3))
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The `sluice` binary (its `bench client` runs the load inside the client's namespace).
    pub sluice_bin: PathBuf,
    /// Where `sluice-agent` and `sluice-cni` are, for the lab arms.
    pub bin_dir: PathBuf,
    pub duration: Duration,
    /// Paired rounds each sluice run is split into, alternating with the floor.
    pub rounds: u32,
    /// Unique prefix of everything this run creates.
    pub prefix: String,
}

/// The other Services: two endpoints each (addresses that are never reached).
pub fn background_services(n: usize) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            namespace: "bench".into(),
            name: format!("bg-{i}"),
            port_name: "http".into(),
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i as u32),
            port: 80,
            protocol: "tcp",
            endpoints: vec![
                (
                    Ipv4Addr::new(10, 251, (i / 250) as u8, (i % 250) as u8 + 2),
                    8080,
                ),
                (
                    Ipv4Addr::new(10, 252, (i / 250) as u8, (i % 250) as u8 + 2),
                    8080,
                ),
            ],
        })
        .collect()
}

/// The background Services with the measured one in the middle (kube-proxy writes services
/// in no particular order: on average a packet walks past half of them).
fn kube_proxy_services(n: usize, backends: &[Ipv4Addr]) -> Vec<ServicePort> {
    let mut all = background_services(n);
    let measured = ServicePort {
        namespace: "bench".into(),
        name: "main".into(),
        port_name: "http".into(),
        cluster_ip: VIP,
        port: 80,
        protocol: "tcp",
        endpoints: backends.iter().map(|b| (*b, BACKEND_PORT)).collect(),
    };
    all.insert(n / 2, measured);
    all
}

/// Starts `sluice bench client --mode reach` through `cmd`: it polls until `consecutive` new
/// connections in a row reach `want`, then prints when the first of them started.
fn spawn_reach(
    mut cmd: Command,
    target: SocketAddr,
    want: &str,
    consecutive: usize,
) -> Result<std::process::Child, String> {
    cmd.args([
        "bench",
        "client",
        "--mode",
        "reach",
        "--target",
        &target.to_string(),
        "--want",
        want,
        "--consecutive",
        &consecutive.to_string(),
        "--millis",
        "60000",
    ]);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("running the reach client: {e}"))
}

/// Waits for a reach client; the monotonic ns of its first matching connection.
fn reached(child: std::process::Child, want: &str) -> Result<u64, String> {
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("no connection reached {want} within 60 s"));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("the reach client's output: {e}"))
}

/// Switches the measured Service to `first` alone, then times the switch to `second` alone
/// (`apply(i)` makes backend i the only endpoint): ms from handing over the change to the
/// first connection on `second`.
fn time_endpoint_change(
    client: &dyn Fn() -> Command,
    target: SocketAddr,
    names: [&str; 2],
    apply: &mut dyn FnMut(usize) -> Result<(), String>,
) -> Result<f64, String> {
    let settle = spawn_reach(client(), target, names[0], 10)?;
    apply(0)?;
    reached(settle, names[0])?;
    let watch = spawn_reach(client(), target, names[1], 1)?;
    // Let the client start polling before the change.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = load::monotonic_ns();
    apply(1)?;
    let first = reached(watch, names[1])?;
    Ok(first.saturating_sub(t0) as f64 / 1e6)
}

/// Runs `sluice bench client` (the load) through `cmd`, which places it in the client's
/// namespace; returns its sample.
fn run_client(
    mut cmd: Command,
    mode: &str,
    target: SocketAddr,
    d: Duration,
) -> Result<Sample, String> {
    cmd.args([
        "bench",
        "client",
        "--mode",
        mode,
        "--target",
        &target.to_string(),
        "--millis",
        &d.as_millis().to_string(),
        "--cpu",
        &load::load_cpus().0.to_string(),
    ]);
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running the load client: {e}"))?;
    if !out.status.success() {
        return Err(format!("the load client failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the load client's output: {e}"))
}

/// The per-round ratios `ours[i] / floors[i]`, sorted (rounds where either is not positive
/// are left out).
fn paired_ratios(ours: &[f64], floors: &[f64]) -> Vec<f64> {
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(floors)
        .filter(|(o, f)| **o > 0.0 && **f > 0.0 && o.is_finite() && f.is_finite())
        .map(|(o, f)| o / f)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// The `q` quantile (0..=1) of sorted values, interpolated between the two nearest.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let at = q.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64))
}

/// The median of the per-round ratios `ours[i] / floors[i]`: each ratio compares two runs
/// made back to back, so a machine getting slower or faster between rounds cancels out, and
/// one disturbed round moves the median little. None without a usable round.
pub fn paired_median_ratio(ours: &[f64], floors: &[f64]) -> Option<f64> {
    quantile(&paired_ratios(ours, floors), 0.5)
}

/// The first and third quartiles of the per-round ratios: the middle half of the rounds,
/// which says how far apart two back-to-back runs of the same moment land on this machine —
/// whether a median's distance from 1.00× can be told from noise.
pub fn paired_quartiles(ours: &[f64], floors: &[f64]) -> Option<(f64, f64)> {
    let ratios = paired_ratios(ours, floors);
    Some((quantile(&ratios, 0.25)?, quantile(&ratios, 0.75)?))
}

/// Where the floor is measured: the no-rules topology's client and backend, up while an arm
/// runs so each run can alternate with it.
pub struct Floor<'a> {
    pub client: &'a dyn Fn() -> Command,
    pub target: SocketAddr,
    /// Rounds a run is split into, each followed or preceded by the floor's.
    pub rounds: u32,
}

/// `mode` runs (crr or stream) of the target for `d`, and of the floor for as long,
/// interleaved: the target's samples, the floor's, and the busy CPU seconds during the
/// target's rounds.
fn rounds(
    mode: &str,
    client: &dyn Fn() -> Command,
    target: SocketAddr,
    floor: Option<&Floor>,
    d: Duration,
) -> Result<(Vec<Sample>, Vec<Sample>, f64), String> {
    let Some(floor) = floor else {
        let cpu0 = load::busy_cpu_seconds();
        let sample = run_client(client(), mode, target, d)?;
        return Ok((vec![sample], Vec::new(), load::busy_cpu_seconds() - cpu0));
    };
    // The target and the floor alternate (order flipped each round), so both see the same
    // machine, moment by moment.
    let n = floor.rounds.max(1);
    let slice = d / n;
    let (mut ours, mut floors, mut cpu) = (Vec::new(), Vec::new(), 0.0);
    for round in 0..n {
        let mut run_target = || -> Result<(), String> {
            let cpu0 = load::busy_cpu_seconds();
            ours.push(run_client(client(), mode, target, slice)?);
            cpu += load::busy_cpu_seconds() - cpu0;
            Ok(())
        };
        if round % 2 == 0 {
            run_target()?;
            floors.push(run_client((floor.client)(), mode, floor.target, slice)?);
        } else {
            floors.push(run_client((floor.client)(), mode, floor.target, slice)?);
            run_target()?;
        }
    }
    Ok((ours, floors, cpu))
}

/// The noise control (an A/A test): `mode` rounds of the floor paired with itself, the same
/// way a run is paired with it (nothing without a floor).
fn control_rounds(
    mode: &str,
    floor: Option<&Floor>,
    d: Duration,
) -> Result<(Vec<Sample>, Vec<Sample>), String> {
    let Some(f) = floor else {
        return Ok(Default::default());
    };
    let (a, b, _) = rounds(mode, f.client, f.target, Some(f), d)?;
    Ok((a, b))
}

/// Each stream round's rate, Gbit/s.
fn gbps_of(runs: &[Sample]) -> Vec<f64> {
    runs.iter().map(|r| r.rate() * 8.0 / 1e9).collect()
}

/// Mean throughput of stream rounds, Gbit/s, and whether any broke.
fn stream_gbps(runs: &[Sample]) -> (f64, bool) {
    let mean = runs.iter().map(Sample::rate).sum::<f64>() / runs.len().max(1) as f64;
    (mean * 8.0 / 1e9, runs.iter().any(|r| r.errors > 0))
}

/// Measures `target`. Given the floor (the kernel's path on the same interfaces without any
/// program or rule), the CRR and stream runs alternate with it, so the comparisons the targets
/// are about are made under equal conditions.
fn measure(
    arm: Arm,
    services: usize,
    load_seconds: f64,
    client: &dyn Fn() -> Command,
    target: SocketAddr,
    floor: Option<&Floor>,
    d: Duration,
) -> Result<Measurement, String> {
    // Warm up (ARP, conntrack, caches), then measure.
    run_client(client(), "crr", target, Duration::from_millis(200))?;
    if let Some(f) = floor {
        run_client((f.client)(), "crr", f.target, Duration::from_millis(200))?;
    }
    let (crr_rounds, floor_crr, cpu) = rounds("crr", client, target, floor, d)?;
    let p50s = |runs: &[Sample]| runs.iter().map(|r| r.p50_us).collect::<Vec<_>>();
    let (crr_p50_us, floor_crr_p50_us) = (p50s(&crr_rounds), p50s(&floor_crr));
    let crr_vs_floor = floor.and_then(|_| paired_median_ratio(&crr_p50_us, &floor_crr_p50_us));
    let crr = Sample::merge(&crr_rounds);
    if crr.count == 0 {
        return Err(format!(
            "{}: no connection to {target} succeeded ({} errors)",
            arm.name(),
            crr.errors
        ));
    }
    let (control, control_floor) = control_rounds("crr", floor, d)?;
    let (control, control_floor) = (p50s(&control), p50s(&control_floor));
    let rr = run_client(client(), "rr", target, d)?;
    let (stream_rounds, floor_stream, _) = rounds("stream", client, target, floor, d)?;
    let (control_stream, control_floor_stream) = control_rounds("stream", floor, d)?;
    let (control_stream, control_floor_stream) =
        (gbps_of(&control_stream), gbps_of(&control_floor_stream));
    let (stream_round_gbps, floor_stream_round_gbps) =
        (gbps_of(&stream_rounds), gbps_of(&floor_stream));
    let stream_vs_floor =
        floor.and_then(|_| paired_median_ratio(&stream_round_gbps, &floor_stream_round_gbps));
    let (stream, stream_failed) = stream_gbps(&stream_rounds);
    // Without a floor the run is one round with nothing beside it: nothing to keep.
    let rounds = if floor.is_some() {
        Rounds {
            crr_p50_us,
            floor_crr_p50_us,
            stream_gbps: stream_round_gbps,
            floor_stream_gbps: floor_stream_round_gbps,
            control_crr_p50_us: control,
            control_floor_crr_p50_us: control_floor,
            control_stream_gbps: control_stream,
            control_floor_stream_gbps: control_floor_stream,
        }
    } else {
        Rounds::default()
    };
    Ok(Measurement {
        arm,
        services,
        load_seconds,
        crr_rate: crr.rate(),
        crr_p50_us: crr.p50_us,
        crr_p99_us: crr.p99_us,
        crr_errors: crr.errors,
        floor_crr_p50_us: floor.map(|_| Sample::merge(&floor_crr).p50_us),
        floor_stream_gbps: floor.map(|_| stream_gbps(&floor_stream).0),
        crr_vs_floor,
        stream_vs_floor,
        rounds,
        rr_p50_us: rr.p50_us,
        rr_p99_us: rr.p99_us,
        rr_count: rr.count,
        rr_errors: rr.errors,
        cpu_us_per_conn: cpu * 1e6 / crr.count as f64,
        stream_gbps: stream,
        stream_failed,
        update_ms: None,
        agent_update_ms: None,
        agent_update_max_ms: None,
    })
}

/// Feeds `input` to `program args` inside namespace `netns` (`ip netns exec`).
fn load_rules(netns: &str, program: &str, args: &[&str], input: &str) -> Result<f64, String> {
    use std::io::Write;
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e} (install iptables/nftables: make deps)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| format!("{program}: writing rules: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One kube-proxy (or no-rules) measurement on a fresh topology.
pub fn kube_proxy_arm(arm: Arm, n: usize, s: &Settings) -> Result<Measurement, String> {
    let topo = Topology::build(&s.prefix, 3)?;
    let router = topo.router_name();
    let services = kube_proxy_services(n, &topo.backends);
    let (load_seconds, target) = match arm {
        Arm::NoRules => (0.0, SocketAddr::from((topo.backends[0], BACKEND_PORT))),
        Arm::IptablesLegacy | Arm::IptablesNft => {
            let tool = if arm == Arm::IptablesLegacy {
                "iptables-legacy-restore"
            } else {
                "iptables-nft-restore"
            };
            let rules = kube_proxy::iptables_restore(&services, POD_CIDR);
            (
                load_rules(&router, tool, &["--noflush"], &rules)?,
                SocketAddr::from((VIP, 80)),
            )
        }
        Arm::Nftables => {
            let rules = kube_proxy::nftables(&services, POD_CIDR);
            (
                load_rules(&router, "nft", &["-f", "-"], &rules)?,
                SocketAddr::from((VIP, 80)),
            )
        }
        Arm::Sluice | Arm::SluiceNoSocketLb | Arm::SluicePodToPod => {
            unreachable!("lab arms run in sluice_arm")
        }
    };
    let client_ns = format!("{}c", s.prefix);
    let client = || {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &client_ns]).arg(&s.sluice_bin);
        c
    };
    let mut m = measure(arm, n, load_seconds, &client, target, None, s.duration)?;
    if arm != Arm::NoRules {
        let at = n / 2;
        let mut current = services.clone();
        let only = |i: usize| vec![(topo.backends[i], BACKEND_PORT)];
        let mut apply = |i: usize| -> Result<(), String> {
            let mut next = current.clone();
            next[at].endpoints = only(i);
            match arm {
                Arm::Nftables => {
                    let text = kube_proxy::nftables_update(&current[at], &next[at], POD_CIDR);
                    load_rules(&router, "nft", &["-f", "-"], &text)?;
                }
                _ => {
                    let tool = if arm == Arm::IptablesLegacy {
                        "iptables-legacy-restore"
                    } else {
                        "iptables-nft-restore"
                    };
                    let text = kube_proxy::iptables_update(&next, at, &current[at], POD_CIDR);
                    load_rules(&router, tool, &["--noflush"], &text)?;
                }
            }
            current = next;
            Ok(())
        };
        let names = [topo.backends[0].to_string(), topo.backends[1].to_string()];
        m.update_ms = Some(time_endpoint_change(
            &client,
            target,
            [&names[0], &names[1]],
            &mut apply,
        )?);
    }
    Ok(m)
}

/// The one-node lab the sluice arms run in: a client, three backends behind VIP:80 and a
/// fourth pod outside every Service (the floor: reached directly, it never shares a backend's
/// tuples with service connections), with service maps sized for `max_services` background
/// Services (a frontend and two backend slots each).
fn cluster_file(name: &str, socket_lb: bool, max_services: usize) -> String {
    let lb_slots = (3 * max_services + 1024).next_power_of_two().max(65_536);
    let mut text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec:\n  routing: native\n  underlay: 192.168.77.0/24\n  socketLb: {socket_lb}\n  maps: {{lbSlots: {lb_slots}, backends: 16384, conntrack: 65536, policy: 16384}}\n  nodes: [{{name: node-a, podCIDR: 10.250.0.0/24}}]\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: bench}}\nspec: {{containers: [{{name: c, image: none}}]}}\n"
    );
    for i in 0..3 {
        // The background Services select b1 and b2: two endpoints each. No container ports:
        // the bench runs its own load server in each backend, as on the plain topology.
        let bg = if i == 0 { "no" } else { "yes" };
        text += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b{i}, namespace: bench, labels: {{app: bench, bg: \"{bg}\", who: b{i}}}}}\nspec: {{containers: [{{name: c, image: none}}]}}\n"
        );
    }
    text += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: floor, namespace: bench, labels: {who: floor}}\nspec: {containers: [{name: c, image: none}]}\n";
    text
}

/// The measured Service, selecting `selector` (e.g. "app: bench", "who: b1").
fn main_service(selector: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: main, namespace: bench}}\nspec: {{clusterIP: {VIP}, selector: {{{selector}}}, ports: [{{name: http, port: 80, targetPort: {BACKEND_PORT}}}]}}\n"
    )
}

/// The agent's reconcile histogram for services: (sum of seconds, count).
fn services_reconciles(lab: &sluice_lab::Lab) -> (f64, f64) {
    let text = lab
        .run_in_node("node-a", || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", 9962)).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            Some(body)
        })
        .ok()
        .flatten()
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("kind=\"services\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("sluice_reconcile_duration_seconds_sum"),
        value("sluice_reconcile_duration_seconds_count"),
    )
}

/// The background Services as manifests for the lab (each selects two of the backends).
fn background_manifest(n: usize) -> String {
    let mut text = String::with_capacity(n * 200);
    for sp in background_services(n) {
        text += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {}, namespace: bench}}\nspec: {{clusterIP: {}, selector: {{bg: \"yes\"}}, ports: [{{name: http, port: 80, targetPort: {BACKEND_PORT}}}]}}\n",
            sp.name, sp.cluster_ip
        );
    }
    text
}

/// The sluice arm over every N (ascending): one lab, Services added between measurements.
pub fn sluice_arm(
    arm: Arm,
    ns: &[usize],
    s: &Settings,
    progress: &dyn Fn(&str),
) -> Result<Vec<Measurement>, String> {
    let name = format!(
        "{}{}",
        s.prefix,
        if arm == Arm::SluiceNoSocketLb {
            "p"
        } else {
            "s"
        }
    );
    let opts = sluice_lab::LabOptions {
        name: Some(name.clone()),
        bin_dir: Some(s.bin_dir.clone()),
        quiet: true,
        ..Default::default()
    };
    // The no-rules floor, up beside the lab so every run can alternate with it.
    let plain = Topology::build(&format!("{}f", s.prefix), 1)?;
    let plain_client_ns = format!("{}fc", s.prefix);
    let plain_client = || {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &plain_client_ns])
            .arg(&s.sluice_bin);
        c
    };
    let no_rules = Floor {
        client: &plain_client,
        target: SocketAddr::from((plain.backends[0], BACKEND_PORT)),
        rounds: s.rounds,
    };
    let lab = sluice_lab::Lab::up(
        cluster_file(
            &name,
            arm != Arm::SluiceNoSocketLb,
            ns.iter().copied().max().unwrap_or(0),
        )
        .as_str(),
        opts,
    )
    .map_err(|e| format!("lab for {}: {e}", arm.name()))?
    .into_guard();
    let pod_ns = lab.pod_netns("bench/client").map_err(|e| e.to_string())?;
    load::tune_client(&pod_ns)?;
    // The same load server as the other arms' backends (declared after the lab: stopped
    // before it goes down).
    let mut servers = load::Servers::default();
    let mut backends = Vec::new();
    for pod in ["bench/b0", "bench/b1", "bench/b2", "bench/floor"] {
        let ip = lab.pod_ip(pod).map_err(|e| e.to_string())?;
        let ns = lab.pod_netns(pod).map_err(|e| e.to_string())?;
        let fd = ns.open_fd().map_err(|e| format!("{pod}: {e}"))?;
        servers.spawn(fd, SocketAddr::from((ip, BACKEND_PORT)))?;
        backends.push(ip.to_string());
    }
    // sluice-pod-to-pod's target: a pod no Service selects (a client reaching a backend both
    // directly and through the VIP could reuse a port against the backend's own TIME_WAIT).
    let floor_pod = SocketAddr::from((
        lab.pod_ip("bench/floor").map_err(|e| e.to_string())?,
        BACKEND_PORT,
    ));
    let agent = sluice_api::Client::new(lab.agent_socket("node-a").map_err(|e| e.to_string())?);
    lab.apply_manifest("main", &main_service("app: bench"))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for &n in ns {
        // A load from nothing, as the kube-proxy arms do on their fresh topologies: the agent
        // would otherwise re-parse and reconcile only the Services added since the last N.
        if lab
            .delete_manifest("background")
            .map_err(|e| e.to_string())?
        {
            progress(&format!("{}: removing the previous services", arm.name()));
            wait_for_services(&agent, |count| count <= 1, Duration::from_secs(600))?;
        }
        progress(&format!("{}: loading {n} services", arm.name()));
        let started = Instant::now();
        lab.apply_manifest("background", &background_manifest(n))
            .map_err(|e| e.to_string())?;
        wait_for_services(&agent, |count| count > n, Duration::from_secs(600))?;
        let load_seconds = started.elapsed().as_secs_f64();
        progress(&format!("{}: {n} services: measuring", arm.name()));
        let client = || {
            lab.command_in_pod("bench/client", &s.sluice_bin)
                .expect("the client pod exists")
        };
        // Every sluice arm alternates with the floor; pod-to-pod is the datapath's own cost.
        let target = if arm == Arm::SluicePodToPod {
            floor_pod
        } else {
            SocketAddr::from((VIP, 80))
        };
        let mut m = measure(
            arm,
            n,
            load_seconds,
            &client,
            target,
            Some(&no_rules),
            s.duration,
        )?;
        if arm != Arm::SluicePodToPod {
            let mut apply = |i: usize| {
                lab.apply_manifest("main", &main_service(&format!("who: b{i}")))
                    .map_err(|e| e.to_string())
            };
            m.update_ms = Some(time_endpoint_change(
                &client,
                target,
                [&backends[0], &backends[1]],
                &mut apply,
            )?);
            let mut agent_ms = agent_change_times(&lab, &mut apply)?;
            agent_ms.sort_by(f64::total_cmp);
            m.agent_update_ms = agent_ms.get(agent_ms.len() / 2).copied();
            m.agent_update_max_ms = agent_ms.last().copied();
            // Back to every backend for the next N.
            lab.apply_manifest("main", &main_service("app: bench"))
                .map_err(|e| e.to_string())?;
        }
        out.push(m);
    }
    drop(servers);
    lab.down().map_err(|e| format!("lab down: {e}"))?;
    drop(plain);
    Ok(out)
}

/// How many single endpoint changes the agent's reconcile time is taken over.
pub const AGENT_CHANGES: usize = 5;

/// The agent's services reconcile of each of `AGENT_CHANGES` endpoint changes (the measured
/// Service flipped between two backends; it selects the second when called), ms, each from
/// the agent's reconcile histogram between that change and the next.
fn agent_change_times(
    lab: &sluice_lab::Lab,
    apply: &mut dyn FnMut(usize) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let mut times = Vec::with_capacity(AGENT_CHANGES);
    for change in 0..AGENT_CHANGES {
        let (sum0, count0) = services_reconciles(lab);
        apply(change % 2)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (sum1, count1) = services_reconciles(lab);
            if count1 > count0 {
                times.push((sum1 - sum0) / (count1 - count0) * 1e3);
                break;
            }
            if Instant::now() > deadline {
                return Err("the agent did not reconcile an endpoint change in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(times)
}

/// Polls the agent until the number of service frontends it programmed satisfies `done`.
fn wait_for_services(
    agent: &sluice_api::Client,
    done: impl Fn(usize) -> bool,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if let Ok(sluice_api::Response::Status(st)) = agent.call(&sluice_api::Request::Status) {
            if done(st.services) {
                return Ok(());
            }
            last = Some(st.services);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the agent's service count did not settle in {limit:?} (last seen: {last:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `path` exists and is executable (a clear error before a long run).
pub fn check_tools(arms: &[Arm]) -> Result<(), String> {
    let mut need = Vec::new();
    for a in arms {
        match a {
            Arm::IptablesLegacy => need.push("iptables-legacy-restore"),
            Arm::IptablesNft => need.push("iptables-nft-restore"),
            Arm::Nftables => need.push("nft"),
            _ => {}
        }
    }
    for tool in need {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Err(format!("{tool} is missing: install it with `make deps`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{paired_median_ratio, paired_quartiles};

    #[test]
    fn the_paired_ratio_is_the_median_of_round_by_round_ratios() {
        // The machine slows down halfway: pooled, the arm would look 40% slower than the
        // floor; paired, every round says 10%.
        let ours = [110.0, 110.0, 220.0, 220.0];
        let floors = [100.0, 100.0, 200.0, 200.0];
        let r = paired_median_ratio(&ours, &floors).unwrap();
        assert!((r - 1.1).abs() < 1e-9, "{r}");
        // One disturbed round moves the median, not the whole figure.
        let r = paired_median_ratio(&[105.0, 104.0, 400.0], &[100.0, 100.0, 100.0]).unwrap();
        assert!((r - 1.05).abs() < 1e-9, "{r}");
        // An even count takes the middle two.
        let r = paired_median_ratio(&[1.0, 2.0], &[1.0, 1.0]).unwrap();
        assert!((r - 1.5).abs() < 1e-9, "{r}");
    }

    #[test]
    fn rounds_without_a_usable_figure_are_left_out() {
        assert_eq!(paired_median_ratio(&[], &[]), None);
        assert_eq!(paired_median_ratio(&[0.0, 5.0], &[1.0, 0.0]), None);
        let r = paired_median_ratio(&[0.0, 3.0, f64::NAN], &[1.0, 2.0, 1.0]).unwrap();
        assert!((r - 1.5).abs() < 1e-9, "{r}");
    }

    #[test]
    fn quartiles_bound_the_middle_half_of_the_rounds() {
        // Ratios 1.0, 1.1, 1.2, 1.3, 1.4 (given out of order): quartiles at 1.1 and 1.3.
        let ours = [130.0, 100.0, 140.0, 110.0, 120.0];
        let (q1, q3) = paired_quartiles(&ours, &[100.0; 5]).unwrap();
        assert!(
            (q1 - 1.1).abs() < 1e-9 && (q3 - 1.3).abs() < 1e-9,
            "{q1} {q3}"
        );
        // Between two rounds the quartile is interpolated; one round is its own middle half.
        let (q1, q3) = paired_quartiles(&[1.0, 2.0], &[1.0, 1.0]).unwrap();
        assert!(
            (q1 - 1.25).abs() < 1e-9 && (q3 - 1.75).abs() < 1e-9,
            "{q1} {q3}"
        );
        assert_eq!(paired_quartiles(&[3.0], &[2.0]), Some((1.5, 1.5)));
        assert_eq!(paired_quartiles(&[], &[]), None);
    }

    #[test]
    fn the_noise_control_is_the_floor_paired_with_itself() {
        let mut r = super::Rounds::default();
        assert_eq!(r.control_crr(), None);
        // Ratios 0.9, 1.0, 1.1, 1.2, 1.3: median 1.1, quartiles 1.0 and 1.2.
        r.control_crr_p50_us = vec![120.0, 90.0, 110.0, 130.0, 100.0];
        r.control_floor_crr_p50_us = vec![100.0; 5];
        let (median, q1, q3) = r.control_crr().unwrap();
        assert!(
            (median - 1.1).abs() < 1e-9 && (q1 - 1.0).abs() < 1e-9 && (q3 - 1.2).abs() < 1e-9,
            "{median} {q1} {q3}"
        );
        // Kept apart from the run's own rounds, and left out of results.json when not run.
        assert!(r.crr_quartiles().is_none());
        let json = serde_json::to_string(&super::Rounds::default()).unwrap();
        assert!(!json.contains("control"), "{json}");
    }
}
