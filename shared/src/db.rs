//! The Postgres pool and the schema migrations (refinery, SQL files in `migrations/`).
//!
//! TLS: with `sslmode=require` in `DATABASE_URL` the connection is encrypted with rustls and
//! the server's certificate is verified against the system's roots (enough for RDS Proxy,
//! whose certificates are public) plus the PEM bundle at `DB_CA_CERT_FILE` when set (the RDS
//! CA bundle, for a direct RDS connection). Without it (local Postgres), no TLS.

use anyhow::Context as _;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType, Timeouts,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Builds a small pool. No connection is opened until the first query, so a Lambda's init
/// stays free of network round trips.
pub fn pool(database_url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let ca_file = std::env::var_os("DB_CA_CERT_FILE").filter(|p| !p.is_empty());
    pool_with_ca_file(
        database_url,
        max_size,
        ca_file.as_deref().map(std::path::Path::new),
    )
}

/// [`pool`], with the extra CA bundle given rather than read from `DB_CA_CERT_FILE`.
pub fn pool_with_ca_file(
    database_url: &str,
    max_size: usize,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Pool> {
    let mut pg_config: tokio_postgres::Config = database_url
        .parse()
        .context("DATABASE_URL is not a valid Postgres connection string")?;
    // A database that never answers (firewalled, not refusing) must fail a request, not
    // hang it until the Lambda's own timeout.
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(Duration::from_secs(5));
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match pg_config.get_ssl_mode() {
        SslMode::Require => {
            Manager::from_config(pg_config, tls_connector(ca_file)?, manager_config)
        }
        _ => Manager::from_config(pg_config, NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_secs(10)),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        })
        .build()
        .context("building the Postgres pool")
}

/// The tables a call's way through Ebra reads and writes: [`warm_up`] loads their catalog
/// entries (and their indexes') into each connection's cache.
const HOT_TABLES: [&str; 7] = [
    "calls",
    "call_slots",
    "call_attempts",
    "call_events",
    "provider_webhooks",
    "suppressions",
    "campaigns",
];

/// Opens every connection of `pool` at once and has each plan a read of the tables a call
/// goes through, so that the first requests a long-running process serves (`ebra dev`) do
/// not queue behind connecting and behind each new backend loading the catalog (a new
/// connection's first read of them took 2.1–4.6 ms, later ones 0.37–0.55 ms). A Lambda
/// function keeps [`pool`]'s lazy connection, so that its init stays free of round trips.
pub async fn warm_up(pool: &Pool) -> anyhow::Result<()> {
    let warm_sql: String = HOT_TABLES
        .iter()
        .map(|table| format!("SELECT FROM {table} LIMIT 0;"))
        .collect();
    // Without waiting: a connection already in use is left to its user.
    let at_once = Timeouts::wait_millis(0);
    let connections = (0..pool.status().max_size).map(|_| async {
        let client = match pool.timeout_get(&at_once).await {
            Ok(client) => client,
            Err(PoolError::Timeout(TimeoutType::Wait)) => return Ok(None),
            Err(error) => return Err(error).context("opening a pooled connection"),
        };
        client
            .batch_execute(&warm_sql)
            .await
            .context("warming a pooled connection")?;
        // Held until every connection is open, so that each is a different one.
        anyhow::Ok(Some(client))
    });
    let warmed = futures::future::try_join_all(connections).await?;
    drop(warmed);
    Ok(())
}

/// A rustls connector that verifies the server against the system roots and
/// `DB_CA_CERT_FILE`.
fn tls_connector(ca_file: Option<&std::path::Path>) -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("configuration: DB_CA_CERT_FILE {path:?} cannot be read"))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| {
                format!("configuration: DB_CA_CERT_FILE {path:?} is not a PEM bundle")
            })?;
        for cert in certs {
            roots.add(cert).with_context(|| {
                format!("configuration: DB_CA_CERT_FILE {path:?} has an unusable certificate")
            })?;
        }
    } else if added == 0 {
        anyhow::bail!("sslmode=require but no CA certificates were found: install the system's CA bundle or set DB_CA_CERT_FILE");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS for Postgres")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The pool size for this process: `DB_POOL_SIZE`, else `default`.
pub fn pool_size_from_env(default: usize) -> anyhow::Result<usize> {
    match std::env::var("DB_POOL_SIZE") {
        Ok(raw) if !raw.trim().is_empty() => {
            let size: usize = raw
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .with_context(|| {
                    format!("configuration: DB_POOL_SIZE must be between 1 and 1000, got {raw:?}")
                })?;
            Ok(size)
        }
        _ => Ok(default),
    }
}

/// Applies every pending migration, under an advisory lock so concurrent starters agree.
pub async fn migrate(pool: &Pool) -> anyhow::Result<usize> {
    let mut client = pool
        .get()
        .await
        .context("connecting to Postgres to migrate")?;
    client
        .execute("SELECT pg_advisory_lock(7219470301)", &[])
        .await
        .context("taking the migration lock")?;
    let client_ref: &mut tokio_postgres::Client = &mut client;
    let result = embedded::migrations::runner()
        .run_async(client_ref)
        .await
        .context("applying migrations");
    client
        .execute("SELECT pg_advisory_unlock(7219470301)", &[])
        .await
        .context("releasing the migration lock")?;
    Ok(result?.applied_migrations().len())
}

/// Creates the database named in `database_url` if it does not exist, connecting to the
/// server's `postgres` database to do so. Used by `ebra dev` and the tests.
pub async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    let config: tokio_postgres::Config = database_url
        .parse()
        .context("DATABASE_URL is not a valid Postgres connection string")?;
    let name = config
        .get_dbname()
        .context("DATABASE_URL names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to Postgres at {}", describe(&config)))?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("looking up the database")?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Someone else created it between our check and our create.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Host and port of a connection config, for error messages (never the password).
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}
