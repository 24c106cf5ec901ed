//! `sslmode=require` connects over TLS and verifies the server: against the local Postgres,
//! whose Debian default is `ssl = on` with the "snakeoil" certificate for `localhost`.

use std::path::Path;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn tls_url() -> String {
    tls_url_for("localhost")
}

fn tls_url_for(host: &str) -> String {
    let port = std::env::var("TEST_DATABASE_URL")
        .ok()
        .and_then(|u| {
            u.rsplit_once(':')
                .map(|(_, rest)| rest.split('/').next().unwrap_or("5432").to_owned())
        })
        .unwrap_or_else(|| "5432".to_owned());
    format!("postgres://postgres@{host}:{port}/postgres?sslmode=require")
}

fn require_snakeoil() {
    assert!(
        Path::new(SNAKEOIL).is_file(),
        "this test needs the local Postgres to serve TLS with {SNAKEOIL} (Debian's default: ssl = on)"
    );
}

#[tokio::test]
async fn sslmode_require_connects_over_verified_tls() {
    require_snakeoil();
    let pool = ebra_shared::db::pool_with_ca_file(&tls_url(), 1, Some(Path::new(SNAKEOIL)))
        .expect("building the pool");
    let client = pool
        .get()
        .await
        .expect("a TLS connection to the local Postgres (is ssl = on?)");
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("reading pg_stat_ssl");
    assert!(row.get::<_, bool>(0), "the connection is not encrypted");
}

#[tokio::test]
async fn sslmode_require_refuses_a_server_it_cannot_verify() {
    require_snakeoil();
    // The certificate names `localhost`; reached as 127.0.0.1 the server cannot prove who it
    // is, and is refused even though its certificate is trusted.
    let pool =
        ebra_shared::db::pool_with_ca_file(&tls_url_for("127.0.0.1"), 1, Some(Path::new(SNAKEOIL)))
            .expect("building the pool");
    let Err(error) = pool.get().await else {
        panic!("an unverifiable server must be refused");
    };
    let text = format!("{error:?}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("Tls") || text.contains("tls"),
        "{text}"
    );
}

#[test]
fn a_missing_ca_file_is_a_configuration_error() {
    let Err(error) =
        ebra_shared::db::pool_with_ca_file(&tls_url(), 1, Some(Path::new("/nonexistent/ca.pem")))
    else {
        panic!("a missing CA file must fail at start");
    };
    assert!(
        format!("{error:#}").contains("DB_CA_CERT_FILE"),
        "{error:#}"
    );
}
