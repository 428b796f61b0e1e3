//! The bench's result: one serializable report, printed as a table or as
//! one JSON object (`--json`, what `benches/compare.sh` reads).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Serialize)]
pub(super) struct Latency {
    p50_us: u64,
    p90_us: u64,
    p95_us: u64,
    p99_us: u64,
    p999_us: u64,
    p9999_us: u64,
    max_us: u64,
}

impl Latency {
    /// The JSON field names (each prefixed `ack_` or `e2e_`).
    const FIELDS: [&'static str; 7] = [
        "p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "p9999_us", "max_us",
    ];

    /// From a histogram of nanoseconds; `None` if it has no samples (the
    /// run ended within its warm-up): not measured, which is not zero.
    pub(super) fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |q: f64| h.value_at_quantile(q) / 1000;
        Some(Latency {
            p50_us: us(0.5),
            p90_us: us(0.9),
            p95_us: us(0.95),
            p99_us: us(0.99),
            p999_us: us(0.999),
            p9999_us: us(0.9999),
            max_us: h.max() / 1000,
        })
    }
}

/// Everything a run measured and checked.
#[derive(Serialize)]
pub(super) struct Report {
    pub mode: String,
    pub sync: String,
    pub size: usize,
    pub producers: u32,
    /// Producers appended through the embedded API, not a connection
    /// (`--in-process`).
    pub producers_in_process: bool,
    pub consumers: u32,
    pub partitions: u32,
    pub replication: u32,
    pub acks: String,
    pub messages_produced: u64,
    pub messages_verified: u64,
    pub duplicates: u64,
    pub produce_secs: f64,
    pub produce_msgs_per_sec: f64,
    pub produce_mb_per_sec: f64,
    pub consume_msgs_per_sec: f64,
    pub consume_mb_per_sec: f64,
    /// The broker process's CPU seconds during the run and its peak
    /// resident memory, when the bench can see it (see `timeline.rs`).
    pub broker_cpu_secs: Option<f64>,
    pub broker_peak_rss_mib: Option<f64>,
    #[serde(skip)]
    pub ack: Option<Latency>,
    #[serde(skip)]
    pub e2e: Option<Latency>,
    pub errors: Vec<String>,
}

impl Report {
    /// One flat JSON object: latencies as `ack_p50_us`, `e2e_p99_us`, ...
    /// (the field names `benches/compare.sh` and the tests read).
    pub(super) fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.to_value()?)
    }

    /// [`Report::to_json`] as a value.
    pub(super) fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut value = serde_json::to_value(self)?;
        if let Some(object) = value.as_object_mut() {
            for (prefix, latency) in [("ack", &self.ack), ("e2e", &self.e2e)] {
                match latency {
                    Some(latency) => {
                        if let serde_json::Value::Object(fields) = serde_json::to_value(latency)? {
                            for (name, v) in fields {
                                object.insert(format!("{prefix}_{name}"), v);
                            }
                        }
                    }
                    // Not measured: null, never a made-up 0.
                    None => {
                        for name in Latency::FIELDS {
                            object.insert(format!("{prefix}_{name}"), serde_json::Value::Null);
                        }
                    }
                }
            }
        }
        Ok(value)
    }

    /// The human-readable table.
    pub(super) fn print_table(&self) {
        println!(
            "spool bench: {} msgs of {} B, {} producers{}, {} consumers, {} partitions, mode {}, sync {}, replication {} (acks {})",
            self.messages_produced,
            self.size,
            self.producers,
            if self.producers_in_process {
                " (in process)"
            } else {
                ""
            },
            self.consumers,
            self.partitions,
            self.mode,
            self.sync,
            self.replication,
            self.acks
        );
        println!(
            "  produce  {:>12.0} msg/s  {:>9.1} MB/s",
            self.produce_msgs_per_sec, self.produce_mb_per_sec
        );
        println!(
            "  consume  {:>12.0} msg/s  {:>9.1} MB/s",
            self.consume_msgs_per_sec, self.consume_mb_per_sec
        );
        if let (Some(cpu), Some(rss)) = (self.broker_cpu_secs, self.broker_peak_rss_mib) {
            println!("  broker   {cpu:>12.1} CPU s    {rss:>9.1} MiB peak RSS");
        }
        println!("  latency (us)      p50      p90      p95      p99    p99.9   p99.99      max");
        for (name, l) in [("ack", &self.ack), ("end-to-end", &self.e2e)] {
            match l {
                Some(l) => println!(
                    "  {name:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    l.p50_us, l.p90_us, l.p95_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us
                ),
                None => println!("  {name:<12} not measured"),
            }
        }
        println!(
            "  verified {} of {} messages, {} duplicates",
            self.messages_verified, self.messages_produced, self.duplicates
        );
    }
}
