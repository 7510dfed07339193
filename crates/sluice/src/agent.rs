//! `sluice status` and `sluice endpoint list`: talk to one agent over its socket.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use sluice_api::{AgentStatus, Client, Request, Response};

use crate::output::{print_json, Format, Table};

/// Which agent to talk to.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's API socket.
    #[arg(long, env = "SLUICE_SOCKET", conflicts_with_all = ["lab", "node"])]
    socket: Option<PathBuf>,
    /// Talk to the agent of a lab node (with --node; the lab may be omitted when only one exists).
    #[arg(long)]
    lab: Option<String>,
    /// The lab node whose agent to talk to.
    #[arg(long)]
    node: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

impl AgentArgs {
    pub fn json(&self) -> bool {
        self.output == Format::Json
    }

    /// Like `client`, but without --socket/--node inside a lab it picks the agent of the
    /// node `pick` chooses from the lab (e.g. the node a pod runs on, or the first).
    pub fn client_in_lab(
        &self,
        pick: impl FnOnce(&sluice_lab::Lab) -> Option<String>,
    ) -> anyhow::Result<Client> {
        if self.socket.is_none() && self.node.is_none() {
            if let Ok(lab) = sluice_lab::Lab::open(self.lab.as_deref()) {
                let node = pick(&lab)
                    .or_else(|| lab.nodes().first().map(|n| n.name.clone()))
                    .ok_or_else(|| anyhow::anyhow!("lab {} has no nodes", lab.name()))?;
                return Ok(Client::new(lab.agent_socket(&node)?));
            }
        }
        self.client()
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        if let Some(s) = &self.socket {
            return Ok(Client::new(s));
        }
        if let Some(node) = &self.node {
            let lab = sluice_lab::Lab::open(self.lab.as_deref())?;
            return Ok(Client::new(lab.agent_socket(node)?));
        }
        if self.lab.is_some() {
            bail!("--lab needs --node NODE to pick an agent");
        }
        Ok(Client::new(sluice_api::DEFAULT_SOCKET))
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// List service frontends and their backends as programmed in the datapath.
    List {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// One service's frontends and backends (NAMESPACE/NAME).
    Get {
        service: String,
        #[command(flatten)]
        agent: AgentArgs,
    },
}

pub fn service(cmd: ServiceCommand) -> anyhow::Result<i32> {
    let (agent, only) = match cmd {
        ServiceCommand::List { agent } => (agent, None),
        ServiceCommand::Get { service, agent } => {
            if service.split('/').count() != 2 || service.starts_with('/') || service.ends_with('/')
            {
                bail!("service {service:?}: expected NAMESPACE/NAME");
            }
            (agent, Some(service))
        }
    };
    let client = agent.client()?;
    let services = match client.call(&Request::ListServices)? {
        Response::Services { services } => services,
        other => bail!(
            "agent at {} answered ListServices with {other:?}",
            client.path().display()
        ),
    };
    let services: Vec<_> = match &only {
        Some(key) => services.into_iter().filter(|s| &s.service == key).collect(),
        None => services,
    };
    if let (Some(key), true) = (&only, services.is_empty()) {
        bail!("service {key}: no frontends programmed on this node (unknown, headless, or ExternalName)");
    }
    if agent.output == Format::Json {
        print_json(&services)?;
        return Ok(0);
    }
    // One row per backend, like `cilium service list`.
    let mut t = Table::new(&[
        "FRONTEND", "TYPE", "SERVICE", "PORT", "BACKENDS", "AFFINITY",
    ]);
    for s in &services {
        let backends = if s.backends.is_empty() {
            vec!["(none: connections are refused)".to_string()]
        } else {
            s.backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{}) {b}", i + 1))
                .collect()
        };
        for (i, b) in backends.into_iter().enumerate() {
            let first = i == 0;
            let cell = |v: &str| if first { v.to_string() } else { String::new() };
            t.row(vec![
                cell(&s.frontend),
                cell(&s.kind),
                cell(&s.service),
                cell(&s.port_name),
                b,
                cell(
                    &s.affinity_timeout
                        .map(|t| format!("ClientIP {t}s"))
                        .unwrap_or_default(),
                ),
            ]);
        }
    }
    print!("{}", t.render());
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// List the agent's local endpoints.
    List {
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// One endpoint's identity and computed allow-list per direction (NAMESPACE/NAME or IP).
    Get {
        pod: String,
        #[command(flatten)]
        agent: AgentArgs,
    },
}

pub fn fetch_status(client: &Client) -> anyhow::Result<AgentStatus> {
    match client.call(&Request::Status)? {
        Response::Status(s) => Ok(s),
        other => bail!(
            "agent at {} answered Status with {other:?}",
            client.path().display()
        ),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let client = args.agent.client()?;
    let s = fetch_status(&client)?;
    if args.agent.output == Format::Json {
        print_json(&s)?;
        return Ok(0);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("Node:        {}", s.node);
    println!("Ready:       {}", s.ready);
    println!("Routing:     {}", s.routing);
    println!("Pod CIDR:    {}", opt(s.pod_cidr.map(|c| c.to_string())));
    println!("Node IP:     {}", opt(s.node_ip.map(|c| c.to_string())));
    println!("Endpoints:   {}", s.endpoints);
    println!(
        "IPs:         {} allocated, {} free",
        s.ips_allocated, s.ips_free
    );
    println!(
        "Services:    {} frontends, {} backends",
        s.services, s.backends
    );
    let pressure = if s.conntrack_max > 0 {
        100.0 * s.conntrack_entries as f64 / s.conntrack_max as f64
    } else {
        0.0
    };
    println!(
        "Conntrack:   {} of {} entries ({pressure:.1}%)",
        s.conntrack_entries, s.conntrack_max
    );
    println!(
        "Socket-LB:   {}",
        if s.socket_lb { "attached" } else { "off" }
    );
    match &s.hubble_socket {
        Some(socket) => println!(
            "Observer:    {} ({} flow events lost)",
            socket.display(),
            s.flow_events_lost
        ),
        None => println!("Observer:    off"),
    }
    let synced = match s.last_sync_unix {
        Some(t) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(t);
            format!("last sync {}s ago", now.saturating_sub(t))
        }
        None => "never synced".into(),
    };
    println!(
        "Source:      {} ({}, {synced})",
        s.source,
        if s.source_connected {
            "connected"
        } else {
            "UNREACHABLE"
        }
    );
    println!(
        "Objects:     {} pods, {} policies, {} identities",
        s.pods, s.policies, s.identities
    );
    match &s.kvstore {
        Some(kv) => println!(
            "Kvstore:     etcd {} ({}), {} keys published, {} remote nodes, {} remote endpoints{}",
            kv.endpoints,
            if kv.connected {
                "connected"
            } else {
                "UNREACHABLE"
            },
            kv.published,
            kv.remote_nodes,
            kv.remote_endpoints,
            if kv.ignored > 0 {
                format!(", {} keys ignored", kv.ignored)
            } else {
                String::new()
            }
        ),
        None => println!("Kvstore:     none"),
    }
    println!("Pin path:    {}", s.pin_path.display());
    println!("Uptime:      {}s", s.uptime_seconds);
    if !s.remote_nodes.is_empty() {
        let mut t = Table::new(&["REMOTE NODE", "ADDRESS", "POD CIDR"]);
        for n in &s.remote_nodes {
            t.row(vec![
                n.name.clone(),
                n.address.to_string(),
                n.pod_cidr.to_string(),
            ]);
        }
        print!("\n{}", t.render());
    }
    if !s.counters.is_empty() {
        let mut t = Table::new(&["POINT", "OUTCOME", "REASON", "PACKETS", "BYTES"]);
        for c in &s.counters {
            t.row(vec![
                c.point.clone(),
                c.outcome.clone(),
                if c.reason.is_empty() {
                    "-".into()
                } else {
                    c.reason.clone()
                },
                c.packets.to_string(),
                c.bytes.to_string(),
            ]);
        }
        print!("\nDatapath counters:\n{}", t.render());
    }
    if !s.problems.is_empty() {
        println!("\nProblems:");
        for p in &s.problems {
            println!("  - {p}");
        }
    }
    Ok(if s.ready { 0 } else { 1 })
}

pub fn endpoint(cmd: EndpointCommand) -> anyhow::Result<i32> {
    let agent = match cmd {
        EndpointCommand::List { agent } => agent,
        EndpointCommand::Get { pod, agent } => return crate::policy::endpoint_get(&pod, &agent),
    };
    let client = agent.client()?;
    let endpoints = match client.call(&Request::ListEndpoints)? {
        Response::Endpoints { endpoints } => endpoints,
        other => bail!(
            "agent at {} answered ListEndpoints with {other:?}",
            client.path().display()
        ),
    };
    if agent.output == Format::Json {
        print_json(&endpoints)?;
        return Ok(0);
    }
    let mut t = Table::new(&[
        "POD",
        "ADDRESS",
        "HOST IFNAME",
        "IFINDEX",
        "POD MAC",
        "DATAPATH",
        "CONTAINER",
    ]);
    for e in &endpoints {
        t.row(vec![
            e.pod
                .as_ref()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .unwrap_or_else(|| "-".into()),
            e.address.to_string(),
            e.host_ifname.clone(),
            e.host_ifindex.to_string(),
            e.pod_mac.clone(),
            if e.datapath_attached {
                "attached"
            } else {
                "DETACHED"
            }
            .into(),
            e.key.container_id.chars().take(12).collect(),
        ]);
    }
    print!("{}", t.render());
    Ok(0)
}
