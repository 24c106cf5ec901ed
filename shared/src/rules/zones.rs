//! The callee's time zones from their number: libphonenumber's time zone map
//! (`shared/data/phone_timezones.tsv`, regenerated from the `phonenumbers` package by
//! `scripts/phone-timezones`), looked up by the longest prefix of the number that has an
//! entry, as libphonenumber's `PhoneNumberToTimeZonesMapper` does. A country code alone maps
//! to every zone of the country (the strictest reading then applies the window in each).

use std::collections::HashMap;
use std::sync::LazyLock;

use super::TimeZone;
use crate::domain::PhoneNumber;

const DATA: &str = include_str!("../../data/phone_timezones.tsv");

/// Prefix (digits after `+`) → its zones' names, and the longest prefix in the data. Names
/// are resolved to zones only for the entry a number matches.
static MAP: LazyLock<(HashMap<&'static str, &'static str>, usize)> = LazyLock::new(|| {
    let mut map = HashMap::new();
    let mut longest = 0;
    for line in DATA.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((prefix, zones)) = line.split_once('\t') else {
            continue;
        };
        longest = longest.max(prefix.len());
        map.insert(prefix, zones);
    }
    (map, longest)
});

/// The zones of `phone`'s longest prefix with an entry; empty when none has one.
pub fn zones_for_number(phone: &PhoneNumber) -> Vec<TimeZone> {
    let (map, longest) = &*MAP;
    let digits = phone.as_str().trim_start_matches('+');
    (1..=digits.len().min(*longest))
        .rev()
        .find_map(|len| map.get(&digits[..len]))
        // Names the time zone database does not know are left out; a unit test checks
        // there are none.
        .map(|names| names.split('&').filter_map(TimeZone::get).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(number: &str) -> Vec<String> {
        let phone = PhoneNumber::parse(number).expect("valid number");
        zones_for_number(&phone)
            .into_iter()
            .map(|z| z.name().to_owned())
            .collect()
    }

    #[test]
    fn every_zone_in_the_data_is_known() {
        for line in DATA.lines().filter(|l| !l.starts_with('#')) {
            let (prefix, names) = line.split_once('\t').expect("prefix TAB zones");
            for name in names.split('&') {
                assert!(
                    TimeZone::get(name).is_some(),
                    "{prefix}: unknown zone {name}"
                );
            }
        }
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(zones("+12125550100"), ["America/New_York"]);
        assert_eq!(zones("+14155550100"), ["America/Los_Angeles"]);
        // Area code 208 (Idaho) spans Mountain and Pacific time.
        assert_eq!(
            zones("+12085550100"),
            ["America/Boise", "America/Los_Angeles"]
        );
        assert_eq!(zones("+919876543210"), ["Asia/Calcutta"]);
        assert_eq!(zones("+9779841234567"), ["Asia/Katmandu"]);
        assert!(zones("+442079460000").contains(&"Europe/London".to_owned()));
    }
}
