//! `sluice bench`: how the service path scales with the number of Services, measured side by
//! side against faithful emulations of kube-proxy's iptables and nftables modes.
//!
//! * [`kube_proxy`]: the rules kube-proxy writes (pure text generation, unit-tested).
//! * [`topology`]: client, backends and a router in network namespaces (the kube-proxy arms).
//! * [`load`]: the server and the TCP_CRR/TCP_RR-style clients.

pub mod arms;
pub mod bpf_cost;
pub mod kube_proxy;
pub mod load;
pub mod report;
pub mod topology;

use std::path::PathBuf;

use arms::{Arm, Settings};
use report::{BpfCost, Report};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Numbers of background Services, ascending.
    pub services: Vec<usize>,
    pub arms: Vec<Arm>,
    /// BPF_PROG_TEST_RUN repetitions per N (0: skip).
    pub bpf_repeat: u32,
    pub settings: Settings,
}

/// Runs every arm at every N; `progress` hears each step, `checkpoint` gets the report so far
/// after each measurement (so an interrupted run keeps what it measured). Fast parts first.
pub fn run(
    opts: &Options,
    progress: &dyn Fn(&str),
    checkpoint: &dyn Fn(&Report),
) -> Result<Report, String> {
    arms::check_tools(&opts.arms)?;
    let mut report = Report::default();
    if opts.bpf_repeat > 0 {
        let costs = bpf_cost::ns_per_packet(
            &opts.services,
            opts.bpf_repeat,
            &opts.settings.prefix,
            progress,
        )?;
        for (services, ns_per_packet) in costs {
            report.bpf.push(BpfCost {
                services,
                ns_per_packet,
            });
        }
        checkpoint(&report);
    }
    let steps = opts.arms.len() * opts.services.len();
    let mut step = 0;
    for &arm in opts.arms.iter().filter(|a| a.in_lab()) {
        let tell = |what: &str| progress(&format!("[{}/{steps}] {what}", step + 1));
        let ms = arms::sluice_arm(arm, &opts.services, &opts.settings, &tell)?;
        step += ms.len();
        report.measurements.extend(ms);
        checkpoint(&report);
    }
    let kube: Vec<Arm> = opts.arms.iter().copied().filter(|a| !a.in_lab()).collect();
    for &n in &opts.services {
        for &arm in &kube {
            step += 1;
            progress(&format!(
                "[{step}/{steps}] {} with {n} services",
                arm.name()
            ));
            report
                .measurements
                .push(arms::kube_proxy_arm(arm, n, &opts.settings)?);
            checkpoint(&report);
        }
    }
    Ok(report)
}

/// Writes results.{md,csv,json} and the plots into `dir`; returns the files written.
pub fn write(report: &Report, dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        ("results.md", report.markdown()),
        ("results.csv", report.csv()),
        (
            "results.json",
            serde_json::to_string_pretty(report).map_err(|e| e.to_string())?,
        ),
        (
            "crr-latency.svg",
            report.svg(
                "New connection through the ClusterIP: p50 latency",
                "µs",
                |m| Some(m.crr_p50_us),
            ),
        ),
        (
            "load-time.svg",
            report.svg("Time to load all Services", "seconds", |m| {
                Some(m.load_seconds)
            }),
        ),
        (
            "endpoint-change.svg",
            report.svg(
                "One endpoint change: until the first connection reaches the new backend",
                "ms",
                |m| m.update_ms,
            ),
        ),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// Writes a run's tables and plots again from the results.json it saved, into `dir` (after
/// the report gained a table or a plot): nothing is measured. Bad input changes nothing.
pub fn redraw(results: &std::path::Path, dir: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let text =
        std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let report: Report = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a results.json of sluice bench: {e}",
            results.display()
        )
    })?;
    write(&report, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_run_is_redrawn_exactly() {
        let dir = std::env::temp_dir().join(format!("sluice-redraw-{}", std::process::id()));
        let (first, again) = (dir.join("first"), dir.join("again"));
        let mut m = report::tests::m(Arm::Sluice, 1000, 83.7);
        m.agent_update_ms = Some(0.046258999999999884);
        let report = Report {
            measurements: vec![m, report::tests::m(Arm::IptablesNft, 1000, 101.3)],
            ..Default::default()
        };
        write(&report, &first).unwrap();
        let files = redraw(&first.join("results.json"), &again).unwrap();
        assert!(
            files.iter().any(|f| f.ends_with("endpoint-change.svg")),
            "{files:?}"
        );
        for name in [
            "results.json",
            "results.md",
            "results.csv",
            "endpoint-change.svg",
        ] {
            let (a, b) = (first.join(name), again.join(name));
            assert_eq!(
                std::fs::read(&a).unwrap(),
                std::fs::read(&b).unwrap(),
                "{name}"
            );
        }
        // Not a results.json: an error naming the file, and nothing written.
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"measurements\": 3}").unwrap();
        let err = redraw(&bad, &dir.join("nothing")).unwrap_err();
        assert!(err.contains("bad.json: not a results.json"), "{err}");
        assert!(!dir.join("nothing").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
