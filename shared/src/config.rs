//! Settings from the environment, read and validated once at start-up. A missing or
//! malformed value fails with a message that names the variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::domain::{CallOutcome, PhoneNumber};
use crate::provider::elevenlabs::ElevenLabsSettings;
use crate::provider::retell::RetellSettings;
use crate::provider::twilio::TwilioSettings;
use crate::provider::vapi::{VapiSettings, VapiWebhookSecret};
use crate::provider::ProviderKind;
use crate::rules::CallingWindow;
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
    /// The provider Ebra dials (`PROVIDER`) and its settings.
    pub provider: ProviderSettings,
    /// The URL handed to the generic provider as `webhookUrl` (`WEBHOOK_URL`, or derived
    /// from `PUBLIC_BASE_URL`).
    pub webhook_url: Option<String>,
    /// The public base URL of the webhook function (`PUBLIC_BASE_URL`, or `WEBHOOK_URL`
    /// without its path): each provider's route hangs off it.
    pub webhook_base_url: Option<String>,
    /// The secrets of the webhook routes: each route is served when its secret is set.
    pub webhook_credentials: WebhookCredentials,
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
    /// Outbound events: where the notifier is nudged, which URLs may receive them, how
    /// they are retried.
    pub events: EventSettings,
    /// Calling rules (issue 14): the default window and the daily cap per number.
    pub calling_rules: CallingRuleSettings,
}

/// The deployment's calling rules.
#[derive(Debug, Clone, Default)]
pub struct CallingRuleSettings {
    /// `CALL_WINDOW`: the window of calls that have none of their own (JSON, like a call's
    /// `window`). Unset: any time.
    pub default_window: Option<CallingWindow>,
    /// `MAX_DIALS_PER_NUMBER_PER_DAY`: dials to one number in any rolling 24 h, across
    /// calls. Unset: no cap.
    pub max_dials_per_number_per_day: Option<u32>,
}

impl CallingRuleSettings {
    fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let default_window = settings
            .get("CALL_WINDOW")
            .map(|raw| {
                let value: serde_json::Value = serde_json::from_str(&raw).map_err(|e| {
                    ConfigError::new(
                        "CALL_WINDOW",
                        format!("is not JSON ({e}); expected {{\"start\": \"09:00\", \"end\": \"20:00\", \"days\": [\"mon\", ...]}}"),
                    )
                })?;
                CallingWindow::parse("CALL_WINDOW", &value)
                    .map_err(|invalid| ConfigError::new("CALL_WINDOW", invalid.message))
            })
            .transpose()?;
        let max_dials_per_number_per_day = match settings.get("MAX_DIALS_PER_NUMBER_PER_DAY") {
            None => None,
            Some(_) => {
                Some(settings.parse_in_range("MAX_DIALS_PER_NUMBER_PER_DAY", 0u32, 1..=10_000)?)
            }
        };
        Ok(Self {
            default_window,
            max_dials_per_number_per_day,
        })
    }
}

/// The settings of outbound events (issue 17).
#[derive(Clone)]
pub struct EventSettings {
    /// The notifier's queue (`EVENTS_QUEUE_URL`): functions that write events nudge it.
    pub queue_url: Option<String>,
    /// `ALLOW_PRIVATE_WEBHOOK_URLS`: lets events go to private, loopback and link-local
    /// addresses (`ebra dev` sets it; never in production).
    pub allow_private_urls: bool,
    /// `CALLBACK_SECRET`: signs the events sent to a call's own `callbackUrl`.
    pub callback_secret: Option<WebhookSecret>,
    /// `EVENT_RETRY_BASE_SECONDS`: the first retry's delay; each next one doubles.
    pub retry_base: Duration,
    /// `EVENT_RETRY_MAX_SECONDS`: the longest delay between two attempts.
    pub retry_max: Duration,
    /// `EVENT_RETRY_WINDOW_SECONDS`: how long a delivery is retried before it is FAILED
    /// (at least 24 h by default).
    pub retry_window: Duration,
    /// `ENDPOINT_DISABLE_AFTER_SECONDS`: an endpoint failing for this long is disabled.
    pub disable_after: Duration,
    /// `EVENT_DELIVERY_TIMEOUT_MS`: one attempt's timeout.
    pub delivery_timeout: Duration,
}

impl fmt::Debug for EventSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSettings")
            .field("queue_url", &self.queue_url)
            .field("allow_private_urls", &self.allow_private_urls)
            .field(
                "callback_secret",
                &self.callback_secret.as_ref().map(|_| "<set>"),
            )
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("retry_window", &self.retry_window)
            .field("disable_after", &self.disable_after)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish()
    }
}

impl EventSettings {
    fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let seconds = |name: &'static str, default: u64, range: std::ops::RangeInclusive<u64>| {
            settings
                .parse_in_range(name, default, range)
                .map(Duration::from_secs)
        };
        let retry_base = seconds("EVENT_RETRY_BASE_SECONDS", 5, 0..=3_600)?;
        let retry_max = seconds("EVENT_RETRY_MAX_SECONDS", 7_200, 1..=86_400)?;
        if retry_max < retry_base {
            return Err(ConfigError::new(
                "EVENT_RETRY_MAX_SECONDS",
                "must not be below EVENT_RETRY_BASE_SECONDS",
            ));
        }
        Ok(Self {
            queue_url: settings
                .get("EVENTS_QUEUE_URL")
                .map(|url| parse_http_url("EVENTS_QUEUE_URL", &url))
                .transpose()?,
            allow_private_urls: settings.parse_bool("ALLOW_PRIVATE_WEBHOOK_URLS", false)?,
            callback_secret: settings
                .get("CALLBACK_SECRET")
                .map(|raw| {
                    WebhookSecret::parse(&raw)
                        .map_err(|e| ConfigError::new("CALLBACK_SECRET", e.to_string()))
                })
                .transpose()?,
            retry_base,
            retry_max,
            retry_window: seconds("EVENT_RETRY_WINDOW_SECONDS", 86_400, 1..=2_592_000)?,
            disable_after: seconds("ENDPOINT_DISABLE_AFTER_SECONDS", 432_000, 1..=31_536_000)?,
            delivery_timeout: Duration::from_millis(settings.parse_in_range(
                "EVENT_DELIVERY_TIMEOUT_MS",
                5_000,
                100..=15_000,
            )?),
        })
    }
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
            .field("provider", &self.provider)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_base_url", &self.webhook_base_url)
            .field("webhook_credentials", &self.webhook_credentials)
            .field("api_token", &self.api_token.as_ref().map(|_| "<set>"))
            .field("port", &self.port)
            .field("redial_outcomes", &self.redial_outcomes)
            .field("max_pending_age_seconds", &self.max_pending_age_seconds)
            .field("max_receive_count", &self.max_receive_count)
            .field("wait_recheck_seconds", &self.wait_recheck_seconds)
            .field("outbox_grace_seconds", &self.outbox_grace_seconds)
            .field("dial_timeout", &self.dial_timeout)
            .field("events", &self.events)
            .field("calling_rules", &self.calling_rules)
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
        let env = Settings { get: &get };

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
        let provider = ProviderSettings::from_settings(&env)?;

        let public_base_url = get("PUBLIC_BASE_URL")
            .map(|base| parse_http_url("PUBLIC_BASE_URL", &base))
            .transpose()?
            .map(|base| base.trim_end_matches('/').to_owned());
        let webhook_url = match get("WEBHOOK_URL") {
            Some(url) => Some(parse_http_url("WEBHOOK_URL", &url)?),
            None => public_base_url
                .as_ref()
                .map(|base| format!("{base}{WEBHOOK_PATH}")),
        };
        let webhook_base_url = public_base_url.or_else(|| {
            webhook_url
                .as_deref()
                .and_then(|url| url.strip_suffix(WEBHOOK_PATH))
                .map(str::to_owned)
        });

        let webhook_credentials = WebhookCredentials::from_settings(&env)?;
        if let Some(name) = webhook_credentials.missing_for(provider.kind()) {
            return Err(ConfigError::new(
                name,
                format!(
                    "is required with PROVIDER={}: it authenticates the provider's webhooks",
                    provider.kind()
                ),
            ));
        }

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
                            format!("has {s:?}; expected a comma-separated list of COMPLETED, FAILED, BUSY, NO_ANSWER, VOICEMAIL, CANCELED"),
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
            provider,
            webhook_url,
            webhook_base_url,
            webhook_credentials,
            api_token: get("API_TOKEN"),
            port,
            redial_outcomes,
            max_pending_age_seconds,
            max_receive_count,
            wait_recheck_seconds,
            outbox_grace_seconds,
            dial_timeout: Duration::from_millis(dial_timeout_ms),
            events: EventSettings::from_settings(&env)?,
            calling_rules: CallingRuleSettings::from_settings(&env)?,
        })
    }

    /// The calls queue URL, or an error naming the variable.
    pub fn require_calls_queue_url(&self) -> Result<&str, ConfigError> {
        self.calls_queue_url
            .as_deref()
            .ok_or_else(|| ConfigError::new("CALLS_QUEUE_URL", "is required"))
    }

    pub fn require_webhook_secret(&self) -> Result<&WebhookSecret, ConfigError> {
        self.webhook_credentials
            .standard
            .as_ref()
            .ok_or_else(|| ConfigError::new("WEBHOOK_SECRET", "is required (whsec_<base64 key>)"))
    }

    /// Where `kind`'s provider reports: the generic route's `WEBHOOK_URL`, or the provider's
    /// route on the public base URL.
    pub fn callback_url(&self, kind: ProviderKind) -> Option<String> {
        match kind {
            ProviderKind::Simulator | ProviderKind::Http => self.webhook_url.clone(),
            other => self
                .webhook_base_url
                .as_ref()
                .map(|base| format!("{base}{}", other.webhook_path())),
        }
    }

    /// [`Self::callback_url`] for the configured provider, or an error naming the setting.
    pub fn require_callback_url(&self) -> Result<String, ConfigError> {
        let kind = self.provider.kind();
        self.callback_url(kind).ok_or_else(|| match kind {
            ProviderKind::Simulator | ProviderKind::Http => ConfigError::new(
                "WEBHOOK_URL",
                "is required (or PUBLIC_BASE_URL to derive it)",
            ),
            _ => ConfigError::new(
                "PUBLIC_BASE_URL",
                format!(
                    "is required with PROVIDER={kind} (the webhook function's public URL; WEBHOOK_URL ending in {WEBHOOK_PATH} also gives it)"
                ),
            ),
        })
    }
}

/// Which provider Ebra dials, with that provider's own settings, each read and checked by
/// its module (`RETELL_*`, `VAPI_*`, `TWILIO_*`, `ELEVENLABS_*`).
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    Simulator,
    Http { base_url: String },
    Retell(RetellSettings),
    Vapi(VapiSettings),
    Twilio(TwilioSettings),
    ElevenLabs(ElevenLabsSettings),
}

impl ProviderSettings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderSettings::Simulator => ProviderKind::Simulator,
            ProviderSettings::Http { .. } => ProviderKind::Http,
            ProviderSettings::Retell(_) => ProviderKind::Retell,
            ProviderSettings::Vapi(_) => ProviderKind::Vapi,
            ProviderSettings::Twilio(_) => ProviderKind::Twilio,
            ProviderSettings::ElevenLabs(_) => ProviderKind::ElevenLabs,
        }
    }

    /// `PROVIDER`, with `USE_SIMULATOR` kept as an alias (`true` = simulator, `false` =
    /// http); both set and disagreeing is refused.
    fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let named = settings
            .get("PROVIDER")
            .map(|raw| {
                raw.parse::<ProviderKind>().map_err(|()| {
                    ConfigError::new(
                        "PROVIDER",
                        format!(
                            "must be one of simulator, http, retell, vapi, twilio, elevenlabs; got {raw:?}"
                        ),
                    )
                })
            })
            .transpose()?;
        let alias = match settings.get("USE_SIMULATOR") {
            None => None,
            Some(_) => Some(if settings.parse_bool("USE_SIMULATOR", true)? {
                ProviderKind::Simulator
            } else {
                ProviderKind::Http
            }),
        };
        // USE_SIMULATOR=false only says "not the simulator", which any real provider is.
        let contradicts = |named: ProviderKind, alias: ProviderKind| {
            (alias == ProviderKind::Simulator) != (named == ProviderKind::Simulator)
        };
        let kind = match (named, alias) {
            (Some(named), Some(alias)) if contradicts(named, alias) => {
                return Err(ConfigError::new(
                    "USE_SIMULATOR",
                    format!("contradicts PROVIDER={named}; set only PROVIDER"),
                ))
            }
            (Some(named), _) => named,
            (None, Some(alias)) => alias,
            (None, None) => ProviderKind::Simulator,
        };
        Ok(match kind {
            ProviderKind::Simulator => ProviderSettings::Simulator,
            ProviderKind::Http => ProviderSettings::Http {
                base_url: settings.get("PROVIDER_BASE_URL").map_or_else(
                    || {
                        Err(ConfigError::new(
                            "PROVIDER_BASE_URL",
                            "is required with PROVIDER=http (or USE_SIMULATOR=false)",
                        ))
                    },
                    |url| {
                        parse_http_url("PROVIDER_BASE_URL", &url)
                            .map(|url| url.trim_end_matches('/').to_owned())
                    },
                )?,
            },
            ProviderKind::Retell => {
                ProviderSettings::Retell(RetellSettings::from_settings(settings)?)
            }
            ProviderKind::Vapi => ProviderSettings::Vapi(VapiSettings::from_settings(settings)?),
            ProviderKind::Twilio => {
                ProviderSettings::Twilio(TwilioSettings::from_settings(settings)?)
            }
            ProviderKind::ElevenLabs => {
                ProviderSettings::ElevenLabs(ElevenLabsSettings::from_settings(settings)?)
            }
        })
    }
}

/// The secrets that authenticate each webhook route. A route is served when its secret is
/// set, whichever provider dials: calls placed before a switch of `PROVIDER` still settle.
#[derive(Clone, Default)]
pub struct WebhookCredentials {
    /// `WEBHOOK_SECRET`: Standard Webhooks, `/callbacks/call-status` (http, simulator).
    pub standard: Option<WebhookSecret>,
    /// `RETELL_API_KEY`: Retell signs with the API key.
    pub retell: Option<String>,
    /// `VAPI_WEBHOOK_SECRET`.
    pub vapi: Option<VapiWebhookSecret>,
    /// `TWILIO_AUTH_TOKEN` (Twilio signs with it), then any `TWILIO_WEBHOOK_SHARED_KEYS`
    /// (space-separated webhook shared keys, HMAC-SHA256).
    pub twilio: Option<Vec<String>>,
    /// `ELEVENLABS_WEBHOOK_SECRET`.
    pub elevenlabs: Option<String>,
}

impl fmt::Debug for WebhookCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |present: bool| if present { "<set>" } else { "-" };
        f.debug_struct("WebhookCredentials")
            .field("standard", &set(self.standard.is_some()))
            .field("retell", &set(self.retell.is_some()))
            .field("vapi", &set(self.vapi.is_some()))
            .field("twilio", &set(self.twilio.is_some()))
            .field("elevenlabs", &set(self.elevenlabs.is_some()))
            .finish()
    }
}

impl WebhookCredentials {
    fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            standard: settings
                .get("WEBHOOK_SECRET")
                .map(|raw| {
                    WebhookSecret::parse(&raw)
                        .map_err(|e| ConfigError::new("WEBHOOK_SECRET", e.to_string()))
                })
                .transpose()?,
            retell: settings.get("RETELL_API_KEY"),
            vapi: settings
                .get("VAPI_WEBHOOK_SECRET")
                .map(|raw| {
                    VapiWebhookSecret::parse(&raw)
                        .map_err(|message| ConfigError::new("VAPI_WEBHOOK_SECRET", message))
                })
                .transpose()?,
            twilio: settings.get("TWILIO_AUTH_TOKEN").map(|token| {
                std::iter::once(token.trim().to_owned())
                    .chain(
                        settings
                            .get("TWILIO_WEBHOOK_SHARED_KEYS")
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_owned),
                    )
                    .collect()
            }),
            elevenlabs: settings.get("ELEVENLABS_WEBHOOK_SECRET"),
        })
    }

    /// The variable whose secret the route of `kind` needs and lacks.
    fn missing_for(&self, kind: ProviderKind) -> Option<&'static str> {
        match kind {
            // The simulator signs its reports with WEBHOOK_SECRET; `ebra dev` generates one.
            ProviderKind::Simulator | ProviderKind::Http => None,
            ProviderKind::Retell => self.retell.is_none().then_some("RETELL_API_KEY"),
            ProviderKind::Vapi => self.vapi.is_none().then_some("VAPI_WEBHOOK_SECRET"),
            ProviderKind::Twilio => self.twilio.is_none().then_some("TWILIO_AUTH_TOKEN"),
            ProviderKind::ElevenLabs => self
                .elevenlabs
                .is_none()
                .then_some("ELEVENLABS_WEBHOOK_SECRET"),
        }
    }
}

/// Reads settings by name, each method failing with an error that names the variable.
/// Provider modules read their own variables through it.
pub struct Settings<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Settings<'a> {
    /// Settings read through `get` (empty values count as unset).
    pub fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { get }
    }

    /// A value, when set.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    /// A required value, trimmed.
    pub fn require(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| ConfigError::new(name, "is required"))
    }

    /// A required secret (an API key or a token): no whitespace inside.
    pub fn require_secret(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.require(name)?;
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                name,
                "must not contain spaces or control characters",
            ));
        }
        Ok(value)
    }

    /// A required phone number, in E.164.
    pub fn require_phone(&self, name: &'static str) -> Result<String, ConfigError> {
        let raw = self.require(name)?;
        PhoneNumber::parse(&raw)
            .map(|phone| phone.as_str().to_owned())
            .map_err(|invalid| ConfigError::new(name, invalid.message))
    }

    /// A required http(s) URL.
    pub fn require_url(&self, name: &'static str) -> Result<String, ConfigError> {
        parse_http_url(name, &self.require(name)?)
    }

    /// An API base URL (`default` when unset), without a trailing slash.
    pub fn base_url(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let url = match self.get(name) {
            Some(url) => parse_http_url(name, &url)?,
            None => default.to_owned(),
        };
        Ok(url.trim_end_matches('/').to_owned())
    }

    pub fn parse_in_range<T>(
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

    pub fn parse_bool(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
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

fn database_url_from_parts(env: &Settings<'_>) -> Result<String, ConfigError> {
    let host = env.get("DB_HOST").ok_or_else(|| {
        ConfigError::new(
            "DATABASE_URL",
            "is required (or DB_HOST, DB_PORT, DB_USER, DB_PASS, DB_NAME)",
        )
    })?;
    let port: u16 = env.parse_in_range("DB_PORT", 5432u16, 1..=65_535)?;
    let user = env.get("DB_USER").unwrap_or_else(|| "postgres".to_owned());
    let name = env.get("DB_NAME").unwrap_or_else(|| "ebra".to_owned());
    let pass = env.get("DB_PASS");
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
        assert_eq!(c.provider.kind(), ProviderKind::Simulator);
    }

    #[test]
    fn provider_and_its_alias() {
        let base = [("DATABASE_URL", "postgres://x/y")];
        let with = |extra: &[(&str, &str)]| {
            let mut vars = base.to_vec();
            vars.extend_from_slice(extra);
            config(&vars)
        };
        assert_eq!(
            with(&[
                ("USE_SIMULATOR", "false"),
                ("PROVIDER_BASE_URL", "http://p")
            ])
            .unwrap()
            .provider
            .kind(),
            ProviderKind::Http
        );
        assert_eq!(
            with(&[("PROVIDER", "http"), ("PROVIDER_BASE_URL", "http://p")])
                .unwrap()
                .provider
                .kind(),
            ProviderKind::Http
        );
        let retell = [
            ("PROVIDER", "retell"),
            ("RETELL_API_KEY", "key_123"),
            ("RETELL_FROM_NUMBER", "+14155550100"),
        ];
        let c = with(&retell).unwrap();
        assert_eq!(c.provider.kind(), ProviderKind::Retell);
        assert!(
            !format!("{c:?}").contains("key_123"),
            "secrets stay out of Debug"
        );
        // USE_SIMULATOR=false is consistent with any real provider; true is not.
        let mut consistent = retell.to_vec();
        consistent.push(("USE_SIMULATOR", "false"));
        assert!(with(&consistent).is_ok());
        let mut contradicting = retell.to_vec();
        contradicting.push(("USE_SIMULATOR", "true"));
        assert_eq!(with(&contradicting).unwrap_err().name, "USE_SIMULATOR");
        assert_eq!(with(&[("PROVIDER", "bland")]).unwrap_err().name, "PROVIDER");
    }

    #[test]
    fn each_provider_names_what_it_lacks() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[("PROVIDER", "retell")], "RETELL_API_KEY"),
            (
                &[("PROVIDER", "retell"), ("RETELL_API_KEY", "k")],
                "RETELL_FROM_NUMBER",
            ),
            (
                &[
                    ("PROVIDER", "retell"),
                    ("RETELL_API_KEY", "k"),
                    ("RETELL_FROM_NUMBER", "4155550100"),
                ],
                "RETELL_FROM_NUMBER",
            ),
            (
                &[
                    ("PROVIDER", "retell"),
                    ("RETELL_API_KEY", "k"),
                    ("RETELL_FROM_NUMBER", "+14155550100"),
                    ("RETELL_BASE_URL", "ftp://x"),
                ],
                "RETELL_BASE_URL",
            ),
            (
                &[
                    ("PROVIDER", "vapi"),
                    ("VAPI_API_KEY", "k"),
                    ("VAPI_PHONE_NUMBER_ID", "pn"),
                ],
                "VAPI_WEBHOOK_SECRET",
            ),
            (
                &[
                    ("PROVIDER", "vapi"),
                    ("VAPI_API_KEY", "k"),
                    ("VAPI_PHONE_NUMBER_ID", "pn"),
                    ("VAPI_WEBHOOK_SECRET", "short"),
                ],
                "VAPI_WEBHOOK_SECRET",
            ),
            (
                &[("PROVIDER", "twilio"), ("TWILIO_ACCOUNT_SID", "nope")],
                "TWILIO_ACCOUNT_SID",
            ),
            (
                &[
                    ("PROVIDER", "twilio"),
                    ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
                    ("TWILIO_AUTH_TOKEN", "t"),
                    ("TWILIO_FROM_NUMBER", "+14155550100"),
                ],
                "TWILIO_VOICE_URL",
            ),
            (
                &[
                    ("PROVIDER", "elevenlabs"),
                    ("ELEVENLABS_API_KEY", "k"),
                    ("ELEVENLABS_AGENT_PHONE_NUMBER_ID", "ph"),
                ],
                "ELEVENLABS_WEBHOOK_SECRET",
            ),
        ];
        for (vars, expected) in cases {
            let mut all = vec![("DATABASE_URL", "postgres://x/y")];
            all.extend_from_slice(vars);
            let error = config(&all).unwrap_err();
            assert_eq!(error.name, expected, "{vars:?}: {error}");
        }
    }

    #[test]
    fn provider_routes_hang_off_the_public_base() {
        let c = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            (
                "WEBHOOK_URL",
                "https://hooks.example.com/callbacks/call-status",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.callback_url(ProviderKind::Twilio).as_deref(),
            Some("https://hooks.example.com/callbacks/twilio")
        );
        assert_eq!(
            c.callback_url(ProviderKind::Http).as_deref(),
            Some("https://hooks.example.com/callbacks/call-status")
        );
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
    fn calling_rules_default_to_any_time_and_no_cap_and_name_their_variable() {
        let base = [("DATABASE_URL", "postgres://x/y")];
        let rules = config(&base).unwrap().calling_rules;
        assert!(rules.default_window.is_none());
        assert!(rules.max_dials_per_number_per_day.is_none());
        let rules = config(&[
            base[0],
            ("CALL_WINDOW", r#"{"start": "08:00", "end": "21:00"}"#),
            ("MAX_DIALS_PER_NUMBER_PER_DAY", "3"),
        ])
        .unwrap()
        .calling_rules;
        assert_eq!(
            rules.default_window.map(|w| w.to_string()),
            Some("08:00–21:00 on mon,tue,wed,thu,fri,sat,sun".to_owned())
        );
        assert_eq!(rules.max_dials_per_number_per_day, Some(3));
        for (name, value) in [
            ("CALL_WINDOW", "08:00-21:00"),
            (
                "CALL_WINDOW",
                r#"{"start": "08:00", "end": "21:00", "days": []}"#,
            ),
            ("CALL_WINDOW", r#"{"start": "8", "end": "21:00"}"#),
            ("MAX_DIALS_PER_NUMBER_PER_DAY", "0"),
            ("MAX_DIALS_PER_NUMBER_PER_DAY", "many"),
        ] {
            let err = config(&[base[0], (name, value)]).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
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
    fn event_settings_default_to_a_day_of_retries_and_public_urls_only() {
        let c = config(&[("DATABASE_URL", "postgres://x/y")]).unwrap();
        assert!(!c.events.allow_private_urls);
        assert_eq!(c.events.retry_window, Duration::from_secs(86_400));
        assert!(c.events.queue_url.is_none() && c.events.callback_secret.is_none());
        let c = config(&[
            ("DATABASE_URL", "postgres://x/y"),
            ("ALLOW_PRIVATE_WEBHOOK_URLS", "true"),
            ("CALLBACK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ])
        .unwrap();
        assert!(c.events.allow_private_urls);
        assert!(
            !format!("{c:?}").contains("MfKQ9r8"),
            "secrets stay out of Debug"
        );
        for (name, value) in [
            ("CALLBACK_SECRET", "nope"),
            ("ALLOW_PRIVATE_WEBHOOK_URLS", "maybe"),
            ("EVENT_RETRY_MAX_SECONDS", "0"),
            ("EVENTS_QUEUE_URL", "queue"),
        ] {
            let error = config(&[("DATABASE_URL", "postgres://x/y"), (name, value)]).unwrap_err();
            assert_eq!(error.name, name);
        }
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
