//! Settings from the environment, read and validated once at start-up. A missing or
//! malformed value fails with a message that names the variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::domain::CallOutcome;
use crate::webhook_signature::WebhookSecret;

/// The path of the provider webhook, on the local listener and on the Function URL.
pub const WEBHOOK_PATH: &str = "/callbacks/call-status";

#[derive(Debug, thiserror::Error)]
#[error("configuration: {name} {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: problem.into(),
        }
    }
}

#[derive(Clone)]
pub struct Config {
    /// Postgres connection string (`DATABASE_URL`, or built from `DB_HOST`... ).
    pub database_url: String,
    /// The SQS calls queue (`CALLS_QUEUE_URL`). Required by every function that sends.
    pub calls_queue_url: Option<String>,
    pub global_concurrency: u32,
    pub base_retry_seconds: u64,
    pub max_attempts: u32,
    pub stale_inprog_seconds: u64,
    pub provider_base_url: Option<String>,
    pub use_simulator: bool,
    /// The URL handed to the provider as `webhookUrl`.
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<WebhookSecret>,
    pub api_token: Option<String>,
    pub port: u16,
    /// Provider outcomes that are redialed while attempts remain (`REDIAL_OUTCOMES`).
    pub redial_outcomes: Vec<CallOutcome>,
    /// PENDING calls older than this are EXPIRED (`MAX_PENDING_AGE_SECONDS`, off by default).
    pub max_pending_age_seconds: Option<u64>,
    /// The queue's redrive `maxReceiveCount`; a waiting message is re-sent fresh before
    /// it gets near it (invariant 6).
    pub max_receive_count: u32,
    /// How long a call waiting for a slot or a phone sleeps before it checks again, when no
    /// freed slot nudges it sooner.
    pub wait_recheck_seconds: u64,
    /// How long after its mark an unconfirmed outbox message is re-sent by the sweep.
    pub outbox_grace_seconds: u64,
    /// Timeout of one provider dial.
    pub dial_timeout: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("calls_queue_url", &self.calls_queue_url)
            .field("global_concurrency", &self.global_concurrency)
            .field("base_retry_seconds", &self.base_retry_seconds)
            .field("max_attempts", &self.max_attempts)
            .field("stale_inprog_seconds", &self.stale_inprog_seconds)
            .field("provider_base_url", &self.provider_base_url)
            .field("use_simulator", &self.use_simulator)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<set>"),
            )
            .field("api_token", &self.api_token.as_ref().map(|_| "<set>"))
            .field("port", &self.port)
            .field("redial_outcomes", &self.redial_outcomes)
            .field("max_pending_age_seconds", &self.max_pending_age_seconds)
            .field("max_receive_count", &self.max_receive_count)
            .field("wait_recheck_seconds", &self.wait_recheck_seconds)
            .field("outbox_grace_seconds", &self.outbox_grace_seconds)
            .field("dial_timeout", &self.dial_timeout)
            .finish()
    }
}

/// The URL with its password hidden, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_lookup(|name| vars.get(name).cloned())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests). Empty values
    /// count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let env = Env { get: &get };

        let database_url = match get("DATABASE_URL") {
            Some(url) => url,
            None => database_url_from_parts(&env)?,
        };

        let global_concurrency = env.parse_in_range("GLOBAL_CONCURRENCY", 30, 1..=10_000)?;
        let max_attempts = env.parse_in_range("MAX_ATTEMPTS", 3, 1..=100)?;
        let base_retry_seconds = env.parse_in_range("BASE_RETRY_SECONDS", 30, 0..=86_400)?;
        let stale_inprog_seconds = env.parse_in_range("STALE_INPROG_SECONDS", 900, 1..=604_800)?;
        let max_receive_count = env.parse_in_range("MAX_RECEIVE_COUNT", 10, 2..=1000)?;
        let wait_recheck_seconds = env.parse_in_range("WAIT_RECHECK_SECONDS", 300, 1..=43_200)?;
        let outbox_grace_seconds = env.parse_in_range("OUTBOX_GRACE_SECONDS", 60, 1..=86_400)?;
        let dial_timeout_ms = env.parse_in_range("DIAL_TIMEOUT_MS", 10_000, 100..=120_000)?;
        let port = env.parse_in_range("PORT", 3000u16, 0..=65_535)?;
        let use_simulator = env.parse_bool("USE_SIMULATOR", true)?;

        let provider_base_url = get("PROVIDER_BASE_URL")
            .map(|url| parse_http_url("PROVIDER_BASE_URL", &url))
            .transpose()?
            .map(|url| url.trim_end_matches('/').to_owned());
        if !use_simulator && provider_base_url.is_none() {
            return Err(ConfigError::new(
                "PROVIDER_BASE_URL",
                "is required when USE_SIMULATOR=false",
            ));
        }

        let webhook_url = match get("WEBHOOK_URL") {
            Some(url) => Some(parse_http_url("WEBHOOK_URL", &url)?),
            None => get("PUBLIC_BASE_URL")
                .map(|base| parse_http_url("PUBLIC_BASE_URL", &base))
                .transpose()?
                .map(|base| format!("{}{WEBHOOK_PATH}", base.trim_end_matches('/'))),
        };

        let webhook_secret = get("WEBHOOK_SECRET")
            .map(|raw| {
                WebhookSecret::parse(&raw)
                    .map_err(|e| ConfigError::new("WEBHOOK_SECRET", e.to_string()))
            })
            .transpose()?;

        let calls_queue_url = get("CALLS_QUEUE_URL")
            .map(|url| parse_http_url("CALLS_QUEUE_URL", &url))
            .transpose()?;

        let redial_outcomes = match get("REDIAL_OUTCOMES") {
            None => vec![CallOutcome::Busy, CallOutcome::NoAnswer],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<CallOutcome>().map_err(|_| {
                        ConfigError::new(
                            "REDIAL_OUTCOMES",
                            format!("has {s:?}; expected a comma-separated list of COMPLETED, FAILED, BUSY, NO_ANSWER"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let max_pending_age_seconds = match get("MAX_PENDING_AGE_SECONDS") {
            None => None,
            Some(_) => Some(env.parse_in_range("MAX_PENDING_AGE_SECONDS", 0, 1..=31_536_000)?),
        };

        Ok(Self {
            database_url,
            calls_queue_url,
            global_concurrency,
            base_retry_seconds,
            max_attempts,
            stale_inprog_seconds,
            provider_base_url,
            use_simulator,
            webhook_url,
            webhook_secret,
            api_token: get("API_TOKEN"),
            port,
            redial_outcomes,
            max_pending_age_seconds,
            max_receive_count,
            wait_recheck_seconds,
            outbox_grace_seconds,
            dial_timeout: Duration::from_millis(dial_timeout_ms),
        })
    }

    /// The calls queue URL, or an error naming the variable.
    pub fn require_calls_queue_url(&self) -> Result<&str, ConfigError> {
        self.calls_queue_url
            .as_deref()
            .ok_or_else(|| ConfigError::new("CALLS_QUEUE_URL", "is required"))
    }

    pub fn require_webhook_secret(&self) -> Result<&WebhookSecret, ConfigError> {
        self.webhook_secret
            .as_ref()
            .ok_or_else(|| ConfigError::new("WEBHOOK_SECRET", "is required (whsec_<base64 key>)"))
    }

    pub fn require_webhook_url(&self) -> Result<&str, ConfigError> {
        self.webhook_url.as_deref().ok_or_else(|| {
            ConfigError::new(
                "WEBHOOK_URL",
                "is required (or PUBLIC_BASE_URL to derive it)",
            )
        })
    }
}

struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn parse_in_range<T>(
        &self,
        name: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = (self.get)(name) else {
            return Ok(default);
        };
        let value: T = raw
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(name, format!("must be a whole number, got {raw:?}")))?;
        if !range.contains(&value) {
            return Err(ConfigError::new(
                name,
                format!(
                    "must be between {} and {}, got {value}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(value)
    }

    fn parse_bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match (self.get)(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::new(
                name,
                format!("must be true or false, got {v:?}"),
            )),
        }
    }
}

fn database_url_from_parts(env: &Env<'_>) -> Result<String, ConfigError> {
    let host = (env.get)("DB_HOST").ok_or_else(|| {
        ConfigError::new(
            "DATABASE_URL",
            "is required (or DB_HOST, DB_PORT, DB_USER, DB_PASS, DB_NAME)",
        )
    })?;
    let port: u16 = env.parse_in_range("DB_PORT", 5432u16, 1..=65_535)?;
    let user = (env.get)("DB_USER").unwrap_or_else(|| "postgres".to_owned());
    let name = (env.get)("DB_NAME").unwrap_or_else(|| "ebra".to_owned());
    let pass = (env.get)("DB_PASS");
    let mut url = format!("postgres://{}", percent_encode(&user));
    if let Some(pass) = pass {
        url.push(':');
        url.push_str(&percent_encode(&pass));
    }
    url.push_str(&format!("@{host}:{port}/{}", percent_encode(&name)));
    Ok(url)
}

fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse_http_url(name: &'static str, raw: &str) -> Result<String, ConfigError> {
    let raw = raw.trim();
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .ok_or_else(|| ConfigError::new(name, format!("must be an http(s) URL, got {raw:?}")))?;
    if rest.is_empty() || rest.starts_with('/') || raw.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            name,
            format!("must be an http(s) URL with a host, got {raw:?}"),
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = config(&[("DATABASE_URL", "postgres://localhost/ebra")]).unwrap();
        assert_eq!(c.global_concurrency, 30);
        assert_eq!(c.base_retry_seconds, 30);
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.stale_inprog_seconds, 900);
        assert_eq!(c.port, 3000);
        assert!(c.use_simulator);
    }

    #[test]
    fn database_url_from_seed_parts() {
        let c = config(&[
            ("DB_HOST", "db"),
            ("DB_USER", "u"),
            ("DB_PASS", "p@ss"),
            ("DB_NAME", "calls"),
        ])
        .unwrap();
        assert_eq!(c.database_url, "postgres://u:p%40ss@db:5432/calls");
        assert!(!format!("{c:?}").contains("p%40ss"));
    }

    #[test]
    fn errors_name_the_variable() {
        let err = config(&[]).unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
        let err = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("GLOBAL_CONCURRENCY", "lots"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "GLOBAL_CONCURRENCY");
        let err = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("GLOBAL_CONCURRENCY", "0"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "GLOBAL_CONCURRENCY");
        let err = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("USE_SIMULATOR", "false"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "PROVIDER_BASE_URL");
        let err = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("WEBHOOK_SECRET", "nope"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "WEBHOOK_SECRET");
        let err = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("REDIAL_OUTCOMES", "BUSY,MAYBE"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "REDIAL_OUTCOMES");
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn webhook_url_derives_from_public_base_url() {
        let c = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("PUBLIC_BASE_URL", "https://ebra.example.com/"),
        ])
        .unwrap();
        assert_eq!(
            c.webhook_url.as_deref(),
            Some("https://ebra.example.com/callbacks/call-status")
        );
    }
}
