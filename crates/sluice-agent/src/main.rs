use std::path::PathBuf;

use clap::Parser;

/// sluice node agent: programs this node's eBPF datapath from the desired state.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Agent configuration file (YAML).
    #[arg(long, short, env = "SLUICE_AGENT_CONFIG")]
    config: PathBuf,
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
    let cfg = sluice_agent::load_config(&args.config)?;
    sluice_agent::run(cfg).await
}
