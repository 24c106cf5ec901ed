//! Where the CPU went during a timed loop: this process, the Postgres backends serving the
//! bench database, and the whole machine (other tenants included), from `/proc`.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use super::harness::BenchDatabase;

/// Linux reports process times in USER_HZ ticks, 100 a second on every mainstream platform.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuUse {
    pub wall_seconds: f64,
    /// CPU seconds used by this process (the handlers, the provider stand-in, the driver).
    pub ebra_seconds: f64,
    /// CPU seconds used by the Postgres backends connected to the bench database.
    pub postgres_seconds: f64,
    /// Busy share of all CPUs of the machine over the interval (0–1), whoever used them.
    pub machine_busy: f64,
    pub cpus: usize,
}

impl CpuUse {
    /// "Postgres 1.2 CPU-s, ebra 0.3 CPU-s; machine 97 % busy".
    pub fn describe(&self) -> String {
        format!(
            "CPU during the loop: Postgres backends {:.1} CPU-s, ebra {:.1} CPU-s, over {:.1} s on {} CPUs {:.0} % busy \
             machine-wide",
            self.postgres_seconds,
            self.ebra_seconds,
            self.wall_seconds,
            self.cpus,
            self.machine_busy * 100.0
        )
    }
}

pub struct CpuMeter {
    started: Instant,
    ebra: f64,
    backends: HashMap<i32, f64>,
    machine: (u64, u64),
}

impl CpuMeter {
    pub async fn start(db: &BenchDatabase) -> anyhow::Result<Self> {
        Ok(Self {
            started: Instant::now(),
            ebra: process_cpu_seconds("self").unwrap_or(0.0),
            backends: backend_cpu(db).await?,
            machine: machine_ticks().unwrap_or((0, 0)),
        })
    }

    pub async fn stop(self, db: &BenchDatabase) -> anyhow::Result<CpuUse> {
        let wall_seconds = self.started.elapsed().as_secs_f64();
        let ebra = process_cpu_seconds("self").unwrap_or(0.0);
        let backends = backend_cpu(db).await?;
        let machine = machine_ticks().unwrap_or((0, 0));
        let postgres_seconds = backends
            .iter()
            .map(|(pid, now)| now - self.backends.get(pid).copied().unwrap_or(0.0))
            .sum();
        let (busy, total) = (
            machine.0.saturating_sub(self.machine.0),
            machine.1.saturating_sub(self.machine.1),
        );
        Ok(CpuUse {
            wall_seconds,
            ebra_seconds: ebra - self.ebra,
            postgres_seconds,
            machine_busy: if total == 0 {
                0.0
            } else {
                (busy as f64 / total as f64).min(1.0)
            },
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        })
    }
}

/// CPU seconds of each backend connected to the bench database.
async fn backend_cpu(db: &BenchDatabase) -> anyhow::Result<HashMap<i32, f64>> {
    let admin = super::harness::connect(&super::harness::admin_url()).await?;
    let rows = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1",
            &[&db.name],
        )
        .await
        .context("listing the bench database's backends")?;
    let mut cpu = HashMap::new();
    for row in rows {
        let pid: i32 = row.try_get(0)?;
        if let Some(seconds) = process_cpu_seconds(&pid.to_string()) {
            cpu.insert(pid, seconds);
        }
    }
    Ok(cpu)
}

/// utime + stime of `/proc/<pid>/stat`, in seconds.
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after its ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// (busy, total) ticks of all CPUs from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(process_cpu_seconds("self").is_some());
        let (busy, total) = machine_ticks().unwrap();
        assert!(busy <= total && total > 0);
    }
}
