//! What a provider reports beyond the outcome — the summary, the transcript (text or a link),
//! the recording's link, the structured analysis, the provider's end reason — kept on the call
//! as its `result`, bounded in size.
//!
//! Every value is cut or dropped here, before it reaches the database or an event: a long
//! transcript is cut to [`TRANSCRIPT_MAX_BYTES`] (and says so), an analysis larger than
//! [`ANALYSIS_MAX_BYTES`] is dropped (and says so), links must be http(s) URLs, and NUL
//! characters (which Postgres cannot store in `jsonb`) are removed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SUMMARY_MAX_BYTES: usize = 4 * 1024;
pub const TRANSCRIPT_MAX_BYTES: usize = 16 * 1024;
pub const ANALYSIS_MAX_BYTES: usize = 8 * 1024;
pub const URL_MAX_BYTES: usize = 2048;
pub const END_REASON_MAX_CHARS: usize = 255;

/// A call's result. Absent fields are left out of the JSON, so that a later report of the
/// same dial (Retell's `call_analyzed` after its `call_ended`) can fill in what an earlier
/// one lacked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    /// The provider's summary of the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The transcript as text (turns as `role: text` lines), cut to 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    /// True when `transcript` was cut; `transcriptUrl` has the whole one when the provider
    /// gives a link.
    #[serde(default, skip_serializing_if = "is_false")]
    pub transcript_truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    /// The provider's structured analysis (Retell's `call_analysis`, Vapi's `analysis`,
    /// ElevenLabs' `analysis`), at most 8 KiB of JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub analysis: Option<Value>,
    /// True when the analysis was larger than 8 KiB and left out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub analysis_truncated: bool,
    /// The provider's own words for how the call ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl CallResult {
    pub fn is_empty(&self) -> bool {
        *self == CallResult::default()
    }

    /// `None` when nothing was reported.
    pub fn non_empty(self) -> Option<Self> {
        (!self.is_empty()).then_some(self)
    }

    pub fn with_summary(mut self, summary: Option<&str>) -> Self {
        self.summary = summary
            .and_then(clean)
            .map(|s| cut(&s, SUMMARY_MAX_BYTES).0);
        self
    }

    pub fn with_transcript(mut self, transcript: Option<&str>) -> Self {
        match transcript.and_then(clean) {
            Some(text) => {
                let (text, truncated) = cut(&text, TRANSCRIPT_MAX_BYTES);
                self.transcript = Some(text);
                self.transcript_truncated = truncated;
            }
            None => {
                self.transcript = None;
                self.transcript_truncated = false;
            }
        }
        self
    }

    /// A transcript given as turns (`[{role, message}]`): one `role: text` line each.
    pub fn with_transcript_turns(self, turns: &[Value], role: &str, text: &[&str]) -> Self {
        let lines: Vec<String> = turns
            .iter()
            .filter_map(|turn| {
                let said = text
                    .iter()
                    .find_map(|key| turn.get(*key).and_then(Value::as_str))
                    .filter(|said| !said.trim().is_empty())?;
                let who = turn.get(role).and_then(Value::as_str).unwrap_or("unknown");
                Some(format!("{who}: {}", said.trim()))
            })
            .collect();
        let joined = lines.join("\n");
        self.with_transcript((!joined.is_empty()).then_some(joined.as_str()))
    }

    pub fn with_transcript_url(mut self, url: Option<&str>) -> Self {
        self.transcript_url = url.and_then(web_url);
        self
    }

    pub fn with_recording_url(mut self, url: Option<&str>) -> Self {
        self.recording_url = url.and_then(web_url);
        self
    }

    pub fn with_analysis(mut self, analysis: Option<&Value>) -> Self {
        let analysis = analysis
            .filter(|v| !v.is_null())
            .map(without_nul)
            .filter(|v| !matches!(v, Value::Object(map) if map.is_empty()));
        match analysis {
            Some(value)
                if serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len())
                    <= ANALYSIS_MAX_BYTES =>
            {
                self.analysis = Some(value);
                self.analysis_truncated = false;
            }
            Some(_) => {
                self.analysis = None;
                self.analysis_truncated = true;
            }
            None => {
                self.analysis = None;
                self.analysis_truncated = false;
            }
        }
        self
    }

    pub fn with_end_reason(mut self, reason: Option<&str>) -> Self {
        self.end_reason = reason
            .and_then(clean)
            .map(|r| r.chars().take(END_REASON_MAX_CHARS).collect());
        self
    }

    /// The result as stored (`calls.result`, `provider_webhooks.result`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(serde_json::Map::new()))
    }

    /// A stored result read back: every bound applied again, so a row written by an older
    /// version cannot break an answer.
    pub fn from_stored(value: &Value) -> Option<Self> {
        let stored: CallResult = serde_json::from_value(value.clone()).ok()?;
        let truncated = stored.transcript_truncated;
        let analysis_truncated = stored.analysis_truncated;
        let mut result = CallResult::default()
            .with_summary(stored.summary.as_deref())
            .with_transcript(stored.transcript.as_deref())
            .with_transcript_url(stored.transcript_url.as_deref())
            .with_recording_url(stored.recording_url.as_deref())
            .with_analysis(stored.analysis.as_ref())
            .with_end_reason(stored.end_reason.as_deref());
        result.transcript_truncated |= truncated && result.transcript.is_some();
        result.analysis_truncated |= analysis_truncated;
        result.non_empty()
    }
}

/// Text without NUL characters and surrounding blanks; `None` when nothing is left.
fn clean(raw: &str) -> Option<String> {
    let text: String = raw.chars().filter(|c| *c != '\0').collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// At most `max` bytes of `text`, cut at a character boundary; whether it was cut.
fn cut(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

/// An http(s) URL of at most [`URL_MAX_BYTES`], as given; anything else is dropped.
fn web_url(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > URL_MAX_BYTES || raw.contains('\0') {
        return None;
    }
    let parsed = url::Url::parse(raw).ok()?;
    (matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some()).then(|| raw.to_owned())
}

/// The value with NUL characters removed from every string and key.
fn without_nul(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "")),
        Value::Array(items) => Value::Array(items.iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.replace('\0', ""), without_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_long_transcript_is_cut_at_a_character_boundary() {
        let long = "é".repeat(TRANSCRIPT_MAX_BYTES); // two bytes each
        let result = CallResult::default().with_transcript(Some(&long));
        let text = result.transcript.as_deref().unwrap();
        assert!(text.len() <= TRANSCRIPT_MAX_BYTES);
        assert!(text.len() >= TRANSCRIPT_MAX_BYTES - 1);
        assert!(result.transcript_truncated);
        let short = CallResult::default().with_transcript(Some("agent: hello"));
        assert!(!short.transcript_truncated);
        assert_eq!(short.to_json(), json!({"transcript": "agent: hello"}));
    }

    #[test]
    fn only_web_links_are_kept() {
        let r = CallResult::default()
            .with_recording_url(Some("https://cdn.example.com/r.wav"))
            .with_transcript_url(Some("javascript:alert(1)"));
        assert_eq!(
            r.recording_url.as_deref(),
            Some("https://cdn.example.com/r.wav")
        );
        assert_eq!(r.transcript_url, None);
        let long = format!("https://example.com/{}", "a".repeat(URL_MAX_BYTES));
        assert_eq!(
            CallResult::default()
                .with_recording_url(Some(&long))
                .recording_url,
            None
        );
    }

    #[test]
    fn a_large_analysis_is_dropped_and_said_to_be() {
        let big = json!({"notes": "x".repeat(ANALYSIS_MAX_BYTES)});
        let r = CallResult::default().with_analysis(Some(&big));
        assert_eq!(r.analysis, None);
        assert!(r.analysis_truncated);
        let small = json!({"call_successful": true, "in\u{0}voicemail": "no\u{0}"});
        let r = CallResult::default().with_analysis(Some(&small));
        assert_eq!(
            r.analysis,
            Some(json!({"call_successful": true, "invoicemail": "no"}))
        );
    }

    #[test]
    fn turns_become_lines_and_empty_results_are_none() {
        let turns = json!([
            {"role": "agent", "message": "Hi, this is Ebra."},
            {"role": "user", "message": null},
            {"role": "user", "message": " Hello! "}
        ]);
        let r = CallResult::default().with_transcript_turns(
            turns.as_array().unwrap(),
            "role",
            &["message"],
        );
        assert_eq!(
            r.transcript.as_deref(),
            Some("agent: Hi, this is Ebra.\nuser: Hello!")
        );
        assert_eq!(
            CallResult::default()
                .with_summary(Some("  \0 "))
                .non_empty(),
            None
        );
    }

    #[test]
    fn stored_results_are_bounded_again() {
        let stored = json!({"summary": "s".repeat(SUMMARY_MAX_BYTES + 10), "endReason": "user_hangup", "unknown": 1});
        let r = CallResult::from_stored(&stored).unwrap();
        assert_eq!(r.summary.unwrap().len(), SUMMARY_MAX_BYTES);
        assert_eq!(r.end_reason.as_deref(), Some("user_hangup"));
        assert_eq!(CallResult::from_stored(&json!({})), None);
    }
}
