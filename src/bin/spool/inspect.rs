//! `spool inspect` and `spool verify`: offline looks at a data directory.
//! Both only read it; `verify --repair` alone changes it, and only by
//! opening it as the broker would (its recovery, nothing more).

use std::path::PathBuf;

use spool::broker::verify::{check_data_dir, DataDirCheck};
use spool::storage::verify::Problem;
use spool::{Broker, BrokerConfig};

use crate::Failure;

/// Arguments of `spool inspect`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  spool inspect --data ./spool-data")]
pub struct InspectArgs {
    /// The data directory (the broker must not be running on it).
    #[arg(long, default_value = "./spool-data")]
    data: PathBuf,
}

/// Arguments of `spool verify`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  spool verify --data ./spool-data --report report.json\n  spool verify --data ./spool-data --repair   # what recovery would do, nothing more"
)]
pub struct VerifyArgs {
    /// The data directory (the broker must not be running on it).
    #[arg(long, default_value = "./spool-data")]
    data: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Apply what recovery would (cut torn tails, rebuild indexes) by
    /// opening the directory as the broker does, then check again.
    #[arg(long)]
    repair: bool,
}

fn check(data: &std::path::Path) -> Result<DataDirCheck, Failure> {
    if !data.join("topics").is_dir() {
        return Err(Failure::usage(format!(
            "{} is not a Spool data directory (no topics/ inside)",
            data.display()
        )));
    }
    Ok(check_data_dir(data)?)
}

pub fn run(args: InspectArgs) -> Result<(), Failure> {
    let checked = check(&args.data)?;
    if checked.topics.is_empty() {
        println!("no topics in {}", args.data.display());
    }
    for topic in &checked.topics {
        match &topic.config {
            Some(c) => println!(
                "{}  partitions={} sync={} segment_bytes={}",
                topic.topic, c.partitions, c.log.sync, c.log.segment_size_bytes
            ),
            None => println!("{}  (metadata unreadable)", topic.topic),
        }
        for (p, check) in &topic.partitions {
            println!("  {p:>4}  start={}  end={}", check.start, check.end);
        }
        let problems = topic.all_problems().count();
        if problems > 0 {
            println!("  {problems} problems: run `spool verify` for details");
        }
    }
    for group in &checked.groups {
        let problems = group.problems.len();
        println!("group {}  {problems} problems", group.group);
    }
    Ok(())
}

pub fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let mut checked = check(&args.data)?;
    let found = print_report(&checked);
    if args.repair && found > 0 {
        println!("repairing: opening the directory as the broker would");
        Broker::open(&args.data, BrokerConfig::default())?.close()?;
        checked = check(&args.data)?;
        print_report(&checked);
    }
    if let Some(path) = &args.report {
        let report = serde_json::json!({
            "data": args.data,
            "topics": checked.topics,
            "groups": checked.groups,
            "damage": checked.all_problems().any(|p| p.is_damage()),
        });
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::refused(format!("encoding the report: {e}")))?;
        std::fs::write(path, text).map_err(|e| Failure::io("writing the report", e))?;
    }
    let damage = checked.all_problems().filter(|p| p.is_damage()).count();
    if damage > 0 {
        return Err(Failure::refused(format!(
            "{damage} problems lose or hide data (see above)"
        )));
    }
    Ok(())
}

/// One problem as a line: who, what, where (file and byte), why.
fn print_problem(owner: &str, problem: &Problem) {
    println!(
        "{owner}: {} in {}{}: {}",
        problem.kind,
        problem.file.display(),
        problem
            .position
            .map_or_else(String::new, |pos| format!(" at byte {pos}")),
        problem.detail
    );
}

/// Prints the summary; returns the number of problems.
fn print_report(check: &DataDirCheck) -> usize {
    let (mut partitions, mut segments, mut bytes) = (0, 0, 0u64);
    for topic in &check.topics {
        for (p, partition) in &topic.partitions {
            partitions += 1;
            segments += partition.segments;
            bytes += partition.bytes;
            for problem in &partition.problems {
                print_problem(&format!("{}/{p}", topic.topic), problem);
            }
        }
        for problem in &topic.problems {
            print_problem(&topic.topic, problem);
        }
    }
    for group in &check.groups {
        for problem in &group.problems {
            print_problem(&format!("group {}", group.group), problem);
        }
    }
    let total = check.all_problems().count();
    println!(
        "checked {} topics, {partitions} partitions, {segments} segments, {bytes} bytes of batches, {} groups: {}",
        check.topics.len(),
        check.groups.len(),
        if total == 0 {
            "no problems".to_string()
        } else {
            format!("{total} problems")
        }
    );
    total
}
