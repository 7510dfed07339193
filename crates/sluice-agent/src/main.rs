use std::path::PathBuf;

use clap::Parser;
use sluice_api::config::MonitorAggregation;

// The agent rebuilds its desired state from tens of thousands of objects per change; glibc's
// allocator spent about half of that time in malloc/free (measured with perf at 20k Services).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// sluice node agent: programs this node's eBPF datapath from the desired state.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "SLUICE_AGENT_CONFIG")]
    config: PathBuf,
    /// Which trace events the datapath reports, overriding `hubble.monitorAggregation`:
    /// `medium` (a flow's first packet, TCP SYN/FIN/RST) or `none` (every packet).
    #[arg(long, value_parser = ["none", "medium"])]
    monitor_aggregation: Option<String>,
    /// This node's name, overriding `nodeName` (a DaemonSet passes `spec.nodeName`).
    #[arg(long, env = "SLUICE_NODE_NAME")]
    node_name: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = sluice_agent::load_config_for(&args.config, args.node_name.as_deref())?;
    match args.monitor_aggregation.as_deref() {
        Some("none") => cfg.hubble.monitor_aggregation = MonitorAggregation::None,
        Some("medium") => cfg.hubble.monitor_aggregation = MonitorAggregation::Medium,
        _ => {}
    }
    sluice_agent::run(cfg).await
}
