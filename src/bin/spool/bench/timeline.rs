//! `spool bench --output DIR`: what the run did second by second, as
//! `report.json` and as `report.html`, a self-contained page of charts
//! (inline SVG, no script, no network) in the spirit of `iggy-bench`'s.
//!
//! Each sample covers one second: messages acknowledged and consumed in
//! it, the ack and end-to-end latency percentiles of the messages it
//! timed, and the broker process's CPU use and resident memory. The broker
//! process is the bench itself when the broker runs in it (its CPU then
//! includes the clients'), the `--broker-pid` process against `--addr`,
//! and absent otherwise.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Sample {
    /// Seconds since the run started, at the end of this sample.
    pub t_secs: f64,
    /// Seconds the sample covers (1, but less for the last).
    pub secs: f64,
    pub produced_per_sec: f64,
    pub consumed_per_sec: f64,
    pub ack_p50_us: Option<u64>,
    pub ack_p99_us: Option<u64>,
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    /// Broker process CPU, in percent of one core.
    pub broker_cpu_percent: Option<f64>,
    pub broker_rss_mib: Option<f64>,
}

/// A process's CPU time and resident memory, read from `/proc`.
pub(super) struct ProcessProbe {
    pid: u32,
    last: Option<(f64, Instant)>,
}

/// What a probe read.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct ProcessUsage {
    /// CPU seconds (user + system) since the process started.
    pub cpu_secs: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

impl ProcessProbe {
    pub(super) fn new(pid: u32) -> ProcessProbe {
        ProcessProbe { pid, last: None }
    }

    /// The process's usage now, or `None` if `/proc` cannot tell.
    pub(super) fn usage(&self) -> Option<ProcessUsage> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name (field 2) may hold spaces: count from its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, in the kernel's
        // USER_HZ ticks, which Linux fixes at 100 for /proc.
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kib = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        };
        Some(ProcessUsage {
            cpu_secs: ticks / 100.0,
            rss_mib: kib("VmRSS:")? / 1024.0,
            peak_rss_mib: kib("VmHWM:")? / 1024.0,
        })
    }

    /// CPU percent since the last call (`None` the first time) and RSS.
    fn sample(&mut self) -> (Option<f64>, Option<f64>) {
        let Some(usage) = self.usage() else {
            return (None, None);
        };
        let now = Instant::now();
        let cpu = self.last.map(|(cpu, at)| {
            100.0 * (usage.cpu_secs - cpu) / now.duration_since(at).as_secs_f64().max(1e-3)
        });
        self.last = Some((usage.cpu_secs, now));
        (cpu, Some(usage.rss_mib))
    }
}

/// Collects samples; fed once a second by the bench's progress task, and
/// once more when the run ends.
pub(super) struct Timeline {
    pub samples: Vec<Sample>,
    probe: Option<ProcessProbe>,
    /// Counts and time at the end of the last sample.
    last: (u64, u64, Instant),
}

impl Timeline {
    pub(super) fn new(broker_pid: Option<u32>) -> Timeline {
        let mut probe = broker_pid.map(ProcessProbe::new);
        if let Some(p) = probe.as_mut() {
            p.sample();
        }
        Timeline {
            samples: Vec::new(),
            probe,
            last: (0, 0, Instant::now()),
        }
    }

    /// Records the time since the last sample: rates from the counts of
    /// messages acknowledged and consumed so far, and the latencies of the
    /// messages timed in it (the histograms hold this sample's only).
    pub(super) fn record(
        &mut self,
        t_secs: f64,
        (acked, consumed): (u64, u64),
        ack: &Histogram<u64>,
        e2e: &Histogram<u64>,
    ) {
        let at =
            |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) / 1000);
        let (cpu, rss) = self
            .probe
            .as_mut()
            .map_or((None, None), ProcessProbe::sample);
        let now = Instant::now();
        let secs = now.duration_since(self.last.2).as_secs_f64().max(1e-3);
        let produced_per_sec = acked.saturating_sub(self.last.0) as f64 / secs;
        let consumed_per_sec = consumed.saturating_sub(self.last.1) as f64 / secs;
        self.last = (acked, consumed, now);
        self.samples.push(Sample {
            t_secs,
            secs,
            produced_per_sec,
            consumed_per_sec,
            ack_p50_us: at(ack, 0.5),
            ack_p99_us: at(ack, 0.99),
            e2e_p50_us: at(e2e, 0.5),
            e2e_p99_us: at(e2e, 0.99),
            broker_cpu_percent: cpu,
            broker_rss_mib: rss,
        });
    }
}

/// Writes `report.json` (the run's report under `"report"`, the samples
/// under `"samples"`) and `report.html` into `dir`, creating it.
pub(super) fn write(
    dir: &Path,
    report_json: &serde_json::Value,
    broker_process: &str,
    samples: &[Sample],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::json!({
        "report": report_json,
        "broker_process": broker_process,
        "samples": samples,
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?,
    )?;
    std::fs::write(
        dir.join("report.html"),
        html(report_json, broker_process, samples),
    )
}

/// One line of a chart: its name, colour and points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

fn html(report: &serde_json::Value, broker_process: &str, samples: &[Sample]) -> String {
    let points = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t_secs, v)))
            .collect()
    };
    let us = |v: Option<u64>| v.map(|v| v as f64);
    let charts = [
        chart(
            "Throughput",
            "msg/s",
            &[
                ("produced", "#1f77b4", points(&|s| Some(s.produced_per_sec))),
                ("consumed", "#ff7f0e", points(&|s| Some(s.consumed_per_sec))),
            ],
        ),
        chart(
            "Produce acknowledgement latency",
            "µs",
            &[
                ("p50", "#2ca02c", points(&|s| us(s.ack_p50_us))),
                ("p99", "#d62728", points(&|s| us(s.ack_p99_us))),
            ],
        ),
        chart(
            "End-to-end latency",
            "µs",
            &[
                ("p50", "#2ca02c", points(&|s| us(s.e2e_p50_us))),
                ("p99", "#d62728", points(&|s| us(s.e2e_p99_us))),
            ],
        ),
        chart(
            &format!("Broker CPU ({broker_process})"),
            "% of a core",
            &[("cpu", "#9467bd", points(&|s| s.broker_cpu_percent))],
        ),
        chart(
            &format!("Broker resident memory ({broker_process})"),
            "MiB",
            &[("rss", "#8c564b", points(&|s| s.broker_rss_mib))],
        ),
    ];
    let mut rows = String::new();
    if let Some(fields) = report.as_object() {
        for (name, value) in fields {
            let _ = write!(
                rows,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(name),
                escape(&value.to_string())
            );
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>spool bench</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}\
         table{{border-collapse:collapse}}th,td{{text-align:left;padding:2px 8px;border-bottom:1px solid #ddd}}\
         svg{{display:block;margin:1em 0}}</style></head><body>\
         <h1>spool bench</h1>{}<h2>Report</h2><table>{rows}</table></body></html>",
        charts.join("")
    )
}

/// A line chart as inline SVG: time on x, `unit` on y from 0.
fn chart(title: &str, unit: &str, lines: &[Line<'_>]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 240.0;
    const LEFT: f64 = 80.0;
    const BOTTOM: f64 = 30.0;
    let all = lines.iter().flat_map(|l| l.2.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = all.map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
    let x = |v: f64| LEFT + v / x_max * (W - LEFT - 10.0);
    let y = |v: f64| H - BOTTOM - v / y_max * (H - BOTTOM - 20.0);
    let mut svg = format!(
        "<h2>{}</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-size=\"11\"><rect width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>",
        escape(title)
    );
    for i in 0..=4 {
        let v = y_max / 1.1 * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - 10.0,
            LEFT - 4.0,
            y(v) + 4.0,
            short(v),
            y0 = y(v),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">seconds (max {x_max:.0}) · y: {}</text>",
        W - 10.0,
        H - 8.0,
        escape(unit)
    );
    for (i, (name, colour, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"14\" fill=\"{colour}\">{}</text>",
            path.join(" "),
            LEFT + 10.0 + 90.0 * i as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// 1234567 as "1.23M".
fn short(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_charts_every_series_and_escapes_the_report() {
        let samples: Vec<Sample> = (1..=3)
            .map(|i| Sample {
                t_secs: f64::from(i),
                secs: 1.0,
                produced_per_sec: 1000.0 * f64::from(i),
                consumed_per_sec: 900.0,
                ack_p50_us: Some(50),
                ack_p99_us: Some(90),
                e2e_p50_us: None,
                e2e_p99_us: None,
                broker_cpu_percent: Some(150.0),
                broker_rss_mib: Some(42.0),
            })
            .collect();
        let report = serde_json::json!({"mode": "<queue>"});
        let page = html(&report, "pid 1", &samples);
        assert_eq!(page.matches("<svg").count(), 5);
        assert_eq!(page.matches("<polyline").count(), 8);
        // No end-to-end latency was measured: its two lines are empty.
        assert_eq!(page.matches("points=\"\"").count(), 2, "{page}");
        // The last throughput point is at the right edge, at the top of
        // the y range (3000 msg/s, the maximum, less the 10% headroom).
        assert!(page.contains("890.0,"), "{page}");
        assert!(page.contains("&quot;&lt;queue&gt;&quot;"), "{page}");
        assert!(!page.contains("<queue>"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn this_process_can_be_probed() {
        let usage = ProcessProbe::new(std::process::id())
            .usage()
            .expect("/proc/self");
        assert!(usage.rss_mib > 0.0 && usage.peak_rss_mib >= usage.rss_mib);
    }
}
