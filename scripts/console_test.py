"""The operator console in a real browser, against a running `ebra dev` (see scripts/console-test).

Every value the page shows is checked against what the API answers at that moment. Each step
prints one line; a failure prints what differed, saves a screenshot of the page in the work
directory and exits non-zero.
"""

import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["CONSOLE_BASE"]
TOKEN = os.environ["CONSOLE_API_TOKEN"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WORK = os.environ.get("CONSOLE_WORK") or tempfile.mkdtemp()
SCREENSHOTS = os.environ.get("CONSOLE_SCREENSHOTS_DIR", "")
CAP = 3
TERMINAL = {"COMPLETED", "FAILED", "EXPIRED", "CANCELED"}
STATUSES = ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "EXPIRED", "CANCELED"]
# Headless Chromium from Debian, with nothing that reaches the network by itself.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

started = time.monotonic()


def step(text):
    print(f"[{time.monotonic() - started:5.1f} s] {text}", flush=True)


def api(method, path, body=None, token=TOKEN):
    """The API as any client sees it: (status, parsed JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def ok(method, path, body=None):
    status, data = api(method, path, body)
    assert 200 <= status < 300, f"{method} {path}: {status} {data}"
    return data


def wait_until(what, predicate, timeout=60.0, every=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def post_calls(count, first):
    ids = []
    for n in range(first, first + count):
        call = ok("POST", "/calls", {"to": f"+1415555{n:04d}", "scriptId": "renewal-v2",
                                      "metadata": {"customer": f"c-{n}", "plan": "gold"}})
        ids.append(call["id"])
    return ids


def all_calls(status=None):
    path = "/calls?pageSize=100" + (f"&status={status}" if status else "")
    return ok("GET", path)["items"]


def settled(ids):
    calls = {c["id"]: c for c in all_calls()}
    return all(calls[i]["status"] in TERMINAL for i in ids)


def nav(page, name):
    return page.get_by_role("navigation", name="Console").get_by_role("link", name=name, exact=True)


def main(page, context):
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # Two calls that stay PENDING (scheduled next year): one to cancel from the page, one
    # whose cancel the API will refuse.
    later = {"scriptId": "renewal-v2", "scheduledAt": time.strftime("%Y-01-01T09:00:00Z", time.gmtime(time.time() + 400 * 86400))}
    to_cancel = ok("POST", "/calls", {"to": "+14155559001", **later, "metadata": {"customer": "keep-or-cancel"}})["id"]
    to_refuse = ok("POST", "/calls", {"to": "+14155559002", **later})["id"]
    dialed = post_calls(12, 1)
    step(f"posted 12 calls to dial (cap {CAP}, one attempt each, 30% 503s at dial, 50% FAILED outcomes) and 2 scheduled")

    # -- the token prompt, then the overview
    page.goto(BASE + "/console")
    token_box = page.get_by_label("API token")
    expect(token_box).to_be_visible()
    expect(page.locator(".problem")).to_contain_text("401 Unauthorized")
    token_box.fill(TOKEN)
    page.get_by_role("button", name="Use this token").click()
    gauge = page.get_by_role("meter", name="Calls in progress")
    expect(gauge).to_be_visible()
    expect(gauge).to_have_attribute("aria-valuemax", str(CAP))
    step("the page asked for the token and, given it, shows the overview")

    # -- the gauge: the cap is saturated while a dozen calls compete for three slots. The page
    # polls every 5 s; "Refresh now" makes it read /metrics at once, and the gauge must show
    # exactly what that answer said.
    seen = []
    deadline = time.monotonic() + 30
    while True:
        wait_until("3 calls in progress (API)", lambda: ok("GET", "/metrics")["inProgress"] == CAP, 20, 0.05)
        answered = gauge_after_refresh(page)
        seen.append(answered)
        if answered == CAP:
            break
        assert time.monotonic() < deadline, f"the page never read {CAP} in progress; it read {seen}"
    expect(gauge).to_have_attribute("aria-valuetext", re.compile(rf"^{CAP} of {CAP} calls in progress \(100%\), at the cap"))
    expect(page.locator(".gauge-words")).to_have_text("100% of the cap, at the cap")
    step(f"gauge: shows what /metrics answered ({seen}), {CAP} of {CAP} 'at the cap'")

    # -- the last hour: real history from the dials, drawn with the cap
    chart = page.locator("svg.chart-svg")
    expect(chart).to_have_attribute("aria-label", re.compile(rf"last 60 minutes: highest {CAP} of a cap of {CAP}"))
    history = ok("GET", "/metrics/history")
    assert len(history["minutes"]) == 60 and max(m["peakInProgress"] for m in history["minutes"]) == CAP, history
    page.get_by_text("The chart as a table").click()
    expect(page.locator(".chart-data tbody tr")).to_have_count(60)
    step("chart: 60 minutes from /metrics/history, highest 3 of a cap of 3; its table has 60 rows")

    # -- wait for the dialed calls to end; make sure some failed and some completed
    first = 13
    for round_ in range(6):
        wait_until("the dialed calls to end", lambda: settled(dialed), 90)
        by_status = {s: [c for c in all_calls() if c["status"] == s] for s in ("FAILED", "COMPLETED")}
        if by_status["FAILED"] and by_status["COMPLETED"]:
            break
        dialed += post_calls(4, first)
        first += 4
    else:
        raise AssertionError("the simulator never produced both a FAILED and a COMPLETED call")
    failed = all_calls("FAILED")
    step(f"{len(dialed)} dialed calls ended: {len(failed)} FAILED, {len(by_status['COMPLETED'])} COMPLETED")

    # -- the counts per status equal the API's
    metrics = ok("GET", "/metrics")
    for status in STATUSES:
        link = page.locator(f'a.count[data-status="{status}"] .count-number')
        expect(link).to_have_text(str(metrics["calls"][status]), timeout=12_000)
    expect(page.get_by_test_id("outbox-unconfirmed")).to_contain_text(str(metrics["outboxUnconfirmed"]))
    step("counts: " + ", ".join(f"{s} {metrics['calls'][s]}" for s in STATUSES) + " (page = API)")

    # -- the list, filtered by status from its <select>
    nav(page, "Calls").click()
    expect(page.get_by_role("heading", name="Calls", level=1)).to_be_visible()
    page.get_by_label("Status").select_option("FAILED")
    expect(page.get_by_test_id("list-summary")).to_have_text(f"{len(failed)} call{'s' if len(failed) != 1 else ''} with status FAILED")
    rows = page.locator(".calls-table tbody tr")
    expect(rows).to_have_count(len(failed))
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.status)")) == {"FAILED"}
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.callId)") == [c["id"] for c in failed]
    assert "status=FAILED" in page.url
    step(f"list filtered by FAILED: {len(failed)} rows, the API's, newest first")

    # -- search by phone number, then a malformed one (the API's 400 shown plainly)
    search = page.get_by_label("Phone number or call id")
    target = failed[0]
    search.fill(target["to"])
    search.press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-call-id", target["id"])
    expect(page.get_by_label("Status")).to_have_value("FAILED")
    step(f"search by phone {target['to']} (with the FAILED filter): its one call")
    search.fill("+1")
    search.press("Enter")
    problem = page.locator(".problem")
    status, refusal = api("GET", "/calls?status=FAILED&to=%2B1")
    assert status == 400, refusal
    expect(problem).to_contain_text("400 Bad Request")
    expect(problem).to_contain_text(refusal["errors"][0]["message"])
    expect(problem.locator("code").first).to_have_text("to")
    step(f"search by a malformed phone: the API's 400 shown ({refusal['errors'][0]['message']!r})")

    # -- a failed call's page: its fields and a timeline of its dials and webhooks
    by_dial_error = [c for c in failed if c["lastError"] and "503" in c["lastError"]]
    by_webhook = [c for c in failed if c["lastError"] == "provider reported FAILED"]
    checked = []
    for call in (by_dial_error[:1] + by_webhook[:1]):
        search.fill(call["id"])
        search.press("Enter")
        expect(page.get_by_role("heading", level=1)).to_contain_text(call["id"])
        check_call_page(page, call["id"])
        checked.append(call)
        # Back to the list for the next search.
        nav(page, "Calls").click()
        search = page.get_by_label("Phone number or call id")
    assert checked, f"no failed call to check: {failed}"
    shot_of = by_webhook[0] if by_webhook else checked[0]

    # -- cancel from the page: Escape keeps the call, confirming cancels it
    page.goto(f"{BASE}/console#/calls/{to_cancel}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("PENDING")
    expect(details_of(page)).to_contain_text("Not due yet (scheduled)")
    page.get_by_role("button", name="Cancel call…").click()
    dialog = page.get_by_role("dialog", name="Cancel this call?")
    expect(dialog).to_be_visible()
    expect(page.get_by_role("button", name="Keep the call")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert ok("GET", f"/calls/{to_cancel}")["status"] == "PENDING"
    page.get_by_role("button", name="Cancel call…").click()
    page.get_by_role("button", name="Cancel the call").click()
    expect(page.locator(".success")).to_have_text("The call is canceled.")
    expect(page.locator("#announcer")).to_have_text("The call is canceled.")
    expect(page.get_by_role("heading", level=1)).to_contain_text("CANCELED")
    expect(page.get_by_role("button", name="Cancel call…")).to_have_count(0)
    after = ok("GET", f"/calls/{to_cancel}")
    assert after["status"] == "CANCELED" and after["endedAt"], after
    step("cancel from the page (Escape kept it, then confirmed): the API says CANCELED")

    # -- a refused cancel: the call is canceled behind the page's back while it confirms
    page.goto(f"{BASE}/console#/calls/{to_refuse}")
    page.get_by_role("button", name="Cancel call…").click()
    expect(dialog).to_be_visible()
    ok("POST", f"/calls/{to_refuse}/cancel")
    status, conflict = api("POST", f"/calls/{to_refuse}/cancel")
    assert status == 409, conflict
    page.get_by_role("button", name="Cancel the call").click()
    refused = page.get_by_role("alert").filter(has_text="The cancel was refused")
    expect(refused).to_contain_text("409 Conflict")
    expect(refused).to_contain_text(conflict["detail"])
    expect(refused).to_contain_text(conflict["type"])
    expect(page.get_by_role("heading", level=1)).to_contain_text("CANCELED")
    step(f"a refused cancel shows the API's problem: 409 Conflict, {conflict['detail']!r}")

    # -- a narrow screen: nothing wider than the viewport
    page.set_viewport_size({"width": 360, "height": 780})
    for hash_ in ("#/", "#/calls", f"#/calls/{shot_of['id']}"):
        page.goto(f"{BASE}/console{hash_}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        page.wait_for_timeout(300)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{hash_} is {width} px wide on a 360 px screen"
    page.set_viewport_size({"width": 1280, "height": 900})
    step("narrow screen (360 px): overview, list and call pages fit")

    # -- keyboard: the skip link and the navigation
    page.goto(BASE + "/console#/calls")
    page.reload()  # a fresh load: nothing focused yet
    expect(page.get_by_role("heading", name="Calls", level=1)).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    expect(nav(page, "Overview")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_focused()
    step("keyboard: skip link to the content, navigation by Tab and Enter, focus on the new page's heading")

    # -- screenshots for the README: a call's page, then the overview while calls run
    if SCREENSHOTS:
        page.goto(f"{BASE}/console#/calls/{shot_of['id']}")
        expect(page.locator(".timeline-webhook, .timeline-dial").first).to_be_visible()
        page.screenshot(path=os.path.join(SCREENSHOTS, "console-call.png"), full_page=True)
        post_calls(8, 100)
        wait_until("3 calls in progress (API)", lambda: ok("GET", "/metrics")["inProgress"] == CAP, 20)
        page.goto(BASE + "/console#/")
        expect(page.get_by_test_id("gauge-in-progress")).to_have_text(str(CAP), timeout=12_000)
        page.screenshot(path=os.path.join(SCREENSHOTS, "console-overview.png"), full_page=True)
        step(f"screenshots saved in {SCREENSHOTS}: console-overview.png, console-call.png")

    # -- a wrong token: the API's 401, shown in the page (a new tab: its own session storage)
    fresh = context.new_page()
    fresh.on("pageerror", lambda error: errors.append(str(error)))
    fresh.goto(BASE + "/console#/calls")
    fresh.get_by_label("API token").fill("not-the-token")
    fresh.get_by_role("button", name="Use this token").click()
    status, unauthorized = api("GET", "/metrics", token="not-the-token")
    assert status == 401, unauthorized
    shown = fresh.get_by_role("alert").filter(has_text="The API refused the token")
    expect(shown).to_contain_text("401 Unauthorized")
    expect(shown).to_contain_text(unauthorized["detail"])
    expect(shown).to_contain_text(unauthorized["type"])
    expect(fresh.get_by_label("API token")).to_be_visible()
    assert fresh.evaluate("sessionStorage.length") == 0, "a refused token is not kept"
    fresh.close()
    step(f"a wrong token: the API's 401 shown ({unauthorized['detail']!r}), the prompt again")

    assert not errors, f"JavaScript errors in the page: {errors}"


def gauge_after_refresh(page):
    """Has the page read /metrics now; returns the inProgress it got, once the gauge shows it."""
    with page.expect_response(lambda r: r.url.endswith("/metrics") and r.request.method == "GET") as answer:
        page.get_by_role("button", name="Refresh now").click()
    value = answer.value.json()["inProgress"]
    expect(page.get_by_test_id("gauge-in-progress")).to_have_text(str(value))
    return value


def details_of(page):
    return page.get_by_role("region", name="Details")


def check_call_page(page, call_id):
    call = ok("GET", f"/calls/{call_id}")
    webhooks = ok("GET", f"/calls/{call_id}/webhooks")["items"]
    expect(page.get_by_role("heading", level=1)).to_contain_text("FAILED")
    details = details_of(page)
    expect(details).to_contain_text(call["lastError"])
    expect(details).to_contain_text(call["to"])
    expect(page.locator("pre.metadata")).to_contain_text('"customer"')
    assert call["dials"], call
    for dial in call["dials"]:
        entry = page.locator(f'li.timeline-dial[data-attempt="{dial["attempt"]}"]')
        expect(entry).to_contain_text(f"Dial {dial['attempt']}")
        expect(entry).to_contain_text(dial["idempotencyKey"])
        expect(entry).to_contain_text(dial["dialState"])
        if dial["providerCallId"]:
            expect(entry).to_contain_text(dial["providerCallId"])
        if dial["error"]:
            expect(entry.locator(".error-text")).to_have_text(dial["error"])
        if dial["outcome"]:
            expect(entry).to_contain_text(dial["outcome"])
    for webhook in webhooks:
        entry = page.locator(f'li.timeline-webhook[data-webhook-id="{webhook["webhookId"]}"]')
        expect(entry).to_contain_text(f"Webhook: {webhook['status']} for dial {webhook['attempt']}")
        expect(entry).to_contain_text(webhook["providerCallId"])
        expect(entry).to_contain_text(webhook["disposition"] or "")
    expect(page.locator("li.timeline-webhook")).to_have_count(len(webhooks))
    expect(page.locator("li.ended")).to_contain_text(call["lastError"])
    how = "its dial's error" if call["dials"][-1]["error"] else "the provider's FAILED webhook"
    step(f"call page of a FAILED call ({how}): {len(call['dials'])} dial(s), {len(webhooks)} webhook(s), "
         f"lastError {call['lastError']!r}")


if __name__ == "__main__":
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900}, color_scheme="light", locale="en-US", timezone_id="UTC")
        context.set_default_timeout(15_000)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            main(page, context)
        except Exception:
            path = os.path.join(WORK, "failure.png")
            try:
                page.screenshot(path=path, full_page=True)
                print(f"page at the failure: {page.url}, screenshot {path}", file=sys.stderr)
            except Exception as error:  # the page itself may be gone
                print(f"no screenshot: {error}", file=sys.stderr)
            raise
        finally:
            context.close()
    step("all console checks passed")
