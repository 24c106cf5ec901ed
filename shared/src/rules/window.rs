//! A calling window: the local hours and days in which a call may be dialed.
//!
//! Membership is decided on the wall clock of each of the callee's zones: an instant is in
//! the window when its local time of day is in `[start, end)` on one of `days`. So DST needs
//! no special case (on the night clocks go back, 01:30 happens twice and both are 01:30), a
//! window whose start falls in a skipped hour opens when the clocks jump past it, and
//! `end` is the first second the window is closed. A window whose `end` is before its
//! `start` runs across midnight: `days` names the day it opens (`22:00`–`06:00` on `fri`
//! holds from Friday 22:00 to Saturday 06:00).

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc, Weekday};
use serde::{Deserialize, Serialize};

use super::TimeZone;
use crate::domain::InvalidValue;

const MINUTES_PER_DAY: u32 = 24 * 60;

/// How far ahead [`CallingWindow::next_opening`] looks: two weeks covers every weekly
/// pattern, in every set of zones whose windows overlap at all, across a DST change.
pub const SEARCH_DAYS: i64 = 15;

/// A validated window: `start` and `end` as minutes after local midnight (`end` may be
/// 1440, "24:00"), never equal, and at least one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWindow {
    start: u32,
    end: u32,
    /// Monday first; each day once.
    days: Vec<Weekday>,
}

/// The window as clients write it and as it is stored: `{"start": "09:00", "end": "20:00",
/// "days": ["mon", ...]}` (`days` absent: every day).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Local time the window opens, `HH:MM` (24-hour).
    #[schema(example = "09:00")]
    pub start: String,
    /// Local time it closes, `HH:MM`, the first minute it is closed; `24:00` is midnight at
    /// the end of the day. Before `start`: the window runs across midnight.
    #[schema(example = "20:00")]
    pub end: String,
    /// The days it opens on: `mon` … `sun`. Absent: every day. Empty: refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["mon", "tue", "wed", "thu", "fri"]))]
    pub days: Option<Vec<String>>,
}

const DAY_NAMES: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn day_name(day: Weekday) -> &'static str {
    DAY_NAMES[day.num_days_from_monday() as usize].0
}

/// `HH:MM` → minutes after midnight (`24:00` only where `allow_end_of_day`).
fn parse_clock(raw: &str, allow_end_of_day: bool) -> Option<u32> {
    let (hours, minutes) = raw.split_once(':')?;
    let two_digits = |part: &str| part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    let hours: u32 = hours.parse().ok()?;
    let minutes: u32 = minutes.parse().ok()?;
    if minutes >= 60 {
        return None;
    }
    match (hours, minutes) {
        (24, 0) if allow_end_of_day => Some(MINUTES_PER_DAY),
        (0..=23, _) => Some(hours * 60 + minutes),
        _ => None,
    }
}

fn render_clock(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl CallingWindow {
    /// Parses a window from its JSON form; errors name `field` (`window`, or the setting).
    pub fn parse(field: &'static str, value: &serde_json::Value) -> Result<Self, InvalidValue> {
        let spec: WindowSpec = serde_json::from_value(value.clone()).map_err(|e| {
            InvalidValue::new(
                field,
                format!(
                    "must be {{\"start\": \"HH:MM\", \"end\": \"HH:MM\", \"days\": [\"mon\", ...]}} ({e})"
                ),
            )
        })?;
        Self::from_spec(field, &spec)
    }

    pub fn from_spec(field: &'static str, spec: &WindowSpec) -> Result<Self, InvalidValue> {
        let start = parse_clock(spec.start.trim(), false).ok_or_else(|| {
            InvalidValue::new(
                field,
                format!(
                    "start must be a local time HH:MM from 00:00 to 23:59, got {:?}",
                    spec.start
                ),
            )
        })?;
        let end = parse_clock(spec.end.trim(), true).ok_or_else(|| {
            InvalidValue::new(
                field,
                format!(
                    "end must be a local time HH:MM from 00:00 to 24:00, got {:?}",
                    spec.end
                ),
            )
        })?;
        if start == end {
            return Err(InvalidValue::new(
                field,
                "start and end must differ (a whole day is 00:00 to 24:00)",
            ));
        }
        let days = match &spec.days {
            None => DAY_NAMES.iter().map(|(_, day)| *day).collect(),
            Some(names) if names.is_empty() => {
                return Err(InvalidValue::new(
                    field,
                    "days must name at least one day (mon … sun); leave it out for every day",
                ))
            }
            Some(names) => {
                let mut days = Vec::with_capacity(names.len());
                for name in names {
                    let lower = name.trim().to_ascii_lowercase();
                    let day = DAY_NAMES
                        .iter()
                        .find(|(known, _)| *known == lower)
                        .map(|(_, day)| *day)
                        .ok_or_else(|| {
                            InvalidValue::new(
                                field,
                                format!("days has {name:?}; use mon, tue, wed, thu, fri, sat, sun"),
                            )
                        })?;
                    if !days.contains(&day) {
                        days.push(day);
                    }
                }
                days.sort_by_key(|day: &Weekday| day.num_days_from_monday());
                days
            }
        };
        Ok(Self { start, end, days })
    }

    /// The window as clients write it (and as it is stored).
    pub fn spec(&self) -> WindowSpec {
        WindowSpec {
            start: render_clock(self.start),
            end: render_clock(self.end),
            days: Some(self.days.iter().map(|d| day_name(*d).to_owned()).collect()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.spec()).unwrap_or(serde_json::Value::Null)
    }

    fn crosses_midnight(&self) -> bool {
        self.end < self.start
    }

    fn opens_on(&self, day: Weekday) -> bool {
        self.days.contains(&day)
    }

    /// Whether `at` is inside the window on the wall clock of `zone`.
    pub fn is_open_in(&self, zone: &TimeZone, at: DateTime<Utc>) -> bool {
        let Some(local) = zone.local(at) else {
            return false;
        };
        let second = local.num_seconds_from_midnight();
        let (start, end) = (self.start * 60, self.end * 60);
        let day = local.weekday();
        if self.crosses_midnight() {
            (second >= start && self.opens_on(day)) || (second < end && self.opens_on(day.pred()))
        } else {
            second >= start && second < end && self.opens_on(day)
        }
    }

    /// Whether `at` is inside the window in every one of `zones` (the strictest reading
    /// of a number that maps to several). No zones: never.
    pub fn is_open(&self, zones: &[TimeZone], at: DateTime<Utc>) -> bool {
        !zones.is_empty() && zones.iter().all(|zone| self.is_open_in(zone, at))
    }

    /// The first instant at or after `from` at which the window holds in every one of
    /// `zones`: `from` itself when it is open, else the earliest of the windows' openings
    /// (in any of the zones) at which all of them are open. `None` when that does not
    /// happen within [`SEARCH_DAYS`] (zones too far apart for the window, or no zones).
    pub fn next_opening(&self, zones: &[TimeZone], from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if zones.is_empty() {
            return None;
        }
        if self.is_open(zones, from) {
            return Some(from);
        }
        let until = from + Duration::days(SEARCH_DAYS);
        let mut openings: Vec<DateTime<Utc>> = Vec::new();
        for zone in zones {
            let Some(today) = zone.local(from) else {
                continue;
            };
            let first_day = today.date() - Duration::days(1);
            for offset in 0..=SEARCH_DAYS + 1 {
                let date = first_day + Duration::days(offset);
                if !self.opens_on(date.weekday()) {
                    continue;
                }
                if let Some(at) = first_instant_at(zone, date, self.start) {
                    if at > from && at <= until {
                        openings.push(at);
                    }
                }
            }
        }
        openings.sort_unstable();
        openings.dedup();
        openings.into_iter().find(|at| self.is_open(zones, *at))
    }
}

/// The first instant at which the wall clock of `zone` reads `minutes` after midnight on
/// `date`, or later when that time does not exist (clocks jumped past it): then the instant
/// of the jump.
fn first_instant_at(zone: &TimeZone, date: NaiveDate, minutes: u32) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    let wanted = midnight + Duration::minutes(i64::from(minutes));
    // A skipped stretch of wall time lasts at most a day (Samoa, 2011).
    (0..=MINUTES_PER_DAY)
        .find_map(|step| zone.instant_of(wanted + Duration::minutes(i64::from(step))))
}

impl fmt::Display for CallingWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = self.days.iter().map(|d| day_name(*d)).collect();
        write!(
            f,
            "{}–{} on {}",
            render_clock(self.start),
            render_clock(self.end),
            days.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window(value: serde_json::Value) -> CallingWindow {
        CallingWindow::parse("window", &value).expect("valid window")
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("instant")
            .with_timezone(&Utc)
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).expect("a zone of the database")
    }

    fn refused(value: serde_json::Value) -> String {
        CallingWindow::parse("window", &value)
            .expect_err("refused")
            .message
    }

    #[test]
    fn parses_and_normalises() {
        let w = window(json!({"start": "09:00", "end": "20:00", "days": ["FRI", "mon", "mon"]}));
        let spec = w.spec();
        assert_eq!(spec.start, "09:00");
        assert_eq!(spec.end, "20:00");
        assert_eq!(spec.days, Some(vec!["mon".to_owned(), "fri".to_owned()]));
        let every_day = window(json!({"start": "00:00", "end": "24:00"}));
        assert_eq!(every_day.days.len(), 7);
    }

    #[test]
    fn refuses_what_is_not_a_window() {
        assert!(refused(json!({"start": "9:00", "end": "20:00"})).contains("start"));
        assert!(refused(json!({"start": "09:00", "end": "25:00"})).contains("end"));
        assert!(refused(json!({"start": "24:00", "end": "10:00"})).contains("start"));
        assert!(refused(json!({"start": "09:60", "end": "10:00"})).contains("start"));
        assert!(refused(json!({"start": "09:00", "end": "09:00"})).contains("differ"));
        assert!(
            refused(json!({"start": "09:00", "end": "20:00", "days": []})).contains("at least one")
        );
        assert!(
            refused(json!({"start": "09:00", "end": "20:00", "days": ["monday"]}))
                .contains("monday")
        );
        assert!(refused(json!({"start": "09:00"})).contains("must be"));
        assert!(
            refused(json!({"start": "09:00", "end": "20:00", "tz": "UTC"})).contains("must be")
        );
        assert!(refused(json!("09:00-20:00")).contains("must be"));
        assert!(refused(json!({"start": "+9:00", "end": "20:00"})).contains("start"));
    }

    #[test]
    fn edges_are_start_inclusive_end_exclusive() {
        let w = window(json!({"start": "09:00", "end": "20:00"}));
        let ny = zone("America/New_York");
        // 2030-07-01 is a Monday; New York is UTC-4 in July.
        assert!(!w.is_open_in(&ny, at("2030-07-01T12:59:59Z")));
        assert!(w.is_open_in(&ny, at("2030-07-01T13:00:00Z")));
        assert!(w.is_open_in(&ny, at("2030-07-01T23:59:59Z")));
        assert!(!w.is_open_in(&ny, at("2030-07-02T00:00:00Z")));
        assert_eq!(
            w.next_opening(&[ny.clone()], at("2030-07-01T12:59:59Z")),
            Some(at("2030-07-01T13:00:00Z"))
        );
        assert_eq!(
            w.next_opening(&[ny.clone()], at("2030-07-02T00:00:00Z")),
            Some(at("2030-07-02T13:00:00Z"))
        );
    }

    #[test]
    fn dst_in_new_york() {
        let w = window(json!({"start": "09:00", "end": "20:00"}));
        let ny = zone("America/New_York");
        // Sunday 2030-03-10: clocks go forward; 09:00 is EDT (UTC-4), the day before EST.
        assert_eq!(
            w.next_opening(&[ny.clone()], at("2030-03-10T01:00:00Z")),
            Some(at("2030-03-10T13:00:00Z"))
        );
        assert_eq!(
            w.next_opening(&[ny.clone()], at("2030-03-09T01:00:00Z")),
            Some(at("2030-03-09T14:00:00Z"))
        );
        // Sunday 2030-11-03: clocks go back; 09:00 is EST (UTC-5).
        assert_eq!(
            w.next_opening(&[ny.clone()], at("2030-11-03T01:00:00Z")),
            Some(at("2030-11-03T14:00:00Z"))
        );
        assert!(!w.is_open_in(&ny, at("2030-11-03T13:59:59Z")));
        // A window that starts in the skipped hour opens when the clocks jump past it.
        let early = window(json!({"start": "02:30", "end": "05:00"}));
        assert_eq!(
            early.next_opening(&[ny.clone()], at("2030-03-10T05:00:00Z")),
            Some(at("2030-03-10T07:00:00Z"))
        );
        // The repeated hour: 01:30 happens twice on 2030-11-03, both inside 01:00–02:00.
        let repeated = window(json!({"start": "01:00", "end": "02:00"}));
        assert!(repeated.is_open_in(&ny, at("2030-11-03T05:30:00Z")));
        assert!(repeated.is_open_in(&ny, at("2030-11-03T06:30:00Z")));
        assert!(!repeated.is_open_in(&ny, at("2030-11-03T07:00:00Z")));
    }

    #[test]
    fn half_and_three_quarter_hour_zones() {
        let w = window(json!({"start": "09:00", "end": "20:00"}));
        let kolkata = zone("Asia/Kolkata");
        let kathmandu = zone("Asia/Kathmandu");
        assert_eq!(
            w.next_opening(&[kolkata.clone()], at("2030-07-01T00:00:00Z")),
            Some(at("2030-07-01T03:30:00Z"))
        );
        assert_eq!(
            w.next_opening(&[kathmandu.clone()], at("2030-07-01T00:00:00Z")),
            Some(at("2030-07-01T03:15:00Z"))
        );
        assert!(!w.is_open_in(&kathmandu, at("2030-07-01T14:15:00Z")));
        assert!(w.is_open_in(&kathmandu, at("2030-07-01T14:14:59Z")));
    }

    #[test]
    fn across_midnight_belongs_to_the_day_it_opens() {
        let w = window(json!({"start": "22:00", "end": "06:00", "days": ["fri"]}));
        let utc = zone("UTC");
        // 2030-07-05 is a Friday.
        assert!(w.is_open_in(&utc, at("2030-07-05T22:00:00Z")));
        assert!(w.is_open_in(&utc, at("2030-07-06T05:59:59Z")));
        assert!(!w.is_open_in(&utc, at("2030-07-06T06:00:00Z")));
        assert!(!w.is_open_in(&utc, at("2030-07-06T22:00:00Z")));
        assert!(!w.is_open_in(&utc, at("2030-07-05T05:00:00Z")));
        assert_eq!(
            w.next_opening(&[utc.clone()], at("2030-07-06T06:00:00Z")),
            Some(at("2030-07-12T22:00:00Z"))
        );
    }

    #[test]
    fn several_zones_must_all_be_open() {
        let w = window(json!({"start": "09:00", "end": "20:00"}));
        let zones = [zone("America/Boise"), zone("America/Los_Angeles")];
        // 09:00 in Los Angeles (UTC-7 in July) is 10:00 in Boise (UTC-6): both open then.
        assert_eq!(
            w.next_opening(&zones, at("2030-07-01T14:00:00Z")),
            Some(at("2030-07-01T16:00:00Z"))
        );
        // 20:00 in Boise closes it for both.
        assert!(w.is_open(&zones, at("2030-07-02T01:59:59Z")));
        assert!(!w.is_open(&zones, at("2030-07-02T02:00:00Z")));
        // Zones too far apart for a short window: it never holds in both.
        let short = window(json!({"start": "09:00", "end": "10:00"}));
        let apart = [zone("Asia/Tokyo"), zone("America/New_York")];
        assert_eq!(short.next_opening(&apart, at("2030-07-01T00:00:00Z")), None);
        assert_eq!(w.next_opening(&[], at("2030-07-01T00:00:00Z")), None);
    }
}
