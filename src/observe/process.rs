//! The `process_*` metrics every Prometheus client library exposes (CPU time, resident memory,
//! start time, open file descriptors), read from /proc on each scrape.

use std::fmt;

use nix::unistd::{SysconfVar, sysconf};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// `process_*` metrics from /proc/self, as every Prometheus client library exposes them.
#[derive(Debug)]
pub(super) struct ProcessCollector;

struct ProcStat {
    cpu_seconds: f64,
    resident_bytes: u64,
    start_time_seconds: f64,
}

/// A sysconf value, at least 1: a divisor or factor that can't be read must not zero out the
/// sample (nor divide by zero).
fn sysconf_or_1(var: SysconfVar) -> u64 {
    match sysconf(var) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => 1,
    }
}

fn proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14, 15 (utime, stime), 22 (starttime, ticks since boot), 24 (rss, pages); `f[0]`
    // is field 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = sysconf_or_1(SysconfVar::CLK_TCK) as f64;
    let page = sysconf_or_1(SysconfVar::PAGE_SIZE);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
    });
    Some(ProcStat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        resident_bytes: field(24)? * page,
        start_time_seconds: boot.map_or(0.0, |b| b as f64 + field(22).unwrap_or(0) as f64 / ticks),
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(s) = proc_stat() {
            encoder
                .encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, f64>(&s.cpu_seconds, None)?;
            encoder
                .encode_descriptor(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&s.resident_bytes)?;
            encoder
                .encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&s.start_time_seconds)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            encoder
                .encode_descriptor(
                    "process_open_fds",
                    "Number of open file descriptors",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&(fds.count() as u64))?;
        }
        Ok(())
    }
}
