//! Figures, their targets, and the two outputs: a Markdown table on stdout and `bench.json`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::machine::Machine;
use super::BenchArgs;

/// What a figure should be.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(bound) => value >= bound,
            Target::AtMost(bound) => value <= bound,
            Target::Below(bound) => value < bound,
        }
    }

    fn describe(self, unit: &str) -> String {
        let (sign, bound) = match self {
            Target::AtLeast(bound) => ("≥", bound),
            Target::AtMost(bound) => ("≤", bound),
            Target::Below(bound) => ("<", bound),
        };
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        format!("{sign} {}{unit}", trim_number(bound))
    }
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The value as printed (may add context, e.g. the p99 next to a p50).
    pub display: String,
    pub target: Option<Target>,
    pub how: String,
}

impl Figure {
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: &str,
        display: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            display: display.into(),
            target: None,
            how: String::new(),
        }
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    pub fn how(mut self, how: impl Into<String>) -> Self {
        self.how = how.into();
        self
    }

    pub fn passed(&self) -> Option<bool> {
        self.target.map(|target| target.met(self.value))
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    pub scenario: &'static str,
    pub figures: Vec<Figure>,
    /// Raw numbers behind the figures, for the JSON.
    pub details: serde_json::Value,
    /// What the reader should know (sizes reduced, a fallback taken, ...).
    pub notes: Vec<String>,
    /// Files written besides `bench.json`.
    pub files: Vec<PathBuf>,
    pub elapsed_seconds: f64,
    /// 1-minute load averages before and after: how busy the machine was besides.
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
}

impl ScenarioReport {
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            details: json!({}),
            ..Self::default()
        }
    }
}

/// The final table, as Markdown (it pastes into the README as it is).
pub fn table(reports: &[ScenarioReport]) -> String {
    let mut out = String::from(
        "| Figure | Value | Target | Result | How measured |\n|---|---|---|---|---|\n",
    );
    for report in reports {
        for figure in &report.figures {
            let target = figure
                .target
                .map(|t| t.describe(&figure.unit))
                .unwrap_or_else(|| "—".to_owned());
            let result = match figure.passed() {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "info",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                cell(&figure.name),
                cell(&figure.display),
                cell(&target),
                result,
                cell(&figure.how)
            ));
        }
    }
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

pub fn to_json(
    machine: &Machine,
    started: DateTime<Utc>,
    args: &BenchArgs,
    reports: &[ScenarioReport],
    errors: &[(&str, String)],
) -> serde_json::Value {
    let scenarios: Vec<serde_json::Value> = reports
        .iter()
        .map(|report| {
            let figures: Vec<serde_json::Value> = report
                .figures
                .iter()
                .map(|figure| {
                    let mut value = serde_json::to_value(figure).unwrap_or_else(|_| json!({}));
                    value["pass"] = json!(figure.passed());
                    value
                })
                .collect();
            json!({
                "scenario": report.scenario,
                "elapsedSeconds": round(report.elapsed_seconds, 3),
                "loadAverageBefore": report.load_before,
                "loadAverageAfter": report.load_after,
                "figures": figures,
                "notes": report.notes,
                "files": report.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "details": report.details,
            })
        })
        .collect();
    json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": args.quick,
        "only": args.only.map(|s| s.name()),
        "startedAt": started.to_rfc3339(),
        "finishedAt": Utc::now().to_rfc3339(),
        "machine": machine,
        "scenarios": scenarios,
        "errors": errors.iter().map(|(scenario, error)| json!({"scenario": scenario, "error": error})).collect::<Vec<_>>(),
    })
}

/// `2000` rather than `2000.0`, `0.95` as it is.
fn trim_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

pub fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}
