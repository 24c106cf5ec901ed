//! The machine the figures were measured on.

use anyhow::Context as _;
use serde::Serialize;

use super::harness;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Logical CPUs available to this process (`nproc`).
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres_version: String,
    pub postgres_server: String,
    /// Which SQS the scenarios use.
    pub sqs: String,
    /// `release` or `debug`: how this `ebra` was compiled.
    pub build: &'static str,
    /// 1-minute load average when the bench started: other work on the machine.
    pub load_average_at_start: Option<f64>,
}

impl Machine {
    pub async fn probe() -> anyhow::Result<Self> {
        let admin_url = harness::admin_url();
        let admin = harness::connect(&admin_url).await?;
        let postgres_version: String = admin
            .query_one("SHOW server_version", &[])
            .await
            .context("SHOW server_version")?
            .try_get(0)?;
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Ok(Self {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".to_owned()),
            memory_gib: mem_total_kib(&meminfo)
                .map(|kib| (kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0)
                .unwrap_or(0.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            postgres_version,
            postgres_server: ebra_shared::config::redact_url(&admin_url),
            sqs: match std::env::var("EBRA_BENCH_SQS").as_deref() {
                Ok("moto") => "moto for every scenario (EBRA_BENCH_SQS=moto)".to_owned(),
                _ => "the embedded endpoint in this process; moto (AWS_ENDPOINT_URL_SQS, or one \
                      started by the bench) where a scenario measures against it"
                    .to_owned(),
            },
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            load_average_at_start: load_average(),
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "{} CPU(s) ({}), {} GiB RAM, Linux {}, PostgreSQL {}, {} build, load average {} at start",
            self.nproc,
            self.cpu_model,
            self.memory_gib,
            self.kernel,
            self.postgres_version,
            self.build,
            self.load_average_at_start.map(|l| format!("{l:.2}")).unwrap_or_else(|| "unknown".to_owned())
        )
    }
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_files() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n").as_deref(),
            Some("Some CPU @ 2.0GHz")
        );
        assert_eq!(
            mem_total_kib("MemTotal:       24683520 kB\nMemFree: 1 kB\n"),
            Some(24_683_520)
        );
    }
}
