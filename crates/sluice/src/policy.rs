//! `sluice policy get|trace` and `sluice endpoint get`: policy as the agent computed it.

use anyhow::bail;
use clap::Subcommand;
use sluice_api::{Request, Response};

use crate::agent::AgentArgs;
use crate::output::{print_json, Table};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// NetworkPolicies of the desired state and the pods each selects.
    Get {
        /// Only this policy (NAMESPACE/NAME).
        policy: Option<String>,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Would policy allow a flow? Names the rule that allows it, or why nothing does.
    Trace {
        /// Source: NAMESPACE/NAME of a pod, or an IPv4 address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/NAME of a pod, or an IPv4 address.
        #[arg(long)]
        to: String,
        /// Destination port and protocol, e.g. 80/tcp (the protocol defaults to tcp).
        #[arg(long)]
        port: String,
        #[command(flatten)]
        agent: AgentArgs,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Get { policy, agent } => get(policy, &agent),
        PolicyCommand::Trace {
            from,
            to,
            port,
            agent,
        } => trace(&from, &to, &port, &agent),
    }
}

fn get(only: Option<String>, agent: &AgentArgs) -> anyhow::Result<i32> {
    let client = agent.client_in_lab(|_| None)?;
    let policies = match client.call(&Request::ListPolicies)? {
        Response::Policies { policies } => policies,
        other => bail!("agent answered ListPolicies with {other:?}"),
    };
    let policies: Vec<_> = match &only {
        Some(name) => policies.into_iter().filter(|p| &p.name == name).collect(),
        None => policies,
    };
    if let (Some(name), true) = (&only, policies.is_empty()) {
        bail!("policy {name}: not in the desired state (or rejected: see `sluice status`)");
    }
    if agent.json() {
        print_json(&policies)?;
        return Ok(0);
    }
    let mut t = Table::new(&["POLICY", "TYPES", "SELECTS"]);
    for p in &policies {
        let selects = if p.selects.is_empty() {
            "(no pods)".to_string()
        } else {
            p.selects.join(", ")
        };
        t.row(vec![p.name.clone(), p.types.join(","), selects]);
    }
    print!("{}", t.render());
    Ok(0)
}

/// "80/tcp", "53/UDP", "8080" -> (port, protocol).
fn parse_port(text: &str) -> anyhow::Result<(u16, String)> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => bail!("--port {text:?}: the port must be a number in 1..=65535"),
    };
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("--port {text:?}: the protocol must be tcp, udp or sctp");
    }
    Ok((port, proto))
}

fn trace(from: &str, to: &str, port: &str, agent: &AgentArgs) -> anyhow::Result<i32> {
    let (port, protocol) = parse_port(port)?;
    let client = agent.client_in_lab(|_| None)?;
    let request = Request::PolicyTrace {
        from: from.into(),
        to: to.into(),
        protocol,
        port,
    };
    let result = match client.call(&request)? {
        Response::Trace(t) => t,
        other => bail!("agent answered PolicyTrace with {other:?}"),
    };
    if agent.json() {
        print_json(&result)?;
    } else {
        println!("{}", result.explanation.trim_end());
    }
    Ok(if result.allowed { 0 } else { 2 })
}

pub fn endpoint_get(pod: &str, agent: &AgentArgs) -> anyhow::Result<i32> {
    let client = agent.client_in_lab(|lab| lab.pod(pod).ok().map(|p| p.node.clone()))?;
    let detail = match client.call(&Request::GetEndpoint { pod: pod.into() })? {
        Response::EndpointDetail(d) => d,
        other => bail!("agent answered GetEndpoint with {other:?}"),
    };
    if agent.json() {
        print_json(&detail)?;
        return Ok(0);
    }
    let pod_name = detail
        .pod
        .as_ref()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .unwrap_or_else(|| "-".into());
    println!("Pod:       {pod_name}");
    println!("Address:   {}", detail.address);
    println!("Identity:  {}", detail.identity);
    let labels: Vec<String> = detail
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("Labels:    {}", labels.join(","));
    for (name, isolated, entries) in [
        ("Ingress", detail.ingress_isolated, &detail.ingress),
        ("Egress", detail.egress_isolated, &detail.egress),
    ] {
        if !isolated {
            println!("\n{name}: not isolated (everything allowed)");
            continue;
        }
        if entries.is_empty() {
            println!("\n{name}: isolated, nothing allowed");
            continue;
        }
        println!("\n{name}: isolated, allowed:");
        let mut t = Table::new(&["PEER", "PORTS", "RULE"]);
        for e in entries.iter() {
            t.row(vec![e.peer.clone(), e.ports.clone(), e.rule.clone()]);
        }
        print!("{}", t.render());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn ports_name_number_and_protocol() {
        assert_eq!(parse_port("80/tcp").unwrap(), (80, "tcp".into()));
        assert_eq!(parse_port("53/UDP").unwrap(), (53, "udp".into()));
        assert_eq!(parse_port("8080").unwrap(), (8080, "tcp".into()));
        for bad in ["0/tcp", "x/tcp", "70000", "80/icmp", ""] {
            let e = parse_port(bad).unwrap_err().to_string();
            assert!(e.contains("--port"), "{bad}: {e}");
        }
    }
}
