//! `GET /metrics`: calls by status, slots in use against the cap, the oldest due backlog.
//! JSON by default; Prometheus text exposition for scrapers (`Accept: text/plain` or
//! `?format=prometheus`).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ebra_shared::domain::CallStatus;
use ebra_shared::problem::Problem;
use ebra_shared::store::calls::{self as store, Metrics};
use ebra_shared::store::campaigns::CampaignCounts;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::AppState;

pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Calls per status; every status is present, zeros included.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusCounts {
    #[serde(rename = "PENDING")]
    pub pending: i64,
    #[serde(rename = "IN_PROGRESS")]
    pub in_progress: i64,
    #[serde(rename = "COMPLETED")]
    pub completed: i64,
    #[serde(rename = "FAILED")]
    pub failed: i64,
    #[serde(rename = "EXPIRED")]
    pub expired: i64,
    #[serde(rename = "CANCELED")]
    pub canceled: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsReport {
    pub calls: StatusCounts,
    /// Concurrency slots held: calls in progress, as the cap counts them.
    pub in_progress: i64,
    /// The cap on calls in progress (`GLOBAL_CONCURRENCY`).
    pub global_concurrency: u32,
    /// Age in seconds of the oldest PENDING call that is due; null when none is.
    pub oldest_due_pending_age_seconds: Option<f64>,
    /// That call's id (what it waits for shows on its page); null when none is due.
    pub oldest_due_pending_call_id: Option<Uuid>,
    /// PENDING calls whose queue message is not confirmed yet (the outbox).
    pub outbox_unconfirmed: i64,
    /// Dials (and reports) the provider refused for its account's concurrency limit in the
    /// last hour. Above zero, `GLOBAL_CONCURRENCY` is higher than the provider account
    /// allows: calls wait (the refused dials do not count as attempts), but lower the cap.
    pub provider_limited_dials_last_hour: i64,
    /// Calls waiting and in progress per campaign (the 200 newest not canceled).
    pub campaigns: Vec<CampaignCounts>,
}

impl MetricsReport {
    fn new(metrics: Metrics, global_concurrency: u32, campaigns: Vec<CampaignCounts>) -> Self {
        let count = |status: CallStatus| metrics.by_status.get(&status).copied().unwrap_or(0);
        Self {
            calls: StatusCounts {
                pending: count(CallStatus::Pending),
                in_progress: count(CallStatus::InProgress),
                completed: count(CallStatus::Completed),
                failed: count(CallStatus::Failed),
                expired: count(CallStatus::Expired),
                canceled: count(CallStatus::Canceled),
            },
            in_progress: metrics.in_progress,
            global_concurrency,
            oldest_due_pending_age_seconds: metrics.oldest_due_pending_age_seconds,
            oldest_due_pending_call_id: metrics.oldest_due_pending_call_id,
            outbox_unconfirmed: metrics.outbox_unconfirmed,
            provider_limited_dials_last_hour: metrics.provider_limited_dials_last_hour,
            campaigns,
        }
    }

    fn by_status(&self) -> [(CallStatus, i64); 6] {
        let c = &self.calls;
        [
            (CallStatus::Pending, c.pending),
            (CallStatus::InProgress, c.in_progress),
            (CallStatus::Completed, c.completed),
            (CallStatus::Failed, c.failed),
            (CallStatus::Expired, c.expired),
            (CallStatus::Canceled, c.canceled),
        ]
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, String)]| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let calls: Vec<_> = self
            .by_status()
            .iter()
            .map(|(status, n)| (format!("{{status=\"{status}\"}}"), n.to_string()))
            .collect();
        gauge("ebra_calls", "Calls by status.", &calls);
        gauge(
            "ebra_calls_in_progress",
            "Concurrency slots held by calls in progress.",
            &[(String::new(), self.in_progress.to_string())],
        );
        gauge(
            "ebra_global_concurrency",
            "The cap on calls in progress (GLOBAL_CONCURRENCY).",
            &[(String::new(), self.global_concurrency.to_string())],
        );
        gauge(
            "ebra_oldest_due_pending_age_seconds",
            "Age of the oldest PENDING call that is due (0 when none is).",
            &[(
                String::new(),
                self.oldest_due_pending_age_seconds
                    .unwrap_or(0.0)
                    .to_string(),
            )],
        );
        gauge(
            "ebra_outbox_unconfirmed",
            "PENDING calls whose queue message is not confirmed yet.",
            &[(String::new(), self.outbox_unconfirmed.to_string())],
        );
        gauge(
            "ebra_provider_limited_dials_last_hour",
            "Dials the provider refused for its account concurrency limit in the last hour (above 0: GLOBAL_CONCURRENCY is set too high).",
            &[(String::new(), self.provider_limited_dials_last_hour.to_string())],
        );
        let campaign_calls: Vec<_> = self
            .campaigns
            .iter()
            .flat_map(|c| {
                [("PENDING", c.pending), ("IN_PROGRESS", c.in_progress)].map(|(status, n)| {
                    (
                        format!(
                            "{{campaign_id=\"{}\",campaign=\"{}\",campaign_status=\"{}\",status=\"{status}\"}}",
                            c.id,
                            label_value(&c.name),
                            c.status.as_str()
                        ),
                        n.to_string(),
                    )
                })
            })
            .collect();
        gauge(
            "ebra_campaign_calls",
            "Calls waiting (PENDING) and in progress per campaign (the 200 newest not canceled).",
            &campaign_calls,
        );
        let campaign_limits: Vec<_> = self
            .campaigns
            .iter()
            .filter_map(|c| {
                c.max_concurrency.map(|max| {
                    (
                        format!(
                            "{{campaign_id=\"{}\",campaign=\"{}\"}}",
                            c.id,
                            label_value(&c.name)
                        ),
                        max.to_string(),
                    )
                })
            })
            .collect();
        gauge(
            "ebra_campaign_max_concurrency",
            "A campaign's maxConcurrency (campaigns without one are not listed).",
            &campaign_limits,
        );
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(raw: &str) -> String {
    raw.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsParams {
    /// `json` or `prometheus`; overrides the Accept header.
    #[param(value_type = Option<String>, pattern = "^(json|prometheus)$")]
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Prometheus,
}

/// Prometheus when `text/plain` is preferred over JSON (by q-value) in `Accept`; JSON
/// otherwise, including when nothing matches.
fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Json;
    };
    let (mut json, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|param| param.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/plain" | "text/*" => text = text.max(q),
            "application/json" | "application/*" | "*/*" => json = json.max(q),
            _ => {}
        }
    }
    if text > json {
        Format::Prometheus
    } else {
        Format::Json
    }
}

/// Operational metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "getMetrics",
    params(MetricsParams),
    responses(
        (status = 200, description = "JSON by default; Prometheus text exposition for `Accept: text/plain` or `?format=prometheus`.",
            content(
                (MetricsReport = "application/json"),
                (String = "text/plain; version=0.0.4"),
            )),
        (status = 400, description = "Unknown format or query parameter.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<MetricsParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = match params.format.as_deref() {
        Some("json") => Format::Json,
        Some("prometheus") => Format::Prometheus,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-query",
                format!("format must be json or prometheus, got {other:?}"),
            ))
        }
        None => negotiate(
            headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok()),
        ),
    };
    let report = MetricsReport::new(
        store::metrics(&state.pool).await?,
        state.config.global_concurrency,
        ebra_shared::store::campaigns::campaign_counts(&state.pool).await?,
    );
    Ok(match format {
        Format::Json => Json(report).into_response(),
        Format::Prometheus => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            )],
            report.to_prometheus(),
        )
            .into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(negotiate(None), Format::Json);
        assert_eq!(negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Json);
        assert_eq!(negotiate(Some("application/json")), Format::Json);
        // What Prometheus sends.
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1")),
            Format::Prometheus
        );
        // A browser.
        assert_eq!(
            negotiate(Some(
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            )),
            Format::Json
        );
        assert_eq!(
            negotiate(Some("text/plain;q=0.2, application/json")),
            Format::Json
        );
    }
}
