//! `sluice lab ...`: up, down, status, list, exec, restart-agent and the hidden `serve`.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use sluice_lab::{Lab, LabOptions, NodeState, PodState};

use crate::output::{print_json, Format, Table};

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Create a lab from a cluster file.
    Up {
        /// The cluster file (a Cluster document followed by Namespace and Pod manifests).
        file: PathBuf,
        /// Lab name (default: the Cluster's metadata.name).
        #[arg(long)]
        name: Option<String>,
        /// No progress lines.
        #[arg(short, long)]
        quiet: bool,
        /// Seconds each agent may take to become ready.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove a lab and everything it made.
    Down {
        /// The lab (may be omitted when only one exists).
        name: Option<String>,
        /// Remove every lab.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Nodes (agent health) and pods of a lab.
    Status {
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// List labs.
    List,
    /// Run a command in a pod's (or a node's) network namespace.
    Exec(ExecArgs),
    /// Stop a node's agent (SIGTERM, or SIGKILL with --kill) and start it again.
    RestartAgent {
        node: String,
        #[arg(long)]
        lab: Option<String>,
        /// SIGKILL instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Add or replace manifests (e.g. NetworkPolicies) in a lab's desired state, like
    /// `kubectl apply`; the agents pick them up within a second.
    Apply {
        /// Names the change, so `lab delete NAME` can take it back ([a-z0-9-]).
        name: String,
        /// YAML file with one or more Kubernetes documents ("-": standard input).
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[arg(long)]
        lab: Option<String>,
    },
    /// Remove what `lab apply NAME` added.
    Delete {
        name: String,
        #[arg(long)]
        lab: Option<String>,
    },
    /// Run a pod's servers (started by `lab up` inside the pod).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        pod: String,
        #[arg(long, default_value = "")]
        tcp: String,
        #[arg(long, default_value = "")]
        udp: String,
    },
    /// Serve a desired-state directory as a Kubernetes API (list/watch) for agents with the
    /// Kubernetes source (started by `lab up` for `spec.source: kubernetes`).
    #[command(hide = true)]
    ApiServer {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long)]
    lab: Option<String>,
    /// Run in this node's namespace instead of a pod's.
    #[arg(long, conflicts_with_all = ["pod", "outside"])]
    node: Option<String>,
    /// Run on the outside host: a machine on the node network that is not part of the
    /// cluster (the underlay namespace, holding the underlay's last address).
    #[arg(long, conflicts_with = "pod")]
    outside: bool,
    /// NAMESPACE/POD (or POD in `default`).
    #[arg(required_unless_present_any = ["node", "outside"])]
    pod: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<i32> {
    match cmd {
        LabCommand::Up {
            file,
            name,
            quiet,
            ready_timeout,
            output,
        } => {
            let opts = LabOptions {
                name,
                quiet,
                ready_timeout: std::time::Duration::from_secs(ready_timeout),
                ..Default::default()
            };
            let lab = Lab::up(file.as_path(), opts)?;
            show(&lab, output, false)?;
            Ok(0)
        }
        LabCommand::Down { name, all } => down(name, all),
        LabCommand::Status { name, output } => {
            let lab = Lab::open(name.as_deref())?;
            show(&lab, output, true)
        }
        LabCommand::List => {
            for name in Lab::list()? {
                match Lab::open(Some(&name)) {
                    Ok(lab) => println!(
                        "{name}\t{} nodes\t{} pods\t{}",
                        lab.nodes().len(),
                        lab.pods().len(),
                        lab.state().routing
                    ),
                    Err(e) => println!("{name}\t(broken: {e})"),
                }
            }
            Ok(0)
        }
        LabCommand::Exec(args) => exec(args),
        LabCommand::RestartAgent { node, lab, kill } => {
            let mut lab = Lab::open(lab.as_deref())?;
            let s = lab.restart_agent(&node, kill)?;
            println!(
                "agent of node {node} restarted: ready, {} endpoints",
                s.endpoints
            );
            Ok(0)
        }
        LabCommand::Apply { name, file, lab } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?
            };
            // Refuse what the agents could not read, before it reaches them.
            let objects = sluice_model::parse_manifests(&file.display().to_string(), &text)?;
            let lab = Lab::open(lab.as_deref())?;
            lab.apply_manifest(&name, &text)?;
            println!(
                "{name}: {} objects applied to lab {}",
                objects.len(),
                lab.name()
            );
            Ok(0)
        }
        LabCommand::Delete { name, lab } => {
            let lab = Lab::open(lab.as_deref())?;
            if lab.delete_manifest(&name)? {
                println!("{name}: removed from lab {}", lab.name());
                Ok(0)
            } else {
                anyhow::bail!(
                    "{name}: nothing applied under that name in lab {}",
                    lab.name()
                )
            }
        }
        LabCommand::Serve { pod, tcp, udp } => {
            let tcp =
                sluice_lab::serve::parse_ports(&tcp).map_err(|e| anyhow::anyhow!("--tcp: {e}"))?;
            let udp =
                sluice_lab::serve::parse_ports(&udp).map_err(|e| anyhow::anyhow!("--udp: {e}"))?;
            sluice_lab::serve::run(&pod, &tcp, &udp)
                .with_context(|| format!("serving pod {pod}"))?;
            Ok(0)
        }
        LabCommand::ApiServer { dir, listen } => {
            sluice_lab::apiserver::run(&dir, listen)
                .with_context(|| format!("serving {} on {listen}", dir.display()))?;
            Ok(0)
        }
    }
}

fn down(name: Option<String>, all: bool) -> anyhow::Result<i32> {
    let names = if all {
        Lab::list()?
    } else {
        vec![match name {
            Some(n) => n,
            None => sluice_lab::state::resolve(None)?,
        }]
    };
    let mut failed = false;
    for name in names {
        match Lab::down_verbose(&name) {
            Ok(r) if !r.found => println!("lab {name}: nothing to remove"),
            Ok(r) => {
                for w in &r.warnings {
                    eprintln!("lab {name}: warning: {w}");
                }
                println!("lab {name}: removed");
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn exec(args: ExecArgs) -> anyhow::Result<i32> {
    let lab = Lab::open(args.lab.as_deref())?;
    let Some((program, rest)) = args.command.split_first() else {
        bail!("exec: no command given after --")
    };
    let mut cmd = match (&args.node, &args.pod) {
        _ if args.outside => lab.command_outside(program)?,
        (Some(node), _) => lab.command_in_node(node, program)?,
        (None, Some(pod)) => lab.command_in_pod(pod, program)?,
        (None, None) => bail!("exec: name a pod (NAMESPACE/POD), --node NODE or --outside"),
    };
    let status = cmd
        .args(rest)
        .status()
        .with_context(|| format!("run {program}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeView<'a> {
    #[serde(flatten)]
    node: &'a NodeState,
    agent_alive: bool,
    agent: Option<sluice_api::AgentStatus>,
    agent_error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LabView<'a> {
    name: &'a str,
    routing: String,
    underlay: String,
    nodes: Vec<NodeView<'a>>,
    pods: &'a [PodState],
}

/// Prints the lab's nodes and pods; with `ask_agents`, also each agent's Status.
fn show(lab: &Lab, output: Format, ask_agents: bool) -> anyhow::Result<i32> {
    let nodes: Vec<NodeView> = lab
        .nodes()
        .iter()
        .map(|n| {
            let alive = lab.agent_alive(&n.name).unwrap_or(false);
            let (agent, agent_error) = if ask_agents || output == Format::Json {
                match lab.agent_status(&n.name) {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e.to_string())),
                }
            } else {
                (None, None)
            };
            NodeView {
                node: n,
                agent_alive: alive,
                agent,
                agent_error,
            }
        })
        .collect();
    let healthy = nodes
        .iter()
        .all(|n| n.agent_alive && n.agent.as_ref().is_some_and(|s| s.ready));
    if output == Format::Json {
        print_json(&LabView {
            name: lab.name(),
            routing: lab.state().routing.to_string(),
            underlay: lab.state().underlay.to_string(),
            nodes,
            pods: lab.pods(),
        })?;
        return Ok(if healthy { 0 } else { 1 });
    }
    println!(
        "Lab {} ({} routing, underlay {})\n",
        lab.name(),
        lab.state().routing,
        lab.state().underlay
    );
    let mut t = if ask_agents {
        Table::new(&[
            "NODE",
            "IP",
            "POD CIDR",
            "AGENT PID",
            "READY",
            "ENDPOINTS",
            "ROUTING",
        ])
    } else {
        Table::new(&["NODE", "IP", "POD CIDR", "AGENT PID"])
    };
    for n in &nodes {
        let pid = match (n.node.agent_pid, n.agent_alive) {
            (Some(p), true) => p.to_string(),
            (Some(p), false) => format!("{p} (dead)"),
            (None, _) => "-".into(),
        };
        let mut row = vec![
            n.node.name.clone(),
            n.node.ip.to_string(),
            n.node.pod_cidr.to_string(),
            pid,
        ];
        if ask_agents {
            match &n.agent {
                Some(s) => row.extend([
                    s.ready.to_string(),
                    s.endpoints.to_string(),
                    s.routing.clone(),
                ]),
                None => row.extend(["unreachable".into(), "-".into(), "-".into()]),
            }
        }
        t.row(row);
    }
    print!("{}", t.render());
    for n in &nodes {
        if let Some(e) = &n.agent_error {
            println!("  {}: {e}", n.node.name);
        }
    }
    let mut t = Table::new(&["POD", "NODE", "IP", "TCP", "UDP", "LABELS"]);
    for p in lab.pods() {
        let ports = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let labels = p
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        t.row(vec![
            p.key(),
            p.node.clone(),
            p.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            ports(&p.tcp_ports),
            ports(&p.udp_ports),
            labels,
        ]);
    }
    print!("\n{}", t.render());
    Ok(if healthy || !ask_agents { 0 } else { 1 })
}
