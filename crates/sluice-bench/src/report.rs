//! Results as a Markdown table (with ratios against iptables-nft, the kube-proxy default on
//! current distributions), CSV, JSON and SVG line plots.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::arms::{Arm, Measurement};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BpfCost {
    pub services: usize,
    pub ns_per_packet: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub measurements: Vec<Measurement>,
    pub bpf: Vec<BpfCost>,
}

fn baseline(r: &Report, n: usize) -> Option<&Measurement> {
    r.measurements
        .iter()
        .find(|m| m.services == n && m.arm == Arm::IptablesNft)
}

/// The floor's (no-rules: the kernel's path on the same interfaces, no program, no rule) run
/// at `m`'s N.
fn no_rules<'r>(r: &'r Report, m: &Measurement) -> Option<&'r Measurement> {
    r.measurements
        .iter()
        .find(|f| f.services == m.services && f.arm == Arm::NoRules)
}

/// The floor's CRR p50 for `m`: measured alongside `m` where it was, else no-rules' own run.
fn floor_p50(r: &Report, m: &Measurement) -> Option<f64> {
    m.floor_crr_p50_us
        .or_else(|| no_rules(r, m).map(|f| f.crr_p50_us))
}

/// The floor's stream throughput for `m`, likewise.
fn floor_stream(r: &Report, m: &Measurement) -> Option<f64> {
    m.floor_stream_gbps
        .or_else(|| no_rules(r, m).map(|f| f.stream_gbps))
}

/// `m`'s CRR p50 over the floor's: paired round by round where the floor was measured
/// alongside, else the ratio of the two p50s.
fn crr_over_floor(r: &Report, m: &Measurement) -> Option<f64> {
    m.crr_vs_floor.or_else(|| {
        floor_p50(r, m)
            .filter(|f| *f > 0.0)
            .map(|f| m.crr_p50_us / f)
    })
}

/// `m`'s stream throughput over the floor's, likewise (None when the stream broke).
fn stream_over_floor(r: &Report, m: &Measurement) -> Option<f64> {
    if m.stream_failed {
        return None;
    }
    m.stream_vs_floor.or_else(|| {
        floor_stream(r, m)
            .filter(|f| *f > 0.0)
            .map(|f| m.stream_gbps / f)
    })
}

fn ratio(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "-".into(),
    }
}

/// A paired ratio as a multiple, with the middle half of its rounds when there is one.
fn times_cell(x: Option<f64>, q: Option<(f64, f64)>) -> String {
    match (x, q) {
        (Some(x), Some((q1, q3))) => format!("{x:.2}× ({q1:.2}–{q3:.2})"),
        (Some(x), None) => format!("{x:.2}×"),
        _ => "-".into(),
    }
}

/// A paired ratio as a percentage, with the middle half of its rounds when there is one.
fn percent_cell(x: Option<f64>, q: Option<(f64, f64)>) -> String {
    match (x, q) {
        (Some(x), Some((q1, q3))) => {
            format!("{:.0}% ({:.0}–{:.0})", x * 100.0, q1 * 100.0, q3 * 100.0)
        }
        (Some(x), None) => format!("{:.0}%", x * 100.0),
        _ => "-".into(),
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| arm | services | load (s) | new conn/s | CRR p50 (µs) | CRR p99 (µs) | p50 vs iptables-nft | p50 vs no-rules | RR p50 (µs) | stream (Gbit/s) | stream vs no-rules | endpoint change (ms) | CPU µs/conn |"
        );
        let _ = writeln!(
            t,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut rows: Vec<&Measurement> = self.measurements.iter().collect();
        rows.sort_by_key(|m| (m.services, Arm::ALL.iter().position(|a| *a == m.arm)));
        for m in rows {
            let base = baseline(self, m.services).map(|b| b.crr_p50_us);
            let _ = writeln!(
                t,
                "| {} | {} | {:.3} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {:.0} |",
                m.arm.name(),
                m.services,
                m.load_seconds,
                m.crr_rate,
                m.crr_p50_us,
                m.crr_p99_us,
                ratio(m.crr_p50_us, base),
                times_cell(crr_over_floor(self, m), m.rounds.crr_quartiles()),
                m.rr_p50_us,
                if m.stream_failed {
                    "broke".to_string()
                } else {
                    format!("{:.2}", m.stream_gbps)
                },
                percent_cell(stream_over_floor(self, m), m.rounds.stream_quartiles()),
                match (m.update_ms, m.agent_update_ms, m.agent_update_max_ms) {
                    (Some(e2e), Some(agent), Some(max)) => {
                        format!("{e2e:.1} (agent {agent:.2}, max {max:.2})")
                    }
                    (Some(e2e), Some(agent), None) => format!("{e2e:.1} (agent {agent:.2})"),
                    (Some(e2e), None, _) => format!("{e2e:.1}"),
                    _ => "-".into(),
                },
                m.cpu_us_per_conn
            );
        }
        if self.measurements.iter().any(|m| !m.rounds.is_empty()) {
            let _ = writeln!(
                t,
                "\nIn parentheses: the middle half (first to third quartile) of the paired rounds' own ratios, each round against no-rules run back to back with it."
            );
        }
        t.push_str(&self.noise_control());
        if !self.bpf.is_empty() {
            let first = self.bpf.first().map(|b| b.ns_per_packet);
            let _ = writeln!(
                t,
                "\n| services | sluice from_container ns/packet (BPF_PROG_TEST_RUN, fastest of 5 batches) | vs first |"
            );
            let _ = writeln!(t, "|---:|---:|---:|");
            for b in &self.bpf {
                let _ = writeln!(
                    t,
                    "| {} | {:.0} | {} |",
                    b.services,
                    b.ns_per_packet,
                    ratio(b.ns_per_packet, first)
                );
            }
        }
        t.push('\n');
        t.push_str(&self.targets());
        t
    }

    /// The A/A control beside each paired CRR and stream ratio: how far the floor lands from
    /// itself when measured the same way at the same moment (empty when no run has one).
    fn noise_control(&self) -> String {
        let mut rows: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| m.rounds.control_crr().is_some() || m.rounds.control_stream().is_some())
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        rows.sort_by_key(|m| (Arm::ALL.iter().position(|a| *a == m.arm), m.services));
        let mut t = String::from(
            "\nNoise control (an A/A test): right after each run's CRR and stream rounds, the no-rules floor is paired with itself the same way. Where the floor's ratio to itself spreads as wide as the run's, the run's distance from 1.00× cannot be told from the machine's noise.\n\n| arm | services | CRR p50 vs no-rules | no-rules vs itself | stream vs no-rules | no-rules vs itself |\n|---|---:|---:|---:|---:|---:|\n",
        );
        for m in rows {
            let (crr, stream) = (m.rounds.control_crr(), m.rounds.control_stream());
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} |",
                m.arm.name(),
                m.services,
                times_cell(crr_over_floor(self, m), m.rounds.crr_quartiles()),
                times_cell(crr.map(|c| c.0), crr.map(|c| (c.1, c.2))),
                percent_cell(stream_over_floor(self, m), m.rounds.stream_quartiles()),
                percent_cell(stream.map(|c| c.0), stream.map(|c| (c.1, c.2))),
            );
        }
        t
    }

    /// The targets, each with what was measured and whether it was met.
    pub fn targets(&self) -> String {
        let mut t = String::from("| target | measured | met |\n|---|---|---|\n");
        let mut line = |what: &str, measured: String, met: Option<bool>| {
            let verdict = match met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not measured",
            };
            let _ = writeln!(t, "| {what} | {measured} | {verdict} |");
        };
        let costs: Vec<f64> = self.bpf.iter().map(|b| b.ns_per_packet).collect();
        if let (Some(lo), Some(hi)) = (
            costs.iter().cloned().reduce(f64::min),
            costs.iter().cloned().reduce(f64::max),
        ) {
            let spread = (hi - lo) / lo * 100.0;
            line(
                "BPF service+policy cost flat within 10% over all N",
                format!("{lo:.0}..{hi:.0} ns ({spread:.1}% spread)"),
                Some(spread <= 10.0),
            );
        } else {
            line(
                "BPF service+policy cost flat within 10% over all N",
                "-".into(),
                None,
            );
        }
        let worst = |arm: Arm, f: &dyn Fn(&Measurement) -> Option<f64>| {
            self.measurements
                .iter()
                .filter(|m| m.arm == arm)
                .filter_map(|m| f(m).map(|v| (m.services, v)))
                .fold(None, |acc: Option<(usize, f64)>, x| match acc {
                    Some(a) if a.1 >= x.1 => Some(a),
                    _ => Some(x),
                })
        };
        let over_floor = |m: &Measurement| crr_over_floor(self, m).map(|x| (x - 1.0) * 100.0);
        // The middle half of the rounds at the N where the median is worst, as percentages.
        let middle_half = |n: usize, q: fn(&crate::arms::Rounds) -> Option<(f64, f64)>| {
            self.measurements
                .iter()
                .find(|m| m.arm == Arm::Sluice && m.services == n)
                .and_then(|m| q(&m.rounds))
                .map(|(q1, q3)| {
                    format!(
                        "; rounds' middle half {:+.1}..{:+.1}%",
                        (q1 - 1.0) * 100.0,
                        (q3 - 1.0) * 100.0
                    )
                })
                .unwrap_or_default()
        };
        // The A/A control at that N: the floor against itself, paired the same way.
        let control = |n: usize, c: fn(&crate::arms::Rounds) -> Option<(f64, f64, f64)>| {
            self.measurements
                .iter()
                .find(|m| m.arm == Arm::Sluice && m.services == n)
                .and_then(|m| c(&m.rounds))
                .map(|(x, q1, q3)| {
                    format!(
                        "; no-rules against itself there: {:+.1}%, middle half {:+.1}..{:+.1}%",
                        (x - 1.0) * 100.0,
                        (q1 - 1.0) * 100.0,
                        (q3 - 1.0) * 100.0
                    )
                })
                .unwrap_or_default()
        };
        match worst(Arm::Sluice, &over_floor) {
            Some((n, pct)) => line(
                "sluice connection latency within 5% of no-rules at every N",
                format!(
                    "worst {pct:+.1}% (at {n}{}{})",
                    middle_half(n, crate::arms::Rounds::crr_quartiles),
                    control(n, crate::arms::Rounds::control_crr)
                ),
                Some(pct <= 5.0),
            ),
            None => line(
                "sluice connection latency within 5% of no-rules at every N",
                "-".into(),
                None,
            ),
        }
        let load_10k = |arm: Arm| {
            self.measurements
                .iter()
                .find(|m| m.arm == arm && m.services == 10_000)
                .map(|m| m.load_seconds)
        };
        match load_10k(Arm::Sluice) {
            Some(s) => line(
                "loading 10k Services under 1 s",
                format!(
                    "sluice {s:.2} s; iptables-nft {}",
                    load_10k(Arm::IptablesNft)
                        .map(|v| format!("{v:.1} s"))
                        .unwrap_or("-".into())
                ),
                Some(s < 1.0),
            ),
            None => line(
                "loading 10k Services under 1 s",
                "10k not in this run".into(),
                None,
            ),
        }
        match worst(Arm::Sluice, &|m| m.agent_update_ms) {
            Some((n, ms)) => line(
                &format!(
                    "one endpoint change applied in under 1 ms at any N (agent reconcile, median of {})",
                    crate::arms::AGENT_CHANGES
                ),
                format!(
                    "worst median {ms:.2} ms (at {n}); slowest single change {}; end to end incl. file watch: worst {:.1} ms",
                    worst(Arm::Sluice, &|m| m.agent_update_max_ms)
                        .map(|w| format!("{:.2} ms (at {})", w.1, w.0))
                        .unwrap_or("-".into()),
                    worst(Arm::Sluice, &|m| m.update_ms)
                        .map(|w| w.1)
                        .unwrap_or(0.0)
                ),
                Some(ms < 1.0),
            ),
            None => line(
                "one endpoint change applied in under 1 ms",
                "-".into(),
                None,
            ),
        }
        let lowest = self
            .measurements
            .iter()
            .filter(|m| m.arm == Arm::Sluice && !m.stream_failed)
            .filter_map(|m| stream_over_floor(self, m).map(|x| (m.services, x * 100.0)))
            .fold(None, |acc: Option<(usize, f64)>, x| match acc {
                Some(a) if a.1 <= x.1 => Some(a),
                _ => Some(x),
            });
        match lowest {
            Some((n, pct)) => line(
                "single-stream throughput at least 95% of raw veth (no-rules)",
                format!(
                    "lowest {pct:.1}% (at {n}{}{})",
                    middle_half(n, crate::arms::Rounds::stream_quartiles),
                    control(n, crate::arms::Rounds::control_stream)
                ),
                Some(pct >= 95.0),
            ),
            None => line(
                "single-stream throughput at least 95% of raw veth",
                "-".into(),
                None,
            ),
        }
        t
    }

    pub fn csv(&self) -> String {
        let mut t = String::from(
            "arm,services,load_seconds,crr_rate,crr_p50_us,crr_p99_us,crr_errors,rr_p50_us,rr_p99_us,rr_count,rr_errors,cpu_us_per_conn,stream_gbps,update_ms,agent_update_ms,agent_update_max_ms,floor_crr_p50_us,floor_stream_gbps,crr_vs_floor,stream_vs_floor\n",
        );
        for m in &self.measurements {
            let _ = writeln!(
                t,
                "{},{},{:.6},{:.1},{:.1},{:.1},{},{:.1},{:.1},{},{},{:.1},{:.3},{},{},{},{},{},{},{}",
                m.arm.name(),
                m.services,
                m.load_seconds,
                m.crr_rate,
                m.crr_p50_us,
                m.crr_p99_us,
                m.crr_errors,
                m.rr_p50_us,
                m.rr_p99_us,
                m.rr_count,
                m.rr_errors,
                m.cpu_us_per_conn,
                m.stream_gbps,
                m.update_ms.map(|v| format!("{v:.3}")).unwrap_or_default(),
                m.agent_update_ms
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_default(),
                m.agent_update_max_ms
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_default(),
                m.floor_crr_p50_us
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_default(),
                m.floor_stream_gbps
                    .map(|v| format!("{v:.3}"))
                    .unwrap_or_default(),
                m.crr_vs_floor
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default(),
                m.stream_vs_floor
                    .map(|v| format!("{v:.4}"))
                    .unwrap_or_default()
            );
        }
        t
    }

    /// A line plot of `value` against the number of Services, one line per arm; measurements
    /// without a value (an arm with nothing to measure there) are left out.
    pub fn svg(&self, title: &str, unit: &str, value: fn(&Measurement) -> Option<f64>) -> String {
        let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 170.0);
        let xs: Vec<usize> = {
            let mut v: Vec<usize> = self.measurements.iter().map(|m| m.services).collect();
            v.sort();
            v.dedup();
            v
        };
        let ymax = self
            .measurements
            .iter()
            .filter_map(value)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let x_of = |n: usize| {
            let i = xs.iter().position(|x| *x == n).unwrap_or(0) as f64;
            left + i * (w - left - right) / ((xs.len().max(2) - 1) as f64)
        };
        let y_of = |v: f64| h - bottom - v / ymax * (h - bottom - top);
        let colors = [
            "#888888", "#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#17becf", "#2ca02c",
        ];
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\">{title}</text>\n",
            left
        );
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
            h - bottom,
            w - right,
            h - bottom,
            h - bottom
        );
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}</text><line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#eeeeee\"/>",
                left - 6.0,
                y_of(v) + 4.0,
                v,
                w - right,
                y = y_of(v)
            );
        }
        for n in &xs {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
                x_of(*n),
                h - bottom + 18.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">Services</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{unit}</text>",
            (left + w - right) / 2.0,
            h - 12.0,
            h / 2.0,
            h / 2.0
        );
        for (i, arm) in Arm::ALL.iter().enumerate() {
            let mut pts: Vec<(usize, f64)> = self
                .measurements
                .iter()
                .filter(|m| m.arm == *arm)
                .filter_map(|m| Some((m.services, value(m)?)))
                .collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by_key(|p| p.0);
            let color = colors[i % colors.len()];
            let line: Vec<String> = pts
                .iter()
                .map(|(n, v)| format!("{:.1},{:.1}", x_of(*n), y_of(*v)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                line.join(" ")
            );
            for (n, v) in &pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    x_of(*n),
                    y_of(*v)
                );
            }
            let ly = top + 18.0 * i as f64;
            let _ = writeln!(
                s,
                "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
                w - right + 10.0,
                w - right + 30.0,
                w - right + 35.0,
                ly + 4.0,
                arm.name()
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first line of `text` containing `needle`.
    fn line_with<'t>(text: &'t str, needle: &str) -> &'t str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    }

    pub(crate) fn m(arm: Arm, services: usize, p50: f64) -> Measurement {
        Measurement {
            arm,
            services,
            load_seconds: 0.1,
            crr_rate: 1e6 / p50,
            crr_p50_us: p50,
            crr_p99_us: p50 * 2.0,
            crr_errors: 0,
            floor_crr_p50_us: None,
            floor_stream_gbps: None,
            crr_vs_floor: None,
            stream_vs_floor: None,
            rounds: Default::default(),
            rr_p50_us: 20.0,
            rr_p99_us: 30.0,
            rr_count: 100,
            rr_errors: 0,
            stream_gbps: 10.0,
            stream_failed: false,
            update_ms: Some(2.0),
            agent_update_ms: None,
            agent_update_max_ms: None,
            cpu_us_per_conn: 50.0,
        }
    }

    #[test]
    fn the_table_compares_each_arm_with_iptables_nft_at_the_same_n() {
        let r = Report {
            measurements: vec![
                m(Arm::IptablesNft, 1000, 400.0),
                m(Arm::Sluice, 1000, 100.0),
                m(Arm::IptablesNft, 0, 100.0),
            ],
            ..Default::default()
        };
        let t = r.markdown();
        let sluice = line_with(&t, "| sluice | 1000");
        assert!(sluice.contains("| 0.25× |"), "{sluice}");
        assert!(
            t.contains("| loading 10k Services under 1 s | 10k not in this run | not measured |")
        );
        assert_eq!(r.csv().lines().count(), 4);
        let svg = r.svg("CRR p50", "µs", |m| Some(m.crr_p50_us));
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("sluice"));
        // An arm without the figure gets no line and no legend entry.
        let svg = r.svg("Endpoint change", "ms", |m| {
            (m.arm == Arm::Sluice).then_some(20.0)
        });
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert!(
            svg.contains(">sluice<") && !svg.contains(">iptables-nft<"),
            "{svg}"
        );
    }

    #[test]
    fn a_floor_measured_alongside_wins_over_the_floor_arm() {
        let mut sluice = m(Arm::Sluice, 0, 104.0);
        sluice.floor_crr_p50_us = Some(100.0);
        sluice.stream_gbps = 9.0;
        sluice.floor_stream_gbps = Some(10.0);
        let r = Report {
            measurements: vec![
                sluice,
                m(Arm::SluicePodToPod, 0, 80.0),
                m(Arm::NoRules, 0, 90.0),
            ],
            ..Default::default()
        };
        let t = r.markdown();
        let row = line_with(&t, "| sluice | 0");
        assert!(
            row.contains("| 1.04× |") && row.contains("| 90% |"),
            "{row}"
        );
        // Without one, the no-rules run at the same N is the floor.
        let pod = line_with(&t, "| sluice-pod-to-pod | 0");
        assert!(
            pod.contains("| 0.89× |") && pod.contains("| 100% |"),
            "{pod}"
        );
        let target = line_with(&t, "within 5% of no-rules");
        assert!(target.contains("worst +4.0% (at 0) | yes"), "{target}");
        let stream = line_with(&t, "95% of raw veth");
        assert!(stream.contains("lowest 90.0% (at 0) | no"), "{stream}");
    }

    #[test]
    fn round_by_round_ratios_win_over_the_ratio_of_pooled_figures() {
        let mut sluice = m(Arm::Sluice, 0, 110.0);
        sluice.floor_crr_p50_us = Some(100.0);
        sluice.crr_vs_floor = Some(1.03);
        sluice.stream_gbps = 9.0;
        sluice.floor_stream_gbps = Some(10.0);
        sluice.stream_vs_floor = Some(0.97);
        let r = Report {
            measurements: vec![sluice],
            ..Default::default()
        };
        let t = r.markdown();
        let row = line_with(&t, "| sluice | 0");
        assert!(
            row.contains("| 1.03× |") && row.contains("| 97% |"),
            "{row}"
        );
        let target = line_with(&t, "within 5% of no-rules");
        assert!(target.contains("worst +3.0% (at 0) | yes"), "{target}");
        let stream = line_with(&t, "95% of raw veth");
        assert!(stream.contains("lowest 97.0% (at 0) | yes"), "{stream}");
        let csv = r.csv();
        assert!(
            csv.lines()
                .next()
                .unwrap()
                .ends_with(",crr_vs_floor,stream_vs_floor"),
            "{csv}"
        );
        assert!(
            csv.lines().nth(1).unwrap().ends_with(",1.0300,0.9700"),
            "{csv}"
        );
    }

    /// Five CRR rounds whose ratios to the floor are 1.0, 1.1, 1.2, 1.3 and 1.4.
    fn crr_rounds_1_0_to_1_4() -> crate::arms::Rounds {
        crate::arms::Rounds {
            crr_p50_us: vec![100.0, 110.0, 120.0, 130.0, 140.0],
            floor_crr_p50_us: vec![100.0; 5],
            ..Default::default()
        }
    }

    #[test]
    fn the_rounds_spread_is_shown_beside_the_median() {
        let mut sluice = m(Arm::Sluice, 0, 110.0);
        sluice.rounds = crate::arms::Rounds {
            stream_gbps: vec![9.0, 9.5, 10.0, 10.5, 11.0],
            floor_stream_gbps: vec![10.0; 5],
            ..crr_rounds_1_0_to_1_4()
        };
        (sluice.crr_vs_floor, sluice.stream_vs_floor) = (Some(1.2), Some(1.0));
        let t = Report {
            measurements: vec![sluice],
            ..Default::default()
        }
        .markdown();
        assert!(t.contains("In parentheses: the middle half"));
        let row = line_with(&t, "| sluice | 0");
        assert!(row.contains("| 1.20× (1.10–1.30) |"), "{row}");
        assert!(row.contains("| 100% (95–105) |"), "{row}");
        let target = line_with(&t, "within 5% of no-rules");
        assert!(
            target.contains("worst +20.0% (at 0; rounds' middle half +10.0..+30.0%) | no"),
            "{target}"
        );
        let stream = line_with(&t, "95% of raw veth");
        assert!(
            stream.contains("lowest 100.0% (at 0; rounds' middle half -5.0..+5.0%) | yes"),
            "{stream}"
        );
    }

    #[test]
    fn the_floor_against_itself_is_shown_beside_the_run() {
        let mut sluice = m(Arm::Sluice, 1000, 110.0);
        sluice.rounds = crate::arms::Rounds {
            // The floor over itself: 0.9, 0.95, 1.0, 1.05, 1.1.
            control_crr_p50_us: vec![95.0, 90.0, 100.0, 110.0, 105.0],
            control_floor_crr_p50_us: vec![100.0; 5],
            // Stream 95..105% of the floor; the floor over itself 90..94%.
            stream_gbps: vec![9.5, 9.75, 10.0, 10.25, 10.5],
            floor_stream_gbps: vec![10.0; 5],
            control_stream_gbps: vec![9.0, 9.1, 9.2, 9.3, 9.4],
            control_floor_stream_gbps: vec![10.0; 5],
            ..crr_rounds_1_0_to_1_4()
        };
        (sluice.crr_vs_floor, sluice.stream_vs_floor) = (Some(1.2), Some(1.0));
        let without = m(Arm::SluiceNoSocketLb, 1000, 110.0);
        let t = Report {
            measurements: vec![sluice, without],
            ..Default::default()
        }
        .markdown();
        assert!(t.contains("Noise control (an A/A test)"), "{t}");
        let row = line_with(&t, "| sluice | 1000 | 1.20×");
        assert!(
            row.ends_with(
                "| 1.20× (1.10–1.30) | 1.00× (0.95–1.05) | 100% (98–102) | 92% (91–93) |"
            ),
            "{row}"
        );
        // A run without a control has no row in that table.
        assert!(!t.contains("| sluice-no-socket-lb | 1000 | -"), "{t}");
        let target = line_with(&t, "within 5% of no-rules");
        assert!(
            target.contains("no-rules against itself there: +0.0%, middle half -5.0..+5.0%) | no"),
            "{target}"
        );
        let stream = line_with(&t, "95% of raw veth");
        assert!(
            stream.contains("no-rules against itself there: -8.0%, middle half -9.0..-7.0%) | yes"),
            "{stream}"
        );
        // Without any control the table is left out.
        let plain = Report {
            measurements: vec![m(Arm::Sluice, 0, 100.0)],
            ..Default::default()
        }
        .markdown();
        assert!(!plain.contains("Noise control"), "{plain}");
    }
}
