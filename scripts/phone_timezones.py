"""Writes shared/data/phone_timezones.tsv: libphonenumber's map of number prefixes to time zones.

Each line is `<prefix>\t<zone>&<zone>...`, where the prefix is the country calling code and
the leading digits of the national number. Ebra takes the longest prefix of a number that has
an entry (shared/src/rules/zones.rs), as libphonenumber's PhoneNumberToTimeZonesMapper does.
The data is Google's (Apache License 2.0), read from the `phonenumbers` package's copy.
"""

import sys

import phonenumbers
from phonenumbers.tzdata import TIMEZONE_DATA


def render() -> str:
    lines = [
        "# libphonenumber time zone map, from phonenumbers " + phonenumbers.__version__,
        "# (c) The Libphonenumber Authors, Apache License 2.0. Regenerate with scripts/phone-timezones.",
    ]
    for prefix in sorted(TIMEZONE_DATA, key=lambda p: (len(p), p)):
        zones = TIMEZONE_DATA[prefix]
        lines.append(prefix + "\t" + "&".join(zones))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
