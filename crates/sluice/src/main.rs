//! `sluice`: the command line for sluice agents and labs.

mod agent;
mod bench;
mod lab;
mod observe;
mod output;
mod policy;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kubernetes networking with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show an agent's health and counts.
    Status(agent::StatusArgs),
    /// Endpoints (pods attached to the datapath) of an agent.
    Endpoint {
        #[command(subcommand)]
        command: agent::EndpointCommand,
    },
    /// Service frontends and backends an agent has programmed.
    Service {
        #[command(subcommand)]
        command: agent::ServiceCommand,
    },
    /// NetworkPolicies: which pods they select, and why a flow is allowed or denied.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Flows with their Kubernetes context, from every node (like `hubble observe`).
    Observe(Box<observe::ObserveArgs>),
    /// sluice against kube-proxy's iptables and nftables modes, side by side, with plots.
    Bench(Box<bench::BenchArgs>),
    /// A Kubernetes cluster made of network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status(args) => agent::status(args),
        Command::Endpoint { command } => agent::endpoint(command),
        Command::Service { command } => agent::service(command),
        Command::Policy { command } => policy::run(command),
        Command::Lab { command } => lab::run(command),
        Command::Observe(args) => observe::run(*args),
        Command::Bench(args) => bench::run(*args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes, skipping causes whose text the message already contains.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_dashes() {
        use clap::Parser;
        let cli =
            super::Cli::try_parse_from(["sluice", "lab", "exec", "x/a", "--", "ip", "-br", "addr"])
                .unwrap();
        assert!(matches!(cli.command, super::Command::Lab { .. }));
        assert!(super::Cli::try_parse_from([
            "sluice", "lab", "exec", "--node", "n", "x/a", "--", "true"
        ])
        .is_err());
    }
}
