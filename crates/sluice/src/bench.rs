//! `sluice bench`: sluice against kube-proxy's iptables and nftables modes (see sluice-bench).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sluice_bench::arms::{Arm, Settings};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Numbers of other Services (2 endpoints each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,5000,10000,20000")]
    services: Vec<usize>,
    /// Arms to run (default all): no-rules, iptables-legacy, iptables-nft, nftables, sluice,
    /// sluice-no-socket-lb.
    #[arg(long, value_delimiter = ',')]
    arms: Vec<String>,
    /// Seconds of each CRR and RR run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Paired rounds each sluice CRR and stream run is split into, alternating with the
    /// no-rules floor (the ratios to the floor are the median of the rounds').
    #[arg(long, default_value_t = 12)]
    rounds: u32,
    /// BPF_PROG_TEST_RUN repetitions per number of Services (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    bpf_repeat: u32,
    /// Small numbers and short runs: checks the harness in seconds.
    #[arg(long)]
    quick: bool,
    /// Where results.{md,csv,json} and the plots go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// (internal) the load generator, run inside the client's namespace; prints JSON.
    #[command(hide = true)]
    Client {
        /// crr, rr, stream (a JSON sample) or reach (when a connection reached --want).
        #[arg(long)]
        mode: String,
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        millis: u64,
        /// reach: the server name to wait for.
        #[arg(long, default_value = "")]
        want: String,
        /// reach: how many new connections in a row must reach it.
        #[arg(long, default_value_t = 1)]
        consecutive: usize,
        /// The CPU to run on (the harness pins every arm's client the same way).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Writes a run's tables and plots again from its results.json (after the report gained
    /// a table or a plot, say), into --out. Needs no root: nothing is measured.
    Report {
        /// The results.json a `sluice bench` run wrote.
        #[arg(long)]
        from: PathBuf,
        /// Where results.{md,csv,json} and the plots go.
        #[arg(long)]
        out: PathBuf,
    },
    /// (internal) the load server every arm's backends run, on ADDR in this namespace until
    /// killed (for experiments by hand: `sluice lab exec POD -- sluice bench server ...`).
    #[command(hide = true)]
    Server {
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Prints the client's one-line result. A reader that went away (`| head`, a closed pipe) is
/// not an error worth a panic: nobody is left to read it.
fn print_result(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing the result: {e}"))
        }
        _ => Ok(()),
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    if let Some(BenchCommand::Report { from, out }) = &args.command {
        let files = sluice_bench::redraw(from, out).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
        for f in files {
            println!("wrote {}", f.display());
        }
        return Ok(0);
    }
    if let Some(BenchCommand::Server { listen }) = args.command {
        let netns = std::fs::File::open("/proc/self/ns/net").context("/proc/self/ns/net")?;
        let mut servers = sluice_bench::load::Servers::default();
        servers
            .spawn(netns.into(), listen)
            .map_err(|e| anyhow::anyhow!("--listen {listen}: {e}"))?;
        eprintln!("serving on {listen}");
        loop {
            std::thread::park();
        }
    }
    if let Some(BenchCommand::Client {
        mode,
        target,
        millis,
        want,
        consecutive,
        cpu,
    }) = args.command
    {
        use sluice_bench::load;
        if let Some(cpu) = cpu {
            load::pin_to_cpu(cpu).map_err(|e| anyhow::anyhow!("--cpu: {e}"))?;
        }
        let d = Duration::from_millis(millis);
        let sample = match mode.as_str() {
            "crr" => load::crr(target, d),
            "rr" => load::rr(target, d),
            "stream" => match load::stream(target, d) {
                Ok(bytes_per_second) => load::Sample {
                    count: bytes_per_second as u64,
                    seconds: 1.0,
                    ..Default::default()
                },
                Err(e) => {
                    eprintln!("stream to {target}: {e}");
                    load::Sample {
                        errors: 1,
                        seconds: 1.0,
                        ..Default::default()
                    }
                }
            },
            "reach" => {
                let Some(t) = load::first_reaching(target, &want, consecutive, d) else {
                    bail!("no connection to {target} reached {want:?} within {d:?}");
                };
                print_result(&t.to_string())?;
                return Ok(0);
            }
            other => bail!("--mode: {other:?} is not one of: crr, rr, stream, reach"),
        };
        print_result(&serde_json::to_string(&sample)?)?;
        return Ok(0);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("sluice bench needs root (network namespaces, iptables, BPF)");
    }
    let arms = if args.arms.is_empty() {
        Arm::ALL.to_vec()
    } else {
        args.arms
            .iter()
            .map(|a| Arm::parse(a).map_err(|e| anyhow::anyhow!("--arms: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut services = if args.quick {
        vec![0, 100]
    } else {
        args.services.clone()
    };
    services.sort();
    services.dedup();
    if let Some(n) = services.iter().find(|n| **n > 60_000) {
        bail!("--services: {n} is more than the 60000 this harness addresses");
    }
    if !(0.05..=600.0).contains(&args.seconds) {
        bail!("--seconds: {} is outside 0.05..=600", args.seconds);
    }
    if !(1..=1000).contains(&args.rounds) {
        bail!("--rounds: {} is outside 1..=1000", args.rounds);
    }
    let sluice_bin = std::env::current_exe().context("finding the sluice binary")?;
    let bin_dir = std::env::var_os("SLUICE_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| sluice_bin.parent().map(|p| p.to_path_buf()))
        .context("finding sluice-agent")?;
    let opts = sluice_bench::Options {
        services,
        arms,
        bpf_repeat: if args.quick { 10_000 } else { args.bpf_repeat },
        settings: Settings {
            sluice_bin,
            bin_dir,
            duration: Duration::from_secs_f64(if args.quick { 0.3 } else { args.seconds }),
            rounds: args.rounds,
            prefix: format!("sb{}-", std::process::id() % 100_000),
        },
    };
    let started = std::time::Instant::now();
    let report = sluice_bench::run(
        &opts,
        &|step| eprintln!("{:>6.1}s {step}", started.elapsed().as_secs_f64()),
        &|partial| {
            let _ = sluice_bench::write(partial, &args.out);
        },
    );
    let left = sluice_bench::topology::leftovers(&opts.settings.prefix);
    let mut report = report.map_err(|e| anyhow::anyhow!(e))?;
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    report.machine = machine();
    report.command = std::env::args().collect::<Vec<_>>().join(" ");
    let files = sluice_bench::write(&report, &args.out).map_err(|e| anyhow::anyhow!(e))?;
    println!("{}", report.markdown());
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(0)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}
