//! Postgres for the local stack: the server at `DATABASE_URL` when it answers; otherwise,
//! when the Postgres server binaries are installed, a private throwaway cluster started
//! here and removed at shutdown.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// Where `ebra dev` looks when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ebra";

pub struct LocalPostgres {
    pub database_url: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    as_postgres_user: bool,
}

impl LocalPostgres {
    pub async fn start_or_connect(database_url: Option<String>) -> anyhow::Result<Self> {
        let url = database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        match tokio::time::timeout(
            Duration::from_secs(5),
            ebra_shared::db::ensure_database(&url),
        )
        .await
        {
            Ok(Ok(())) => {
                return Ok(Self {
                    database_url: url,
                    cluster: None,
                })
            }
            Ok(Err(error)) => {
                tracing::info!(error = format!("{error:#}"), "no Postgres at DATABASE_URL")
            }
            Err(_) => tracing::info!("Postgres at DATABASE_URL did not answer within 5 s"),
        }
        let Some(bin_dir) = find_server_binaries() else {
            bail!(
                "no Postgres answers at {url} and the Postgres server binaries (initdb, pg_ctl) are not installed.\n\
                 Start a Postgres server and set DATABASE_URL, or install one (e.g. `apt-get install postgresql`)."
            );
        };
        let (cluster, port) = Cluster::start(bin_dir).await?;
        let database_url = format!("postgres://postgres@127.0.0.1:{port}/ebra");
        let local = Self {
            database_url,
            cluster: Some(cluster),
        };
        ebra_shared::db::ensure_database(&local.database_url)
            .await
            .context("creating the database in the throwaway cluster")?;
        Ok(local)
    }

    pub fn started_here(&self) -> bool {
        self.cluster.is_some()
    }

    pub async fn stop(mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop().await;
        }
    }
}

fn find_server_binaries() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .collect();
    candidates.sort();
    candidates.reverse();
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    candidates.push(PathBuf::from("/usr/bin"));
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

impl Cluster {
    async fn start(bin_dir: PathBuf) -> anyhow::Result<(Self, u16)> {
        let port = super::sqs::free_port()?;
        let data_dir =
            std::env::temp_dir().join(format!("ebra-dev-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir).context("creating the throwaway cluster's directory")?;
        // initdb refuses to run as root: hand the directory to the postgres user.
        let as_postgres_user = is_root();
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data_dir)
                .status()
                .await
                .context("chown of the cluster directory")?;
            if !status.success() {
                bail!("could not give {} to the postgres user", data_dir.display());
            }
        }
        let cluster = Self {
            bin_dir,
            data_dir,
            as_postgres_user,
        };
        let pgdata = cluster.data_dir.join("data");
        cluster
            .run(
                "initdb",
                &[
                    "-D",
                    path(&pgdata),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ],
            )
            .await?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            cluster.data_dir.display()
        );
        cluster
            .run(
                "pg_ctl",
                &[
                    "-D",
                    path(&pgdata),
                    "-o",
                    &options,
                    "-l",
                    path(&cluster.data_dir.join("log")),
                    "-w",
                    "start",
                ],
            )
            .await?;
        tracing::info!(port, dir = %cluster.data_dir.display(), "started a throwaway Postgres cluster");
        Ok((cluster, port))
    }

    async fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin_dir.join(tool);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{tool} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    async fn stop(self) {
        let pgdata = self.data_dir.join("data");
        if let Err(error) = self
            .run("pg_ctl", &["-D", path(&pgdata), "-m", "fast", "-w", "stop"])
            .await
        {
            tracing::warn!(
                error = format!("{error:#}"),
                "stopping the throwaway Postgres cluster"
            );
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
