//! Calling rules (issue 14): when a call may be dialed (its calling window in the callee's
//! time zones) and whether it may be dialed at all (the do-not-call list, the daily cap per
//! number, in [`crate::store::suppressions`] and [`crate::store::claim`]).
//!
//! - [`window`]: a window's hours and days, and when it next opens in a set of zones.
//! - [`zones`]: the callee's zones from their number (libphonenumber's map).
//!
//! A call's rules are resolved once, when it is created (or its number changed), and stored
//! on its row (`calling_window`, `time_zones`): the claim checks them without resolving
//! anything again.

use chrono::{DateTime, Utc};

use crate::domain::{InvalidValue, PhoneNumber};

pub mod window;
pub mod zone;
pub mod zones;

pub use window::{CallingWindow, WindowSpec};
pub use zone::TimeZone;

/// The window that applies to a call: its own, else its campaign's, else the deployment's
/// `CALL_WINDOW`; `None` (any time) when none is set. Campaigns do not exist yet: callers pass
/// `None` for `campaign` until they do.
pub fn resolve_window(
    call: Option<CallingWindow>,
    campaign: Option<CallingWindow>,
    default: Option<&CallingWindow>,
) -> Option<CallingWindow> {
    call.or(campaign).or_else(|| default.cloned())
}

/// An IANA time zone name, as a call's `timezone`.
pub fn parse_time_zone(field: &'static str, raw: &str) -> Result<TimeZone, InvalidValue> {
    TimeZone::get(raw).ok_or_else(|| {
        InvalidValue::new(
            field,
            format!("{raw:?} is not an IANA time zone name (e.g. America/New_York)"),
        )
    })
}

/// A call's resolved rules, as stored on its row. The default: any time, no zones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallRules {
    /// `None`: any time.
    pub window: Option<CallingWindow>,
    /// The callee's zones: the call's `timezone`, else its number's (empty when the number
    /// maps to none; with no window they are only shown).
    pub zones: Vec<TimeZone>,
}

impl CallRules {
    /// Resolves a call's rules: the window from [`resolve_window`], the zones from the
    /// call's `timezone` or else from its number. Refused (`window` or `timezone` named)
    /// when a window applies that can never be kept: no zone is known for the number, or the
    /// window never holds in all of its zones at once.
    pub fn resolve(
        phone: &PhoneNumber,
        timezone: Option<TimeZone>,
        window: Option<CallingWindow>,
        now: DateTime<Utc>,
    ) -> Result<Self, InvalidValue> {
        let zones = match timezone {
            Some(zone) => vec![zone],
            None => zones::zones_for_number(phone),
        };
        let rules = Self { window, zones };
        if let Some(window) = &rules.window {
            if rules.zones.is_empty() {
                return Err(InvalidValue::new(
                    "timezone",
                    format!(
                        "is required: a calling window applies and no time zone is known for {phone}"
                    ),
                ));
            }
            if window.next_opening(&rules.zones, now).is_none() {
                return Err(InvalidValue::new(
                    "window",
                    format!(
                        "{window} never holds in all of the callee's time zones ({}) at once; give the call a `timezone`",
                        rules.zone_names().join(", ")
                    ),
                ));
            }
        }
        Ok(rules)
    }

    /// Rules read back from a row: the stored window (JSON) and zone names.
    pub fn from_stored(window: Option<&serde_json::Value>, zones: &[String]) -> Option<Self> {
        let window = match window {
            None => None,
            Some(value) => Some(CallingWindow::parse("window", value).ok()?),
        };
        let zones = zones
            .iter()
            .map(|name| TimeZone::get(name))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { window, zones })
    }

    pub fn zone_names(&self) -> Vec<String> {
        self.zones
            .iter()
            .map(|zone| zone.name().to_owned())
            .collect()
    }

    pub fn window_json(&self) -> Option<serde_json::Value> {
        self.window.as_ref().map(CallingWindow::to_json)
    }

    /// When the call may be dialed, from `at` on: `at` when the window is open (or there
    /// is none), else its next opening. `None` when it never opens again in the search
    /// horizon.
    pub fn next_allowed(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.window {
            None => Some(at),
            Some(window) => window.next_opening(&self.zones, at),
        }
    }

    pub fn allows(&self, at: DateTime<Utc>) -> bool {
        self.window
            .as_ref()
            .is_none_or(|window| window.is_open(&self.zones, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window(value: serde_json::Value) -> CallingWindow {
        CallingWindow::parse("window", &value).unwrap()
    }

    #[test]
    fn the_call_wins_then_the_campaign_then_the_default() {
        let call = window(json!({"start": "10:00", "end": "11:00"}));
        let campaign = window(json!({"start": "12:00", "end": "13:00"}));
        let default = window(json!({"start": "08:00", "end": "21:00"}));
        assert_eq!(
            resolve_window(Some(call.clone()), Some(campaign.clone()), Some(&default)),
            Some(call)
        );
        assert_eq!(
            resolve_window(None, Some(campaign.clone()), Some(&default)),
            Some(campaign)
        );
        assert_eq!(resolve_window(None, None, Some(&default)), Some(default));
        assert_eq!(resolve_window(None, None, None), None);
    }

    #[test]
    fn zones_come_from_the_timezone_else_the_number() {
        let now = Utc::now();
        let phone = PhoneNumber::parse("+12085550100").unwrap();
        let rules = CallRules::resolve(&phone, None, None, now).unwrap();
        assert_eq!(rules.zone_names(), ["America/Boise", "America/Los_Angeles"]);
        let zone = parse_time_zone("timezone", "Asia/Kathmandu").unwrap();
        let rules = CallRules::resolve(&phone, Some(zone), None, now).unwrap();
        assert_eq!(rules.zone_names(), ["Asia/Kathmandu"]);
        assert!(parse_time_zone("timezone", "Mars/Olympus").is_err());
        assert!(parse_time_zone("timezone", "").is_err());
    }

    #[test]
    fn a_window_that_can_never_hold_is_refused() {
        // +1 800 numbers map to every zone of the NANP, Guam to Newfoundland.
        let toll_free = PhoneNumber::parse("+18002345678").unwrap();
        let w = window(json!({"start": "09:00", "end": "10:00"}));
        let refused = CallRules::resolve(&toll_free, None, Some(w.clone()), Utc::now())
            .expect_err("no hour is inside 09:00-10:00 both in Guam and in St John's");
        assert_eq!(refused.field, "window");
        let zone = parse_time_zone("timezone", "America/Chicago").unwrap();
        assert!(CallRules::resolve(&toll_free, Some(zone), Some(w), Utc::now()).is_ok());
    }

    #[test]
    fn stored_rules_read_back() {
        let w = window(json!({"start": "22:00", "end": "06:00", "days": ["fri"]}));
        let rules = CallRules {
            window: Some(w),
            zones: vec![TimeZone::get("Asia/Kolkata").unwrap()],
        };
        let back =
            CallRules::from_stored(rules.window_json().as_ref(), &rules.zone_names()).unwrap();
        assert_eq!(back, rules);
    }
}
