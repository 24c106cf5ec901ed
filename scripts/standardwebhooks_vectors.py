"""Standard Webhooks test vectors, signed and judged by the official library (PyPI
`standardwebhooks`), for Ebra's outbound events.

Run through scripts/standardwebhooks-vectors (it installs the pinned library in a private
venv). Two kinds of case:

- `sign`: a secret (or several, for a rotation), a message id, a timestamp and a body, with
  the `webhook-signature` the library makes for them (several secrets: one signature each,
  space-separated, in order). Ebra's sender must make exactly that header, and the library
  must accept it with each of the secrets alone (checked here).
- `verify`: a delivery (headers and body) and the library's verdict at a frozen clock. Ebra's
  verifier (what its test receivers use) must reach the same verdict, except where a case is
  marked `quirk` (the library accepts something Ebra's stricter verifier refuses).

Every verdict is the library's; the generator also states what it meant each case to be and
fails when the library disagrees. Output is deterministic: fixed secrets, fixed clock.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import datetime, timezone
from importlib import metadata
from unittest import mock

import standardwebhooks.webhooks as sw
from standardwebhooks.webhooks import Webhook

NOW = 1_796_040_000  # 2026-11-30T12:00:00Z

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
NEW_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another key entirely, 32 bytes!!").decode()
# A body as the notifier posts it: compact JSON, non-ASCII text kept as UTF-8.
EVENT_BODY = json.dumps(
    {
        "type": "call.completed",
        "id": "01a22ae1-a43f-74d7-967d-70411751d529",
        "createdAt": "2026-11-30T11:59:58.123456Z",
        "data": {
            "id": "01a22ae1-a43f-74d7-967d-70411751d530",
            "to": "+14155550100",
            "status": "COMPLETED",
            "sequence": 3,
            "result": {"summary": "Le client a confirmé — rendez-vous mardi.", "endReason": "user_hangup"},
        },
    },
    separators=(",", ":"),
    ensure_ascii=False,
)
MSG_ID = "01a22ae1-a43f-74d7-967d-70411751d529"


class Mismatch(Exception):
    pass


class FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: D401 - the library calls datetime.now(tz=timezone.utc)
        return datetime.fromtimestamp(NOW, tz=tz or timezone.utc)


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body)


def verdict(secret: str, headers: dict, body: str) -> tuple[bool, str]:
    with mock.patch.object(sw, "datetime", FrozenDatetime):
        try:
            Webhook(secret).verify(body.encode(), headers, json_parse=False)
            return True, "accepted"
        except Exception as error:  # the library raises ValueError too, for some headers
            return False, f"{type(error).__name__}: {error}"


def sign_cases() -> list[dict]:
    cases = []
    for name, secrets, msg_id, ts, body in [
        ("an event", [SECRET], MSG_ID, NOW, EVENT_BODY),
        ("an empty object", [SECRET], "msg_1", NOW - 12, "{}"),
        ("another key", [OTHER_SECRET], MSG_ID, NOW + 7, EVENT_BODY),
        ("during a rotation: the new secret, then the old", [NEW_SECRET, SECRET], MSG_ID, NOW, EVENT_BODY),
    ]:
        header = " ".join(sign(s, msg_id, ts, body) for s in secrets)
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": header}
        for secret in secrets:
            ok, why = verdict(secret, headers, body)
            if not ok:
                raise Mismatch(f"sign case {name!r}: the library refuses its own signature ({why})")
        cases.append(
            {
                "kind": "sign",
                "name": name,
                "secrets": secrets,
                "msg_id": msg_id,
                "timestamp": ts,
                "body": body,
                "signature": header,
            }
        )
    return cases


def verify_cases() -> list[dict]:
    good = sign(SECRET, MSG_ID, NOW, EVENT_BODY)

    def headers(msg_id=MSG_ID, ts=str(NOW), sig=good):
        out = {}
        if msg_id is not None:
            out["webhook-id"] = msg_id
        if ts is not None:
            out["webhook-timestamp"] = ts
        if sig is not None:
            out["webhook-signature"] = sig
        return out

    def at(ts):
        return headers(ts=str(ts), sig=sign(SECRET, MSG_ID, ts, EVENT_BODY))

    tampered = EVENT_BODY.replace("COMPLETED", "COMPLETEE")
    # name, headers, body, meant valid, quirk (the library accepts what Ebra refuses)
    table = [
        ("genuine", headers(), EVENT_BODY, True, False),
        ("signed 299 s ago", at(NOW - 299), EVENT_BODY, True, False),
        ("signed 299 s ahead", at(NOW + 299), EVENT_BODY, True, False),
        ("signed 301 s ago", at(NOW - 301), EVENT_BODY, False, False),
        ("signed 301 s ahead", at(NOW + 301), EVENT_BODY, False, False),
        ("tampered body", headers(), tampered, False, False),
        ("another message id", headers(msg_id="01a22ae1-0000-7000-8000-000000000000"), EVENT_BODY, False, False),
        ("another timestamp, same signature", headers(ts=str(NOW - 1)), EVENT_BODY, False, False),
        ("signed with another secret", headers(sig=sign(OTHER_SECRET, MSG_ID, NOW, EVENT_BODY)), EVENT_BODY, False, False),
        ("empty signature", headers(sig="v1,"), EVENT_BODY, False, False),
        ("unknown version", headers(sig="v2," + good.split(",")[1]), EVENT_BODY, False, False),
        ("garbage signature", headers(sig="v1,AAAA"), EVENT_BODY, False, False),
        ("no signature header", headers(sig=None), EVENT_BODY, False, False),
        ("no id header", headers(msg_id=None), EVENT_BODY, False, False),
        ("no timestamp header", headers(ts=None), EVENT_BODY, False, False),
        ("a bad then a good signature", headers(sig="v1,AAAA " + good), EVENT_BODY, True, False),
        ("an unknown version then a good one", headers(sig="v1a,Zm9v " + good), EVENT_BODY, True, False),
        ("two keys of a rotation", headers(sig=sign(NEW_SECRET, MSG_ID, NOW, EVENT_BODY) + " " + good), EVENT_BODY, True, False),
        ("timestamp not a number", headers(ts="yesterday"), EVENT_BODY, False, False),
        # The library parses the timestamp as a float and signs its floor: a fractional
        # timestamp passes there. Ebra's verifier takes whole seconds only (as the spec says).
        ("fractional timestamp", headers(ts=f"{NOW}.9"), EVENT_BODY, True, True),
    ]
    cases = []
    for name, hdrs, body, meant, quirk in table:
        ok, why = verdict(SECRET, hdrs, body)
        if ok != meant:
            raise Mismatch(f"verify case {name!r}: meant {'valid' if meant else 'invalid'}, the library says {why}")
        cases.append(
            {
                "kind": "verify",
                "name": name,
                "secret": SECRET,
                "now": NOW,
                "headers": hdrs,
                "body": body,
                "valid": ok,
                "library_says": why,
                "quirk": quirk,
            }
        )
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed fixture differs")
    parser.add_argument("--out", default="tests/fixtures/standard_webhooks.json")
    args = parser.parse_args()
    try:
        fixture = {
            "library": {"standardwebhooks": metadata.version("standardwebhooks")},
            "cases": sign_cases() + verify_cases(),
        }
    except Mismatch as error:
        print(f"standardwebhooks-vectors: {error}", file=sys.stderr)
        return 1
    text = json.dumps(fixture, indent=2, ensure_ascii=False) + "\n"
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                committed = f.read()
        except FileNotFoundError:
            committed = ""
        if committed != text:
            print(f"standardwebhooks-vectors: {args.out} differs from what the library says now", file=sys.stderr)
            return 1
        print(f"standardwebhooks-vectors: {args.out} is up to date ({len(fixture['cases'])} cases)")
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"standardwebhooks-vectors: wrote {args.out} ({len(fixture['cases'])} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
