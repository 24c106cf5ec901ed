"""Signed-webhook test vectors for Retell, ElevenLabs and Twilio, judged by their own SDKs.

Run through scripts/provider-vectors (it installs the pinned SDKs in a private venv).
Every case in the output carries the SDK's verdict (`valid`); nothing here decides validity
itself. Each case also names what the generator meant (a valid or a forged request), and the
run fails when the SDK disagrees, so a changed SDK cannot silently flip a verdict.

Time is frozen (time.time is patched) at the `now` recorded in each case, so a verifier given
that `now` must reach the same verdict. Output is deterministic: fixed keys, fixed clock, no
randomness.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from unittest import mock
from urllib.parse import urlencode

from retell.lib import webhook_auth as retell_webhook_auth
from elevenlabs import ElevenLabs
from elevenlabs.errors import BadRequestError
from twilio.request_validator import RequestValidator, get_signature_algorithm

# 2026-11-30T12:00:00.417Z. Retell works in milliseconds, so its clock keeps the .417.
RETELL_NOW_MS = 1_796_040_000_417
# ElevenLabs signs whole seconds but compares in milliseconds (t*1000 < now_ms - 30 min):
# its clock is a whole second, except in the one case that shows the sub-second edge.
ELEVENLABS_NOW_MS = 1_796_040_000_000

RETELL_API_KEY = "key_ebra_test_0f6b4d2c9a1e47d5b8c3a6e9f2d1c0b7"
RETELL_OTHER_KEY = "key_ebra_test_other_5e4d3c2b1a09f8e7d6c5b4a39281706f"
ELEVENLABS_SECRET = "wsec_ebra_test_7c1e9a0b5d3f48e2a6b9c4d8e1f0a2b3c5d7e9f1a3b5c7d9"
ELEVENLABS_OTHER_SECRET = "wsec_ebra_test_other_00112233445566778899aabbccddeeff0011223344"
TWILIO_AUTH_TOKEN = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c"  # 32 hex, the shape of an Auth Token
TWILIO_OTHER_TOKEN = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
TWILIO_SHARED_KEY_ID = "webhooks_sharedkey_ebratest000000000000000000000"
TWILIO_SHARED_KEY_SECRET = "sk_ebra_test_shared_key_secret_4f7a1c9e2b8d"

EBRA_KEY = "3f6c2a71-9d4e-4b8a-a1c5-7e2f90d3b614"  # per-call id carried in the callback URL
OTHER_EBRA_KEY = "b0d7e5a2-41c3-4f9e-8a6b-2c5d7e9f1a3b"
TWILIO_URL = f"https://hooks.example.com/callbacks/twilio?ebraKey={EBRA_KEY}"

RETELL_HEADER = "x-retell-signature"
ELEVENLABS_HEADER = "ElevenLabs-Signature"
TWILIO_HEADER = "X-Twilio-Signature"
TWILIO_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


class Mismatch(Exception):
    pass


@contextmanager
def frozen_clock(now_ms: int):
    """Patch time.time (both SDK modules call time.time() at verification time)."""
    value = now_ms / 1000
    with mock.patch.object(time, "time", lambda: value):
        if int(time.time() * 1000) != now_ms:  # the SDKs compute int(time.time() * 1000)
            raise RuntimeError(f"clock {now_ms} does not survive the float round trip")
        yield


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def body_fields(body: str) -> dict:
    # Every SDK here takes the body as text, so every body is UTF-8 and `body` is exact; the
    # byte length is there to catch a reader that re-encodes. (A non-UTF-8 body cannot even be
    # handed to the Retell or ElevenLabs SDK: both take str.)
    return {"body": body, "body_len": len(body.encode("utf-8"))}


def hex_hmac_sha256(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def tamper_one_byte(body: str) -> str:
    """Change one ASCII character in the middle of a JSON value (same length, still JSON)."""
    i = body.index('"call_id"') if '"call_id"' in body else body.index('"conversation_id"')
    j = body.index('"', body.index(":", i) + 1) + 1  # first character of the value
    c = body[j]
    return body[:j] + ("x" if c != "x" else "y") + body[j + 1 :]


# --------------------------------------------------------------------------------------------
# Retell: retell.lib.webhook_auth (sign/verify are symmetric["sign"] / verify()).
# --------------------------------------------------------------------------------------------

def retell_call(call_id, status, reason, *, analysis=None, start=None, end=None, transcript=None):
    call = {
        "call_type": "phone_call",
        "from_number": "+14155550100",
        "to_number": "+14155550199",
        "direction": "outbound",
        "call_id": call_id,
        "agent_id": "agent_5c1d9e3f7a2b4c6d8e0f1a2b",
        "agent_version": 3,
        "agent_name": "Ebra reminder agent",
        "call_status": status,
        "metadata": {"ebra_call_id": EBRA_KEY, "campaign": "renewals-2026-11"},
        "retell_llm_dynamic_variables": {"customer_name": "Ana Souza", "due_date": "2026-12-05"},
        "disconnection_reason": reason,
        "data_storage_setting": "everything",
        "opt_in_signed_url": False,
    }
    if start is not None:
        call["start_timestamp"] = start
        call["end_timestamp"] = end
        call["duration_ms"] = end - start
        call["transcript"] = transcript or ""
        call["transcript_object"] = [
            {"role": "agent", "content": "Hi, this is Ebra calling for Ana.", "words": []},
            {"role": "user", "content": "Yes, speaking.", "words": []},
        ]
        call["recording_url"] = f"https://dxc03zgurdly9.cloudfront.net/{call_id}/recording.wav"
        call["public_log_url"] = f"https://dxc03zgurdly9.cloudfront.net/{call_id}/public.log"
        call["telephony_identifier"] = {"twilio_call_sid": "CA5f0e6a3c1b2d4e6f8a0b1c2d3e4f5a6b"}
    if analysis is not None:
        call["call_analysis"] = analysis
    return call


def retell_bodies():
    ended = compact({"event": "call_ended", "call": retell_call(
        "call_8f3a2b1c9d0e4f5a6b7c8d9e0f1a", "ended", "user_hangup",
        start=RETELL_NOW_MS - 95_417, end=RETELL_NOW_MS - 2_000,
        transcript="Agent: Hi, this is Ebra calling for Ana.\nUser: Yes, speaking.\n")})
    no_answer = compact({"event": "call_ended", "call": retell_call(
        "call_0a1b2c3d4e5f60718293a4b5c6d7", "not_connected", "dial_no_answer")})
    busy = compact({"event": "call_ended", "call": retell_call(
        "call_99aa88bb77cc66dd55ee44ff3300", "not_connected", "dial_busy")})
    analyzed = compact({"event": "call_analyzed", "call": retell_call(
        "call_1234abcd5678ef901234abcd5678", "ended", "voicemail_reached",
        start=RETELL_NOW_MS - 60_000, end=RETELL_NOW_MS - 31_000,
        transcript="Agent: Hi, this is Ebra calling for Ana.\n",
        analysis={"call_summary": "The call reached voicemail; the agent left a message.",
                  "in_voicemail": True, "user_sentiment": "Unknown", "call_successful": False,
                  "custom_analysis_data": {}})})
    unicode_body = compact({"event": "call_ended", "call": retell_call(
        "call_5e6f7a8b9c0d1e2f3a4b5c6d7e8f", "ended", "agent_hangup",
        start=RETELL_NOW_MS - 40_000, end=RETELL_NOW_MS - 1_000,
        transcript="Agent: Olá, Ana! Grüß Gott — ça va? 👋\nUser: Sí, gracias.\n")})
    return ended, no_answer, busy, analyzed, unicode_body


def retell_cases():
    sign = retell_webhook_auth.symmetric["sign"]
    now = RETELL_NOW_MS
    ended, no_answer, busy, analyzed, unicode_body = retell_bodies()
    other_body = busy
    pretty = json.dumps(json.loads(ended), indent=2, ensure_ascii=False)
    good = lambda body, ts=now - 1_500: sign(body, RETELL_API_KEY, timestamp=ts)  # noqa: E731
    digest = lambda msg, key=RETELL_API_KEY: hex_hmac_sha256(key, msg)  # noqa: E731
    ts = now - 1_500
    sig = good(ended)

    cases = [
        # name, intent, body, signature (None = header absent), note/quirk
        ("valid/call_ended_user_hangup", True, ended, sig, None),
        ("valid/call_ended_dial_no_answer", True, no_answer, good(no_answer), None),
        ("valid/call_ended_dial_busy", True, busy, good(busy), None),
        ("valid/call_analyzed_voicemail", True, analyzed, good(analyzed), None),
        ("valid/non_ascii_utf8_body", True, unicode_body, good(unicode_body), None),
        ("valid/pretty_printed_body_signed_as_sent", True, pretty, good(pretty), None),
        ("valid/timestamp_exactly_5min_old", True, ended, good(ended, now - 300_000),
         "window is inclusive: abs(now_ms - v) > 300000 rejects"),
        ("valid/timestamp_exactly_5min_ahead", True, ended, good(ended, now + 300_000),
         "the window is symmetric (abs)"),
        ("valid/timestamp_equals_now", True, ended, good(ended, now), None),
        ("forged/wrong_key", False, ended, sign(ended, RETELL_OTHER_KEY, timestamp=ts), None),
        ("forged/body_one_byte_changed", False, tamper_one_byte(ended), sig, None),
        ("forged/body_reserialized_compact_vs_pretty", False, pretty, sig,
         "signature is over the raw bytes; re-serialised JSON does not verify"),
        ("forged/signature_of_other_body", False, ended, good(other_body), None),
        ("forged/timestamp_5min_1ms_old", False, ended, good(ended, now - 300_001), None),
        ("forged/timestamp_5min_1ms_ahead", False, ended, good(ended, now + 300_001), None),
        ("forged/timestamp_one_day_old", False, ended, good(ended, now - 86_400_000), None),
        ("forged/timestamp_in_seconds_not_ms", False, ended, good(ended, now // 1000),
         "a seconds value is read as ms in 1970: stale"),
        ("forged/header_empty", False, ended, "", None),
        ("forged/header_missing", False, ended, None,
         "SDK called with signature=\"\" (what a missing header becomes)"),
        ("forged/only_v_part", False, ended, f"v={ts}", None),
        ("forged/only_d_part", False, ended, f"d={digest(ended + str(ts))}", None),
        ("forged/parts_swapped", False, ended, f"d={digest(ended + str(ts))},v={ts}", None),
        ("forged/space_after_comma", False, ended, f"v={ts}, d={digest(ended + str(ts))}", None),
        ("forged/uppercase_hex", False, ended, f"v={ts},d={digest(ended + str(ts)).upper()}",
         "regex accepts only [0-9a-f]{64}"),
        ("forged/non_hex_digest", False, ended, f"v={ts},d={'g' * 64}", None),
        ("forged/digest_63_chars", False, ended, f"v={ts},d={digest(ended + str(ts))[:63]}", None),
        ("forged/digest_65_chars", False, ended, f"v={ts},d={digest(ended + str(ts))}0", None),
        ("forged/extra_part", False, ended, f"v={ts},d={digest(ended + str(ts))},x=1",
         "re.fullmatch: nothing may follow the digest"),
        ("forged/trailing_newline", False, ended, f"v={ts},d={digest(ended + str(ts))}\n", None),
        ("forged/non_numeric_v", False, ended, f"v=abc,d={digest(ended + 'abc')}", None),
        ("forged/negative_v", False, ended, f"v=-{ts},d={digest(ended + '-' + str(ts))}", None),
        ("forged/v_in_hex", False, ended, f"v={ts:x},d={digest(ended + format(ts, 'x'))}", None),
        ("forged/signed_with_dot_separator", False, ended,
         f"v={ts},d={digest(ended + '.' + str(ts))}", "signed string is body+ts, no separator"),
        ("forged/signed_timestamp_first", False, ended, f"v={ts},d={digest(str(ts) + ended)}", None),
        ("forged/base64_digest", False, ended,
         f"v={ts},d=" + base64.b64encode(bytes.fromhex(digest(ended + str(ts)))).decode(), None),
        ("forged/hmac_sha1", False, ended,
         f"v={ts},d=" + hmac.new(RETELL_API_KEY.encode(), (ended + str(ts)).encode(), hashlib.sha1)
         .hexdigest(), None),
        # The SDK parses v with int() and signs str(int(v)): leading zeros change nothing for it.
        ("valid/quirk_leading_zeros_in_v", True, ended, f"v=000{ts},d={digest(ended + str(ts))}",
         "QUIRK: SDK does int(v) and checks HMAC(body + str(int(v))); a verifier that signs the "
         "literal v text rejects this"),
        ("forged/quirk_leading_zeros_signed_literally", False, ended,
         f"v=000{ts},d={digest(ended + '000' + str(ts))}",
         "QUIRK: HMAC over the literal v text with leading zeros fails in the SDK"),
    ]

    out = []
    for name, intent, body, signature, note in cases:
        with frozen_clock(now):
            verdict = retell_webhook_auth.verify(body, RETELL_API_KEY, "" if signature is None else signature)
        headers = {"content-type": "application/json"}
        if signature is not None:
            headers[RETELL_HEADER] = signature
        case = {
            "provider": "retell",
            "name": name,
            "valid": bool(verdict),
            "intent": "valid" if intent else "forged",
            "now": {"unix_s": now // 1000, "unix_ms": now},
            "secret": RETELL_API_KEY,
            "headers": headers,
            **body_fields(body),
            "sdk": f"retell.lib.webhook_auth.verify(body, api_key, headers[{RETELL_HEADER!r}]) -> {verdict!r}",
        }
        case["quirk"] = bool(note and note.startswith("QUIRK"))
        if note:
            case["note"] = note
        out.append(case)
    return out


# --------------------------------------------------------------------------------------------
# ElevenLabs: ElevenLabs(...).webhooks.construct_event(rawBody, sig_header, secret).
# --------------------------------------------------------------------------------------------

def elevenlabs_bodies():
    conv = "conv_01jz7q3m8w5n2r4t6y8u0i2o4p"
    agent = "agent_01jz5k7m9p1r3t5v7x9z1b3d5f"
    dyn = {"ebra_call_id": EBRA_KEY, "customer_name": "Ana Souza", "system__called_number": "+14155550199"}
    now_s = ELEVENLABS_NOW_MS // 1000
    transcription = compact({
        "type": "post_call_transcription",
        "event_timestamp": now_s - 4,
        "data": {
            "agent_id": agent,
            "conversation_id": conv,
            "status": "done",
            "user_id": EBRA_KEY,
            "transcript": [
                {"role": "agent", "message": "Hi, this is Ebra calling for Ana.", "tool_calls": [],
                 "tool_results": [], "feedback": None, "time_in_call_secs": 0},
                {"role": "user", "message": "Yes, speaking.", "tool_calls": [], "tool_results": [],
                 "feedback": None, "time_in_call_secs": 2},
            ],
            "metadata": {
                "start_time_unix_secs": now_s - 130,
                "call_duration_secs": 117,
                "cost": 812,
                "termination_reason": "Call ended by remote party",
                "phone_call": {
                    "type": "twilio", "direction": "outbound",
                    "phone_number_id": "phnum_01jz0a2b4c6d8e0f2g4h6j8k0m",
                    "agent_number": "+14155550100", "external_number": "+14155550199",
                    "call_result": "answered",
                    "stream_sid": "MZ8e1f0a2b3c4d5e6f7a8b9c0d1e2f3a4b",
                    "call_sid": "CA5f0e6a3c1b2d4e6f8a0b1c2d3e4f5a6b",
                },
            },
            "analysis": {
                "evaluation_criteria_results": {},
                "data_collection_results": {},
                "call_successful": "success",
                "transcript_summary": "Ana confirmed the renewal date.",
                "call_summary_title": "Renewal confirmed",
            },
            "conversation_initiation_client_data": {
                "conversation_config_override": None,
                "user_id": EBRA_KEY,
                "dynamic_variables": dyn,
            },
            "has_audio": True,
            "has_user_audio": True,
            "has_response_audio": True,
        },
    })
    failure_busy = compact({
        "type": "call_initiation_failure",
        "event_timestamp": now_s - 2,
        "data": {
            "agent_id": agent,
            "conversation_id": "conv_01jz7r0a1b2c3d4e5f6g7h8j9k",
            "failure_reason": "busy",
            "metadata": {
                "type": "twilio",
                "body": {
                    "Called": "+14155550199", "ToState": "CA", "CallerCountry": "US",
                    "Direction": "outbound-api", "Timestamp": "Mon, 30 Nov 2026 11:59:58 +0000",
                    "CallbackSource": "call-progress-events", "SipResponseCode": "486",
                    "CallerState": "CA", "ToZip": "", "SequenceNumber": "2",
                    "CallSid": "CA0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e", "To": "+14155550199",
                    "CallerZip": "", "ToCountry": "US", "CalledZip": "", "ApiVersion": "2010-04-01",
                    "CalledCity": "", "CallStatus": "busy", "Duration": "0",
                    "From": "+14155550100", "CallDuration": "0",
                    "AccountSid": "AC00000000000000000000000000000000",
                    "CalledCountry": "US", "CallerCity": "", "ToCity": "", "FromCountry": "US",
                    "Caller": "+14155550100", "FromCity": "", "CalledState": "CA", "FromZip": "",
                    "FromState": "CA",
                },
            },
        },
    })
    failure_sip = compact({
        "type": "call_initiation_failure",
        "event_timestamp": now_s - 1,
        "data": {
            "agent_id": agent,
            "conversation_id": "conv_01jz7r9z8y7x6w5v4u3t2s1r0q",
            "failure_reason": "no-answer",
            "metadata": {
                "type": "sip",
                "body": {"sip_status_code": 480, "error_reason": "Temporarily Unavailable",
                         "call_sid": "SCL_8f2d6a0b4c1e", "twirp_code": "unavailable",
                         "sip_status": "Temporarily Unavailable"},
            },
        },
    })
    unicode_body = compact({
        "type": "post_call_transcription",
        "event_timestamp": now_s - 3,
        "data": {"agent_id": agent, "conversation_id": "conv_01jz7s5t6u7v8w9x0y1z2a3b4c",
                 "status": "done",
                 "transcript": [{"role": "user", "message": "Olá! Grüß Gott — ça va? 👋",
                                 "time_in_call_secs": 1}],
                 "metadata": {"start_time_unix_secs": now_s - 60, "call_duration_secs": 50,
                              "termination_reason": "Client disconnected: 1000"},
                 "analysis": {"call_successful": "unknown", "transcript_summary": "Saudação."},
                 "conversation_initiation_client_data": {"dynamic_variables": dyn}},
    })
    return transcription, failure_busy, failure_sip, unicode_body


def elevenlabs_cases():
    client = ElevenLabs(api_key="xi-unused-no-network")
    construct = client.webhooks.construct_event
    now_ms = ELEVENLABS_NOW_MS
    now = now_ms // 1000
    transcription, failure_busy, failure_sip, unicode_body = elevenlabs_bodies()
    pretty = json.dumps(json.loads(transcription), indent=2, ensure_ascii=False)

    def v0(body, t, secret=ELEVENLABS_SECRET):
        return "v0=" + hex_hmac_sha256(secret, f"{t}.{body}")

    def header(body, t=now - 3, secret=ELEVENLABS_SECRET):
        return f"t={t},{v0(body, t, secret)}"

    t = now - 3
    sig = header(transcription)
    mac = v0(transcription, t)

    cases = [
        # name, intent, body, header (None = absent), now_ms, note
        ("valid/post_call_transcription", True, transcription, sig, now_ms, None),
        ("valid/call_initiation_failure_busy_twilio", True, failure_busy, header(failure_busy), now_ms, None),
        ("valid/call_initiation_failure_no_answer_sip", True, failure_sip, header(failure_sip), now_ms, None),
        ("valid/non_ascii_utf8_body", True, unicode_body, header(unicode_body), now_ms, None),
        ("valid/pretty_printed_body_signed_as_sent", True, pretty, header(pretty), now_ms, None),
        ("valid/timestamp_exactly_30min_old", True, transcription, header(transcription, now - 1800),
         now_ms, "rejected only when t*1000 < now_ms - 1800000"),
        ("valid/timestamp_equals_now", True, transcription, header(transcription, now), now_ms, None),
        ("valid/parts_in_reverse_order", True, transcription, f"{mac},t={t}", now_ms,
         "parts are found by prefix, in any order"),
        ("valid/extra_unknown_part", True, transcription, f"t={t},{mac},v1=ignored", now_ms, None),
        ("valid/quirk_future_timestamp_1h", True, transcription, header(transcription, now + 3600),
         now_ms, "QUIRK: the SDK has no future bound; a verifier with a future-skew limit rejects this"),
        ("valid/quirk_timestamp_in_ms_signed_consistently", True, transcription,
         header(transcription, now_ms), now_ms,
         "QUIRK: t in milliseconds is far in the future, so the SDK accepts it"),
        ("valid/quirk_two_v0_last_one_good", True, transcription,
         f"t={t},v0={'0' * 64},{mac}", now_ms,
         "QUIRK: the SDK keeps the LAST v0= part; a verifier accepting any matching v0 agrees here"),
        ("forged/quirk_two_v0_first_one_good", False, transcription,
         f"t={t},{mac},v0={'0' * 64}", now_ms,
         "QUIRK: the SDK keeps the LAST v0= part; a verifier accepting any matching v0 accepts this"),
        ("forged/wrong_secret", False, transcription,
         header(transcription, secret=ELEVENLABS_OTHER_SECRET), now_ms, None),
        ("forged/body_one_byte_changed", False, tamper_one_byte(transcription), sig, now_ms, None),
        ("forged/body_reserialized_compact_vs_pretty", False, pretty, sig, now_ms, None),
        ("forged/signature_of_other_body", False, transcription, header(failure_busy), now_ms, None),
        ("forged/timestamp_30min_1s_old", False, transcription, header(transcription, now - 1801), now_ms, None),
        ("forged/timestamp_one_day_old", False, transcription, header(transcription, now - 86400), now_ms, None),
        ("forged/timestamp_30min_old_subsecond_clock", False, transcription,
         header(transcription, now - 1800), now_ms + 417,
         "clock at .417 s: t*1000 = now_ms - 1800417 < now_ms - 1800000, so exactly-30-min is stale here"),
        ("forged/header_empty", False, transcription, "", now_ms, "BadRequestError: Missing signature header"),
        ("forged/header_missing", False, transcription, None, now_ms,
         "SDK called with sig_header=None (missing header)"),
        ("forged/only_t_part", False, transcription, f"t={t}", now_ms, None),
        ("forged/only_v0_part", False, transcription, mac, now_ms, None),
        ("forged/space_after_comma", False, transcription, f"t={t}, {mac}", now_ms,
         "parts are not trimmed: ' v0=' is not found"),
        ("forged/uppercase_hex", False, transcription, f"t={t},v0={mac[3:].upper()}", now_ms,
         "compared as text: uppercase hex does not match"),
        ("forged/non_hex_signature", False, transcription, f"t={t},v0={'z' * 64}", now_ms, None),
        ("forged/truncated_signature", False, transcription, f"t={t},{mac[:-1]}", now_ms, None),
        ("forged/v1_scheme_only", False, transcription, f"t={t},v1={mac[3:]}", now_ms, None),
        ("forged/signed_without_timestamp", False, transcription,
         f"t={t},v0={hex_hmac_sha256(ELEVENLABS_SECRET, transcription)}", now_ms, None),
        ("forged/signed_body_dot_timestamp", False, transcription,
         f"t={t},v0={hex_hmac_sha256(ELEVENLABS_SECRET, f'{transcription}.{t}')}", now_ms, None),
        ("forged/timestamp_changed_after_signing", False, transcription, f"t={t + 1},{mac}", now_ms, None),
        ("forged/non_numeric_timestamp", False, transcription,
         f"t=abc,v0={hex_hmac_sha256(ELEVENLABS_SECRET, 'abc.' + transcription)}", now_ms,
         "the SDK raises ValueError from int(t) (not BadRequestError)"),
        ("forged/empty_timestamp", False, transcription, f"t=,{mac}", now_ms, None),
        ("forged/base64_signature", False, transcription,
         f"t={t},v0=" + base64.b64encode(bytes.fromhex(mac[3:])).decode(), now_ms, None),
    ]

    out = []
    for name, intent, body, sig_header, clock_ms, note in cases:
        with frozen_clock(clock_ms):
            try:
                construct(body, sig_header, ELEVENLABS_SECRET)
                verdict, result = True, "returned the parsed event"
            except BadRequestError as e:
                verdict, result = False, f"BadRequestError: {getattr(e.body, 'error', e.body)}"
            except ValueError as e:  # int() of a non-numeric t; json.loads of a non-JSON body
                verdict, result = False, f"{type(e).__name__}: {e}"
        headers = {"Content-Type": "application/json"}
        if sig_header is not None:
            headers[ELEVENLABS_HEADER] = sig_header
        case = {
            "provider": "elevenlabs",
            "name": name,
            "valid": verdict,
            "intent": "valid" if intent else "forged",
            "now": {"unix_s": clock_ms // 1000, "unix_ms": clock_ms},
            "secret": ELEVENLABS_SECRET,
            "headers": headers,
            **body_fields(body),
            "sdk": f"ElevenLabs().webhooks.construct_event(body, headers[{ELEVENLABS_HEADER!r}], secret): {result}",
        }
        case["quirk"] = bool(note and note.startswith("QUIRK"))
        if note:
            case["note"] = note
        out.append(case)
    return out


# --------------------------------------------------------------------------------------------
# Twilio: twilio.request_validator.RequestValidator(token).compute_signature / validate.
# --------------------------------------------------------------------------------------------

class FormParams:
    """Form params as an ordered list of (name, value), repeated names allowed.

    Behaves like the MultiDict of Flask/Werkzeug that RequestValidator supports: iterating
    gives the names, getall(name) gives every value for a name.
    """

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def __iter__(self):
        return iter(dict.fromkeys(name for name, _ in self.pairs))

    def __bool__(self):
        return bool(self.pairs)

    def getall(self, name):
        return [value for n, value in self.pairs if n == name]


def twilio_status_callback(status, *, duration, answered_by=None, sip="200", seq="2",
                           sid="CA5f0e6a3c1b2d4e6f8a0b1c2d3e4f5a6b"):
    pairs = [
        ("Called", "+14155550199"),
        ("ToState", "CA"),
        ("CallerCountry", "US"),
        ("Direction", "outbound-api"),
        ("Timestamp", "Mon, 30 Nov 2026 11:59:58 +0000"),
        ("CallbackSource", "call-progress-events"),
        ("SipResponseCode", sip),
        ("CallerState", "CA"),
        ("ToZip", ""),
        ("SequenceNumber", seq),
        ("CallSid", sid),
        ("To", "+14155550199"),
        ("CallerZip", ""),
        ("ToCountry", "US"),
        ("CalledZip", ""),
        ("ApiVersion", "2010-04-01"),
        ("CalledCity", ""),
        ("CallStatus", status),
        ("Duration", str((int(duration) + 59) // 60)),
        ("From", "+14155550100"),
        ("CallDuration", duration),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("CalledCountry", "US"),
        ("CallerCity", ""),
        ("ToCity", ""),
        ("FromCountry", "US"),
        ("Caller", "+14155550100"),
        ("FromCity", ""),
        ("CalledState", "CA"),
        ("FromZip", ""),
        ("FromState", "CA"),
    ]
    if answered_by is not None:
        pairs.append(("AnsweredBy", answered_by))
    return pairs


def replace(pairs, name, value):
    return [(n, value if n == name else v) for n, v in pairs]


def twilio_cases():
    token = TWILIO_AUTH_TOKEN
    validator = RequestValidator(token)
    completed = twilio_status_callback("completed", duration="117", answered_by="human")
    busy = twilio_status_callback("busy", duration="0", sip="486", sid="CA0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e")
    no_answer = twilio_status_callback("no-answer", duration="0", sip="487", sid="CA1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f")
    machine = twilio_status_callback("completed", duration="31", answered_by="machine_end_beep",
                                     sid="CA2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a")
    failed = twilio_status_callback("failed", duration="0", sip="404", sid="CA3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b")
    canceled = twilio_status_callback("canceled", duration="0", sip="487", sid="CA4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c")
    url = TWILIO_URL

    def sign(u, pairs, key=token, algorithm=None):
        return RequestValidator(key).compute_signature(u, FormParams(pairs), algorithm)

    sig = sign(url, completed)
    port443 = url.replace("hooks.example.com", "hooks.example.com:443")
    port8443 = url.replace("hooks.example.com", "hooks.example.com:8443")
    port9443 = url.replace("hooks.example.com", "hooks.example.com:9443")
    http_url = url.replace("https://", "http://")
    http_port80 = http_url.replace("hooks.example.com", "hooks.example.com:80")
    multi_query = url + "&attempt=2&note=caf%C3%A9%20au%20lait"
    unicode_pairs = completed + [("CallerName", "José Müller — 東京")]
    repeated = completed + [("Tag", "b"), ("Tag", "a")]
    repeated_same = completed + [("Tag", "a"), ("Tag", "a")]
    reordered = list(reversed(completed))
    empty_value = replace(completed, "AnsweredBy", "")
    odd_names = completed + [("zeta", "1"), ("Zeta", "2"), ("Émile", "3"), ("_x", "4")]

    json_body = compact({"CallSid": "CA5f0e6a3c1b2d4e6f8a0b1c2d3e4f5a6b", "CallStatus": "completed",
                         "AccountSid": "AC00000000000000000000000000000000"})
    body_hash = hashlib.sha256(json_body.encode()).hexdigest()
    json_url = f"{url}&bodySHA256={body_hash}"
    json_sig = validator.compute_signature(json_url, {})

    sk_settings = f"key={TWILIO_SHARED_KEY_ID},algorithm=HMAC_SHA256"
    sk_sig = sign(url, completed, TWILIO_SHARED_KEY_SECRET, "HMAC_SHA256")

    F = "form"
    J = "json"
    cases = [
        # name, intent, kind, request url, params (form) or body (json), signature, key, settings, note
        ("valid/completed_human", True, F, url, completed, sig, token, None, None),
        ("valid/busy", True, F, url, busy, sign(url, busy), token, None, None),
        ("valid/no_answer", True, F, url, no_answer, sign(url, no_answer), token, None, None),
        ("valid/completed_machine_end_beep", True, F, url, machine, sign(url, machine), token, None, None),
        ("valid/failed", True, F, url, failed, sign(url, failed), token, None, None),
        ("valid/canceled", True, F, url, canceled, sign(url, canceled), token, None, None),
        ("valid/params_in_other_order", True, F, url, reordered, sig, token, None,
         "params are sorted by name before signing"),
        ("valid/non_ascii_param_value", True, F, url, unicode_pairs, sign(url, unicode_pairs), token, None,
         "values are signed as decoded UTF-8 text"),
        ("valid/param_names_sorted_by_code_point", True, F, url, odd_names, sign(url, odd_names), token,
         None, "names sort by code point (= UTF-8 byte order): 'Zeta' < '_x' < 'zeta' < 'Émile'"),
        ("valid/empty_param_value", True, F, url, empty_value, sign(url, empty_value), token, None, None),
        ("valid/repeated_param_name", True, F, url, repeated, sign(url, repeated), token, None,
         "a repeated name contributes name+value for each value, values sorted"),
        ("valid/quirk_repeated_identical_values_counted_once", True, F, url, repeated_same,
         sign(url, completed + [("Tag", "a")]), token, None,
         "QUIRK: the SDK signs sorted(set(values)), so a duplicated name=value pair counts once"),
        ("valid/query_with_percent_encoding", True, F, multi_query, completed, sign(multi_query, completed),
         token, None, "the URL is signed exactly as requested, percent-escapes included"),
        ("valid/request_on_443_signed_without_port", True, F, port443, completed, sig, token, None,
         "validate() tries the URL with its port removed"),
        ("valid/request_without_port_signed_on_443", True, F, url, completed, sign(port443, completed),
         token, None, "validate() tries the URL with :443 added for https"),
        ("valid/request_on_8443_signed_on_8443", True, F, port8443, completed, sign(port8443, completed),
         token, None, None),
        ("valid/quirk_request_on_8443_signed_without_port", True, F, port8443, completed, sig, token, None,
         "QUIRK: remove_port() drops any port, not only the default one"),
        ("valid/http_request_on_80_signed_without_port", True, F, http_port80, completed,
         sign(http_url, completed), token, None, None),
        ("valid/http_request_without_port_signed_on_80", True, F, http_url, completed,
         sign(http_port80, completed), token, None, "validate() adds :80 for http"),
        ("valid/json_body_with_bodySHA256", True, J, json_url, json_body, json_sig, token, None,
         "signature over the URL (with bodySHA256) and no params; body hash = hex sha256 of the body"),
        ("valid/shared_key_hmac_sha256", True, F, url, completed, sk_sig, TWILIO_SHARED_KEY_SECRET,
         sk_settings, "algorithm from X-Twilio-Webhooks-Signature-Settings; key = SharedKey secret"),
        ("forged/wrong_auth_token", False, F, url, completed, sign(url, completed, TWILIO_OTHER_TOKEN),
         token, None, None),
        ("forged/param_value_changed", False, F, url, replace(completed, "CallStatus", "busy"), sig,
         token, None, None),
        ("forged/param_added", False, F, url, completed + [("Extra", "1")], sig, token, None, None),
        ("forged/empty_param_added", False, F, url, completed + [("Extra", "")], sig, token, None,
         "an empty value still adds its name to the signed string"),
        ("forged/param_removed", False, F, url, completed[:-1], sig, token, None, None),
        ("forged/param_name_case_changed", False, F, url,
         [("callstatus" if n == "CallStatus" else n, v) for n, v in completed], sig, token, None, None),
        ("forged/repeated_param_one_value_dropped", False, F, url, completed + [("Tag", "b")],
         sign(url, repeated), token, None, None),
        ("forged/scheme_http_instead_of_https", False, F, http_url, completed, sig, token, None, None),
        ("forged/other_host", False, F, url.replace("hooks.example.com", "hooks.example.org"), completed,
         sig, token, None, None),
        ("forged/host_case_changed", False, F, url.replace("hooks.example.com", "Hooks.Example.com"),
         completed, sig, token, None, "the URL is compared as text; no normalisation"),
        ("forged/other_path", False, F, url.replace("/callbacks/twilio", "/callbacks/twilio/"), completed,
         sig, token, None, None),
        ("forged/query_value_changed", False, F, url.replace(EBRA_KEY, OTHER_EBRA_KEY), completed, sig,
         token, None, None),
        ("forged/query_removed", False, F, url.split("?")[0], completed, sig, token, None, None),
        ("forged/query_percent_decoded", False, F, multi_query.replace("caf%C3%A9%20au%20lait", "café au lait"),
         completed, sign(multi_query, completed), token, None, None),
        ("forged/request_on_8443_signed_on_9443", False, F, port8443, completed, sign(port9443, completed),
         token, None, None),
        ("forged/request_without_port_signed_on_8443", False, F, url, completed, sign(port8443, completed),
         token, None, "only :443/:80 are added back, never another port"),
        ("forged/https_request_signed_on_80", False, F, url, completed,
         sign(url.replace("hooks.example.com", "hooks.example.com:80"), completed), token, None, None),
        ("forged/signature_empty", False, F, url, completed, "", token, None, None),
        ("forged/signature_missing", False, F, url, completed, None, token, None,
         "SDK called with signature=\"\" (missing header)"),
        ("forged/signature_truncated", False, F, url, completed, sig[:-2], token, None, None),
        ("forged/signature_trailing_space", False, F, url, completed, sig + " ", token, None, None),
        ("forged/signature_hex_not_base64", False, F, url, completed,
         base64.b64decode(sig).hex(), token, None, None),
        ("forged/signature_of_other_callback", False, F, url, completed, sign(url, busy), token, None, None),
        ("forged/signed_with_sha256_no_settings_header", False, F, url, completed,
         sign(url, completed, algorithm="HMAC_SHA256"), token, None, None),
        ("forged/shared_key_header_but_sha1_signature", False, F, url, completed,
         sign(url, completed, TWILIO_SHARED_KEY_SECRET), TWILIO_SHARED_KEY_SECRET, sk_settings, None),
        ("forged/unsupported_algorithm", False, F, url, completed,
         sign(url, completed, TWILIO_SHARED_KEY_SECRET, "HMAC_SHA256"), TWILIO_SHARED_KEY_SECRET,
         f"key={TWILIO_SHARED_KEY_ID},algorithm=HMAC_SHA512", "an unknown algorithm fails validation"),
        ("forged/json_body_tampered", False, J, json_url, json_body.replace("completed", "completef"),
         json_sig, token, None, "URL signature good, body hash does not match"),
        ("forged/json_bodySHA256_uppercase", False, J, f"{url}&bodySHA256={body_hash.upper()}", json_body,
         validator.compute_signature(f"{url}&bodySHA256={body_hash.upper()}", {}), token, None,
         "URL signature good; the hash is compared as lowercase hex text"),
        ("forged/json_url_signed_without_bodySHA256", False, J, json_url, json_body,
         validator.compute_signature(url, {}), token, None, None),
    ]

    out = []
    for name, intent, kind, req_url, payload, signature, key, settings, note in cases:
        algorithm = get_signature_algorithm(settings) if settings else None
        arg = "" if signature is None else signature
        if kind == F:
            params = FormParams(payload)
            verdict = RequestValidator(key).validate(req_url, params, arg, algorithm)
            # With no repeated names, a plain dict (what most frameworks hand over) must agree.
            names = [n for n, _ in payload]
            if len(names) == len(set(names)):
                if RequestValidator(key).validate(req_url, dict(payload), arg, algorithm) != verdict:
                    raise Mismatch(f"twilio {name}: dict and multidict verdicts differ")
            body = urlencode(payload)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            extra = {"params": [[n, v] for n, v in payload]}
        else:
            verdict = RequestValidator(key).validate(req_url, payload, arg, algorithm)
            body = payload
            headers = {"Content-Type": "application/json"}
            extra = {"params": []}
        if signature is not None:
            headers[TWILIO_HEADER] = signature
        if settings:
            headers[TWILIO_SETTINGS_HEADER] = settings
        case = {
            "provider": "twilio",
            "name": name,
            "valid": bool(verdict),
            "intent": "valid" if intent else "forged",
            "now": {"unix_s": RETELL_NOW_MS // 1000, "unix_ms": RETELL_NOW_MS},
            "secret": key,
            "method": "POST",
            "url": req_url,
            "kind": kind,
            **extra,
            "headers": headers,
            **body_fields(body),
            "algorithm": algorithm or "HMAC_SHA1",
            "sdk": ("RequestValidator(secret).validate(url, "
                    + ("MultiDict(params)" if kind == F else "body")
                    + f", headers[{TWILIO_HEADER!r}], algorithm={algorithm!r}) -> {verdict!r}"),
        }
        case["quirk"] = bool(note and note.startswith("QUIRK"))
        if note:
            case["note"] = note
        out.append(case)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/provider_signatures.json")
    parser.add_argument("--check", action="store_true",
                        help="do not write; fail if the file differs from what would be written")
    args = parser.parse_args()

    # validate() logs a warning for the unsupported-algorithm case; its verdict is what counts.
    logging.getLogger("twilio.request_validator").setLevel(logging.ERROR)
    versions = {p: metadata.version(p) for p in ("retell-sdk", "elevenlabs", "twilio")}
    groups = [
        ("retell", "retell-sdk", "retell.lib.webhook_auth.verify", retell_cases),
        ("elevenlabs", "elevenlabs", "ElevenLabs.webhooks.construct_event", elevenlabs_cases),
        ("twilio", "twilio", "twilio.request_validator.RequestValidator.validate", twilio_cases),
    ]
    cases, lines, mismatches = [], [], []
    for provider, package, function, build in groups:
        built = build()
        for c in built:
            if (c["intent"] == "valid") != c["valid"]:
                mismatches.append(f"{provider} {c['name']}: meant {c['intent']}, SDK says valid={c['valid']}")
        names = [c["name"] for c in built]
        if len(names) != len(set(names)):
            raise Mismatch(f"{provider}: duplicate case names")
        valid = sum(c["valid"] for c in built)
        lines.append(f"{provider}: {valid} valid, {len(built) - valid} forged, "
                     f"all verdicts from {package} {versions[package]} ({function})")
        cases.extend(built)
    if mismatches:
        print("The SDK disagrees with what these cases were built to be:", file=sys.stderr)
        for m in mismatches:
            print("  " + m, file=sys.stderr)
        return 1

    doc = {
        "generated_by": "scripts/provider-vectors (scripts/provider_vectors.py)",
        "sdk_versions": versions,
        "about": [
            "Each case is one webhook request; `valid` is the verdict of the provider's own SDK "
            "function named in `sdk`, with time.time frozen at `now`.",
            "`body` is exactly the signed bytes, as UTF-8 text (`body_len` bytes); all bodies are UTF-8, "
            "so no case needs a base64 copy.",
            "Header names are given as the provider sends them; compare them case-insensitively.",
            "A missing signature header is a case without that header; the SDK was called with \"\" "
            "(ElevenLabs: None).",
            "Twilio: `url` is the full URL of the request; `params` the decoded form fields in body "
            "order (repeated names allowed); `body` their form encoding. `kind` json means a JSON body "
            "whose hash is in the bodySHA256 query parameter; `now` is irrelevant to Twilio.",
            "`note` explains a boundary. `quirk` true (its note starts with QUIRK) marks SDK behaviour "
            "that a stricter verifier may deliberately not copy; every other verdict is one a correct "
            "verifier must reproduce.",
        ],
        "cases": cases,
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    # One line per [name, value] pair (JSON strings hold no raw newlines, so this is safe).
    text = re.sub(r'\[\n\s+("(?:[^"\\]|\\.)*"),\n\s+("(?:[^"\\]|\\.)*")\n\s+\]', r"[\1, \2]", text)
    if json.loads(text) != doc:
        raise Mismatch("compacting the output changed it")
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        for line in lines:
            print(line)
        if not same:
            print(f"{args.out} is not what the SDKs produce now: run scripts/provider-vectors", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({len(cases)} cases)")
        return 0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    for line in lines:
        print(line)
    print(f"wrote {args.out} ({len(cases)} cases)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # any SDK call that fails unexpectedly fails the run
        print(f"provider-vectors: {type(e).__name__}: {e}", file=sys.stderr)
        raise
