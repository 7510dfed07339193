//! `sluice observe`: flows from every node's Observer API, filtered and merged (what `hubble
//! observe` through hubble-relay does), printed compact, as JSON or as a table.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use sluice_hubble_api::flow::{self, EventTypeFilter, FlowFilter};
use sluice_hubble_api::observer::observer_client::ObserverClient;
use sluice_hubble_api::observer::{GetFlowsRequest, GetFlowsResponse};
use sluice_hubble_api::prost_types::Timestamp;
use sluice_hubble_api::tonic::transport::{Channel, Endpoint};

mod format;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Compact,
    Json,
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    #[value(name = "FORWARDED", alias = "forwarded")]
    Forwarded,
    #[value(name = "DROPPED", alias = "dropped")]
    Dropped,
    #[value(name = "TRANSLATED", alias = "translated")]
    Translated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventKind {
    Drop,
    Trace,
    PolicyVerdict,
    Sock,
}

#[derive(Args, Debug)]
pub struct ObserveArgs {
    /// The lab whose nodes to read (default: the only lab).
    #[arg(long)]
    lab: Option<String>,
    /// Only these nodes of the lab.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// An Observer to read instead of a lab: a unix socket path or host:port (repeatable).
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Flows from or to pods of this namespace.
    #[arg(short = 'n', long)]
    namespace: Vec<String>,
    /// Flows from or to this pod ([namespace/]name-prefix).
    #[arg(long)]
    pod: Vec<String>,
    #[arg(long)]
    from_pod: Vec<String>,
    #[arg(long)]
    to_pod: Vec<String>,
    /// Flows from or to endpoints matching this label selector (e.g. app=web).
    #[arg(long)]
    label: Vec<String>,
    #[arg(long)]
    from_label: Vec<String>,
    #[arg(long)]
    to_label: Vec<String>,
    /// Flows from or to this address or CIDR.
    #[arg(long)]
    ip: Vec<String>,
    #[arg(long)]
    from_ip: Vec<String>,
    #[arg(long)]
    to_ip: Vec<String>,
    /// Flows from or to this port.
    #[arg(long)]
    port: Vec<u16>,
    #[arg(long)]
    from_port: Vec<u16>,
    #[arg(long)]
    to_port: Vec<u16>,
    /// Flows from or to this service (namespace/name).
    #[arg(long)]
    service: Vec<String>,
    #[arg(long)]
    verdict: Vec<VerdictArg>,
    /// tcp, udp, sctp or icmp.
    #[arg(long)]
    protocol: Vec<String>,
    #[arg(short = 't', long = "type")]
    kind: Vec<EventKind>,
    /// Flows newer than this: a duration ago (30s, 5m, 1h) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// The last N flows (default 20 unless --follow or --since).
    #[arg(long)]
    last: Option<u64>,
    /// Keep printing flows as they happen.
    #[arg(short = 'f', long)]
    follow: bool,
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    output: Output,
}

/// A named Observer endpoint.
struct Target {
    name: String,
    address: String,
}

fn targets(args: &ObserveArgs) -> anyhow::Result<Vec<Target>> {
    if !args.servers.is_empty() {
        return Ok(args
            .servers
            .iter()
            .map(|s| Target {
                name: s.clone(),
                address: s.clone(),
            })
            .collect());
    }
    let lab = sluice_lab::Lab::open(args.lab.as_deref())
        .context("no --server given and no lab to read")?;
    for n in &args.nodes {
        if !lab.nodes().iter().any(|x| &x.name == n) {
            bail!("--node: lab {} has no node {n:?}", lab.name());
        }
    }
    Ok(lab
        .nodes()
        .iter()
        .filter(|n| args.nodes.is_empty() || args.nodes.contains(&n.name))
        .map(|n| Target {
            name: n.name.clone(),
            address: lab
                .paths()
                .agent_state(&n.name)
                .join("hubble.sock")
                .display()
                .to_string(),
        })
        .collect())
}

async fn connect(address: &str) -> anyhow::Result<ObserverClient<Channel>> {
    let channel = if address.starts_with('/') {
        sluice_hubble_api::connect_unix(Path::new(address), Duration::from_secs(2)).await?
    } else {
        Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?
    };
    Ok(ObserverClient::new(channel))
}

/// Hubble's rule: one-sided flags go into every filter; each two-sided flag (namespace, pod,
/// ip, label, port, service) yields a "from" and a "to" alternative.
pub fn build_filters(args: &ObserveArgs) -> anyhow::Result<Vec<FlowFilter>> {
    let pods = |ps: &[String]| -> Vec<String> {
        ps.iter()
            .map(|p| {
                if p.contains('/') {
                    p.clone()
                } else {
                    format!("default/{p}")
                }
            })
            .collect()
    };
    let ports = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>();
    let mut base = FlowFilter {
        source_pod: pods(&args.from_pod),
        destination_pod: pods(&args.to_pod),
        source_ip: args.from_ip.clone(),
        destination_ip: args.to_ip.clone(),
        source_label: args.from_label.clone(),
        destination_label: args.to_label.clone(),
        source_port: ports(&args.from_port),
        destination_port: ports(&args.to_port),
        protocol: args.protocol.clone(),
        ..Default::default()
    };
    for p in &args.protocol {
        if !["tcp", "udp", "sctp", "icmp", "icmpv4"].contains(&p.to_ascii_lowercase().as_str()) {
            bail!("--protocol: {p:?} is not one of: tcp, udp, sctp, icmp");
        }
    }
    base.verdict = args
        .verdict
        .iter()
        .map(|v| match v {
            VerdictArg::Forwarded => flow::Verdict::Forwarded,
            VerdictArg::Dropped => flow::Verdict::Dropped,
            VerdictArg::Translated => flow::Verdict::Translated,
        } as i32)
        .collect();
    base.event_type = args
        .kind
        .iter()
        .map(|k| EventTypeFilter {
            r#type: match k {
                EventKind::Drop => 1,
                EventKind::Trace => 4,
                EventKind::PolicyVerdict => 5,
                EventKind::Sock => 7,
            },
            ..Default::default()
        })
        .collect();
    let mut namespaces: Vec<String> = args.namespace.iter().map(|n| format!("{n}/")).collect();
    namespaces.extend(pods(&args.pod));
    let two_sided = !namespaces.is_empty()
        || !args.ip.is_empty()
        || !args.label.is_empty()
        || !args.port.is_empty()
        || !args.service.is_empty();
    if !two_sided {
        return Ok(vec![base]);
    }
    let mut from = base.clone();
    from.source_pod.extend(namespaces.iter().cloned());
    from.source_ip.extend(args.ip.iter().cloned());
    from.source_label.extend(args.label.iter().cloned());
    from.source_port.extend(ports(&args.port));
    from.source_service.extend(args.service.iter().cloned());
    let mut to = base;
    to.destination_pod.extend(namespaces);
    to.destination_ip.extend(args.ip.iter().cloned());
    to.destination_label.extend(args.label.iter().cloned());
    to.destination_port.extend(ports(&args.port));
    to.destination_service.extend(args.service.iter().cloned());
    Ok(vec![from, to])
}

/// "30s", "5m", "2h" ago, or an RFC 3339 time.
pub fn parse_since(s: &str, now: SystemTime) -> anyhow::Result<Timestamp> {
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        _ => None,
    };
    let t = match s.chars().last().and_then(unit) {
        Some(mult) => {
            let n: u64 = s[..s.len() - 1].parse().map_err(|_| {
                anyhow::anyhow!("--since: {s:?} is not a duration like 30s, 5m or 1h")
            })?;
            now - Duration::from_secs(n * mult)
        }
        None => {
            let d = k8s_openapi::jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%:z", s)
                .or_else(|_| s.parse::<k8s_openapi::jiff::Timestamp>())
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--since: {s:?} is neither a duration (30s, 5m, 1h) nor an RFC 3339 time"
                    )
                })?;
            SystemTime::UNIX_EPOCH + Duration::from_nanos(d.as_nanosecond().max(0) as u64)
        }
    };
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Ok(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn time_key(r: &GetFlowsResponse) -> (i64, i32) {
    r.time
        .as_ref()
        .map(|t| (t.seconds, t.nanos))
        .unwrap_or((0, 0))
}

pub fn run(args: ObserveArgs) -> anyhow::Result<i32> {
    let filters = build_filters(&args)?;
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let number = match (args.last, args.follow || since.is_some()) {
        (Some(n), _) => n,
        (None, true) => 0,
        (None, false) => 20,
    };
    let request = GetFlowsRequest {
        number,
        follow: args.follow,
        whitelist: filters,
        since,
        ..Default::default()
    };
    let targets = targets(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(observe(targets, request, args.output, number))
}

async fn observe(
    targets: Vec<Target>,
    request: GetFlowsRequest,
    output: Output,
    number: u64,
) -> anyhow::Result<i32> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<GetFlowsResponse>(1024);
    let mut tasks = Vec::new();
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for t in targets.iter() {
        let (tx, err_tx, request) = (tx.clone(), err_tx.clone(), request.clone());
        let (name, address) = (t.name.clone(), t.address.clone());
        tasks.push(tokio::spawn(async move {
            let result = async {
                let mut client = connect(&address).await?;
                let mut stream = client.get_flows(request).await?.into_inner();
                while let Some(r) = stream.message().await? {
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = err_tx.send(format!("node {name} ({address}): {}", crate::chain(&e)));
            }
        }));
    }
    drop(tx);
    drop(err_tx);
    let mut printer = format::Printer::new(output);
    let mut failed = Vec::new();
    if request.follow {
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => printer.print(&r)?,
                    None => break,
                },
                Some(e) = err_rx.recv() => {
                    eprintln!("warning: {e}");
                    failed.push(e);
                }
            }
        }
    } else {
        let mut all = Vec::new();
        while let Some(r) = rx.recv().await {
            all.push(r);
        }
        while let Ok(e) = err_rx.try_recv() {
            eprintln!("warning: {e}");
            failed.push(e);
        }
        all.sort_by_key(time_key);
        if number > 0 && all.len() as u64 > number {
            all.drain(..all.len() - number as usize);
        }
        for r in &all {
            printer.print(r)?;
        }
    }
    printer.finish()?;
    while let Ok(e) = err_rx.try_recv() {
        eprintln!("warning: {e}");
        failed.push(e);
    }
    if !failed.is_empty() && failed.len() == targets.len() {
        bail!("no node answered");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ObserveArgs,
    }

    fn filters(argv: &[&str]) -> Vec<FlowFilter> {
        let mut full = vec!["observe"];
        full.extend_from_slice(argv);
        build_filters(&T::try_parse_from(full).unwrap().args).unwrap()
    }

    #[test]
    fn one_sided_flags_make_one_filter() {
        let f = filters(&[
            "--from-pod",
            "x/a",
            "--to-port",
            "80",
            "--verdict",
            "DROPPED",
        ]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].source_pod, vec!["x/a"]);
        assert_eq!(f[0].destination_port, vec!["80"]);
        assert_eq!(f[0].verdict, vec![flow::Verdict::Dropped as i32]);
    }

    #[test]
    fn two_sided_flags_make_a_from_and_a_to_alternative() {
        let f = filters(&["--namespace", "x", "--protocol", "tcp", "-t", "drop"]);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].source_pod, vec!["x/"]);
        assert!(f[0].destination_pod.is_empty());
        assert_eq!(f[1].destination_pod, vec!["x/"]);
        for side in &f {
            assert_eq!(side.protocol, vec!["tcp"]);
            assert_eq!(side.event_type[0].r#type, 1);
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let args = T::try_parse_from(["observe", "--protocol", "http"])
            .unwrap()
            .args;
        assert!(build_filters(&args)
            .unwrap_err()
            .to_string()
            .contains("--protocol"));
        assert!(T::try_parse_from(["observe", "--verdict", "MAYBE"]).is_err());
        assert!(T::try_parse_from(["observe", "--port", "99999"]).is_err());
        let err = parse_since("5 minutes", SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("--since"));
        let t = parse_since("30s", SystemTime::UNIX_EPOCH + Duration::from_secs(100)).unwrap();
        assert_eq!(t.seconds, 70);
    }
}
