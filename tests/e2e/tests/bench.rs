//! `sluice bench --quick` end to end: every arm (kube-proxy's iptables-legacy, iptables-nft
//! and nftables emulations, the no-rules floor, sluice with and without socket-LB, sluice
//! pod-to-pod) is set up, loaded, measured and torn down; the results come as table, CSV,
//! JSON and plots; nothing is left behind.

use std::process::Command;

use sluice_e2e::*;

fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

fn ruleset() -> String {
    let ipt = Command::new("iptables-save").output().unwrap();
    let nft = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    // Counters change with traffic; rules must not.
    String::from_utf8_lossy(&ipt.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&nft.stdout).lines())
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn quick_benchmark_runs_every_arm_and_cleans_up() {
    if !require_root("sluice bench --quick") {
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let netns_before = netns_list();
    let rules_before = ruleset();
    let out = Command::new(bin_dir().join("sluice"))
        .args(["bench", "--quick", "--out"])
        .arg(&out_dir)
        .env("SLUICE_BIN_DIR", bin_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice bench --quick failed:\n{stderr}"
    );
    assert!(stderr.contains("[1/"), "progress is shown:\n{stderr}");

    let csv = std::fs::read_to_string(out_dir.join("results.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 7 * 2, "7 arms x 2 service counts:\n{csv}");
    for r in &rows {
        let (arm, rate, rr_count, rr_errors) = (r[0], r[3], r[9], r[10]);
        assert!(
            rate.parse::<f64>().unwrap() > 0.0,
            "{arm}: no connections:\n{csv}"
        );
        assert!(
            rr_count.parse::<u64>().unwrap() > 0,
            "{arm}: no requests:\n{csv}"
        );
        assert_eq!(rr_errors, "0", "{arm}: the open connection broke:\n{csv}");
    }
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(md.contains("| iptables-nft | 100 |") && md.contains("| sluice | 100 |"));
    assert!(
        md.contains("ns/packet"),
        "BPF_PROG_TEST_RUN cost is reported"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json["measurements"].as_array().unwrap().len(), 14);
    // The sluice arms (pod-to-pod too) measure their floor alongside; the others have none.
    for m in json["measurements"].as_array().unwrap() {
        let with_floor = matches!(
            m["arm"].as_str(),
            Some("sluice" | "sluice-no-socket-lb" | "sluice-pod-to-pod")
        );
        for field in ["floor_crr_p50_us", "crr_vs_floor", "stream_vs_floor"] {
            assert_eq!(
                m[field].as_f64().is_some_and(|v| v > 0.0),
                with_floor,
                "{field}: {m}"
            );
        }
    }
    // The agent's endpoint-change time: the median and the slowest of single changes.
    for m in json["measurements"].as_array().unwrap() {
        if !matches!(m["arm"].as_str(), Some("sluice" | "sluice-no-socket-lb")) {
            continue;
        }
        let median = m["agent_update_ms"].as_f64().unwrap_or(0.0);
        let slowest = m["agent_update_max_ms"].as_f64().unwrap_or(0.0);
        assert!(median > 0.0 && slowest >= median, "agent update: {m}");
    }
    for svg in ["crr-latency.svg", "load-time.svg"] {
        let text = std::fs::read_to_string(out_dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.matches("<polyline").count() == 7,
            "{svg}"
        );
    }

    assert_eq!(netns_list(), netns_before, "namespaces left behind");
    assert_eq!(ruleset(), rules_before, "host rules changed");
    let _ = std::fs::remove_dir_all(&out_dir);
}
