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


def api(method, path, body=None, token=TOKEN, content_type="application/json"):
    """The API as any client sees it: (status, parsed JSON body). A str body is sent as is."""
    data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def ok(method, path, body=None, content_type="application/json"):
    status, data = api(method, path, body, content_type=content_type)
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


def campaign_with_calls(name, rows, max_concurrency=None, as_csv=True):
    """A campaign created through the API and given `rows` ((phone, scheduledAt or None)) in
    one bulk add, as CSV or JSON; returns (campaign, the new calls' ids in row order)."""
    body = {"name": name, "scriptId": "renewal-v2"}
    if max_concurrency:
        body["maxConcurrency"] = max_concurrency
    campaign = ok("POST", "/campaigns", body)
    if as_csv:
        lines = ["to,scheduledAt,customer"] + [f"{to},{at or ''},{name.split()[0].lower()}-{n}" for n, (to, at) in enumerate(rows)]
        added = ok("POST", f"/campaigns/{campaign['id']}/calls", "\n".join(lines) + "\n", content_type="text/csv")
    else:
        calls = [{"to": to, **({"scheduledAt": at} if at else {})} for to, at in rows]
        added = ok("POST", f"/campaigns/{campaign['id']}/calls", {"calls": calls})
    assert added["created"] == len(rows) and added["rejected"] == 0, added
    return campaign, [r["id"] for r in added["rows"]]


def campaign_calls(campaign_id, status=None):
    path = f"/calls?pageSize=100&campaignId={campaign_id}" + (f"&status={status}" if status else "")
    return ok("GET", path)["items"]


def js_number(value):
    """A JSON number as JavaScript's String() writes it (3600.0 → "3600")."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def ended_words(progress):
    ended = sum(progress["calls"][s] for s in ("COMPLETED", "FAILED", "EXPIRED", "CANCELED"))
    total = progress["total"]
    return f"{ended} of {total} call{'' if total == 1 else 's'} ended ({100 * ended // total}%)"


def in_progress_words(progress):
    if progress["maxConcurrency"] is None:
        return f"{progress['inProgress']} (no limit of its own)"
    return f"{progress['inProgress']} of {progress['maxConcurrency']}"


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
    # Two campaigns: "Spring renewals" (at most 2 in progress) with 4 calls to dial now and 3
    # scheduled next year, sent as CSV; "Autumn follow-ups" with 2 scheduled, sent as JSON.
    spring, spring_ids = campaign_with_calls(
        "Spring renewals", [(f"+1415555{2000 + n}", None) for n in range(4)]
        + [(f"+1415555{2100 + n}", later["scheduledAt"]) for n in range(3)], max_concurrency=2)
    autumn, _ = campaign_with_calls(
        "Autumn follow-ups", [(f"+1415555{2200 + n}", later["scheduledAt"]) for n in range(2)], as_csv=False)
    dialed += spring_ids[:4]
    step("created 2 campaigns through the API: 7 calls added as CSV (4 due now), 2 as JSON")

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

    check_campaigns(page, spring, autumn)

    # -- a narrow screen: nothing wider than the viewport
    page.set_viewport_size({"width": 360, "height": 780})
    for hash_ in ("#/", "#/calls", f"#/calls/{shot_of['id']}", "#/campaigns", f"#/campaigns/{spring['id']}",
                  f"#/calls?campaignId={spring['id']}"):
        page.goto(f"{BASE}/console{hash_}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        page.wait_for_timeout(300)
        page.screenshot(path=os.path.join(WORK, f"narrow-{hash_.split('?')[0].strip('#/').replace('/', '-') or 'overview'}.png"), full_page=True)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{hash_} is {width} px wide on a 360 px screen"
    page.set_viewport_size({"width": 1280, "height": 900})
    step("narrow screen (360 px): overview, list, call, campaigns, campaign and campaign-filtered list pages fit")

    # -- keyboard: the skip link and the navigation
    page.goto(BASE + "/console#/calls")
    page.reload()  # a fresh load: nothing focused yet
    expect(page.get_by_role("heading", name="Calls", level=1)).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    for _ in range(4):  # Forget token, Campaigns, Calls, Overview
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
        winter, _ = campaign_with_calls("Winter renewals", [(f"+1415555{2300 + n}", None) for n in range(8)])
        wait_until("3 calls in progress (API)", lambda: ok("GET", "/metrics")["inProgress"] == CAP, 20)
        page.goto(BASE + "/console#/")
        expect(page.get_by_test_id("gauge-in-progress")).to_have_text(str(CAP), timeout=12_000)
        expect(page.locator(f'li.campaign-item[data-campaign-id="{winter["id"]}"]')).to_be_visible()
        page.screenshot(path=os.path.join(SCREENSHOTS, "console-overview.png"), full_page=True)
        step(f"screenshots saved in {SCREENSHOTS}: console-overview.png, console-call.png, console-campaign.png")

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


def check_campaigns(page, spring, autumn):
    """The campaign views against the API: the overview, the list, a campaign's page, its
    calls in the filtered list, a call's link to it; pause, resume and cancel from the page;
    a refused pause showing the API's 409."""
    sid, aid = spring["id"], autumn["id"]

    # -- the overview: the campaigns /metrics lists (running or paused first), each with the
    # progress GET /campaigns/{id} answers
    nav(page, "Overview").click()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    listed = ok("GET", "/metrics")["campaigns"]
    expected_order = ([c["id"] for c in listed if c["status"] in ("ACTIVE", "PAUSED")]
                      + [c["id"] for c in listed if c["status"] not in ("ACTIVE", "PAUSED")])[:5]
    assert sid in expected_order and aid in expected_order, (expected_order, listed)
    items = page.locator("li.campaign-item")
    expect(items).to_have_count(len(expected_order))
    assert items.evaluate_all("items => items.map(i => i.dataset.campaignId)") == expected_order
    for campaign in (spring, autumn):
        api_view = ok("GET", f"/campaigns/{campaign['id']}")
        progress = api_view["progress"]
        item = page.locator(f'li.campaign-item[data-campaign-id="{campaign["id"]}"]')
        expect(item.locator("a.campaign-link")).to_have_text(campaign["name"])
        expect(item.locator(".badge")).to_have_text(api_view["status"])
        expect(item.get_by_test_id("campaign-ended")).to_have_text(ended_words(progress))
        expect(item.get_by_test_id("campaign-in-progress")).to_have_text(in_progress_words(progress))
        expect(item.get_by_test_id("campaign-pending")).to_have_text(str(progress["calls"]["PENDING"]))
        expect(item.get_by_test_id("campaign-failed")).to_have_text(str(progress["calls"]["FAILED"]))
    # The overview with its campaigns on a narrow screen (later, they are canceled).
    page.set_viewport_size({"width": 360, "height": 780})
    expect(items.first).to_be_visible()
    page.wait_for_timeout(300)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the overview with campaigns is {width} px wide on a 360 px screen"
    page.set_viewport_size({"width": 1280, "height": 900})
    spring_now = ok("GET", f"/campaigns/{sid}")["progress"]
    step(f"overview: campaigns in /metrics's order, Spring renewals {ended_words(spring_now)}, "
         f"in progress {in_progress_words(spring_now)}, {spring_now['calls']['PENDING']} waiting (page = API); it fits a 360 px screen")

    # -- the campaigns list: GET /campaigns, newest first
    nav(page, "Campaigns").click()
    expect(page.get_by_role("heading", name="Campaigns", level=1)).to_be_visible()
    campaigns = ok("GET", "/campaigns?pageSize=25")["items"]
    rows = page.locator(".campaigns-table tbody tr")
    expect(rows).to_have_count(len(campaigns))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.campaignId)") == [c["id"] for c in campaigns]
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.status)") == [c["status"] for c in campaigns]
    step(f"campaigns list: {len(campaigns)} rows, GET /campaigns's, in its order and statuses")

    # -- a campaign's page: its progress and failures as the API answered the page's request
    page.get_by_role("link", name="Spring renewals", exact=True).click()
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text("Spring renewals")
    # The page polls too: every answer it gets is kept, and what it shows is compared with
    # the last one (its ETA moves with time).
    answers = []

    def keep_answer(response):
        if response.url.endswith(f"/campaigns/{sid}") and response.request.method == "GET":
            answers.append(response)
    page.on("response", keep_answer)
    with page.expect_response(lambda r: r.url.endswith(f"/campaigns/{sid}") and r.request.method == "GET"):
        page.get_by_role("button", name="Refresh", exact=True).click()
    shown = answers[-1].json()
    progress_region = page.get_by_role("region", name="Progress")
    expect(heading).to_contain_text(shown["status"])
    p = shown["progress"]
    for status in STATUSES:
        expect(progress_region.locator(f'a.count[data-status="{status}"] .count-number')).to_have_text(str(p["calls"][status]))
    expect(progress_region.get_by_test_id("campaign-ended")).to_have_text(ended_words(p))
    expect(progress_region.get_by_test_id("campaign-total")).to_have_text(str(p["total"]))
    expect(progress_region.get_by_test_id("campaign-in-progress")).to_have_text(in_progress_words(p))
    expect(progress_region.get_by_test_id("campaign-dials")).to_have_text(str(p["dialsLastHour"]))
    eta = progress_region.get_by_test_id("campaign-eta")

    def eta_is_the_last_answers():
        last = answers[-1].json()["progress"]["etaSeconds"]
        return eta.get_attribute("data-seconds") == ("" if last is None else js_number(last))
    wait_until("the page's ETA to be the last answer's", eta_is_the_last_answers, 12)
    page.remove_listener("response", keep_answer)
    assert p["total"] == 7 and p["dialsLastHour"] >= 4, p
    failures = page.get_by_role("region", name="Failures")
    if p["failures"]:
        groups = failures.locator("tbody tr")
        expect(groups).to_have_count(len(p["failures"]))
        for n, group in enumerate(p["failures"]):
            expect(groups.nth(n).locator("td").first).to_have_text(str(group["calls"]))
            expect(groups.nth(n)).to_contain_text(group["status"])
            expect(groups.nth(n).locator(".cell-error")).to_have_text(group["lastError"] or "")
    else:
        expect(failures.get_by_test_id("no-failures")).to_be_visible()
    step(f"campaign page: counts, {ended_words(p)}, {p['dialsLastHour']} dials in the last hour, "
         f"ETA {p['etaSeconds']} s, {len(p['failures'])} failure group(s) (page = the API's answer)")
    if SCREENSHOTS:
        page.screenshot(path=os.path.join(SCREENSHOTS, "console-campaign.png"), full_page=True)

    # -- its calls: the list filtered by the campaign, as GET /calls?campaignId= answers
    page.get_by_test_id("campaign-calls-link").click()
    expect(page.get_by_role("heading", name="Calls", level=1)).to_be_visible()
    assert f"campaignId={sid}" in page.url, page.url
    expect(page.get_by_label("Campaign", exact=True)).to_have_value(sid)
    theirs = campaign_calls(sid)
    rows = page.locator(".calls-table tbody tr")
    expect(page.get_by_test_id("list-summary")).to_have_text(f"{len(theirs)} calls with campaign Spring renewals")
    expect(rows).to_have_count(len(theirs))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.callId)") == [c["id"] for c in theirs]
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.campaignId)")) == {sid}
    expect(rows.first.locator('td[data-label="Campaign"]')).to_have_text("Spring renewals")
    page.get_by_label("Status").select_option("PENDING")
    pending = campaign_calls(sid, "PENDING")
    expect(page.get_by_test_id("list-summary")).to_have_text(f"{len(pending)} calls with status PENDING, campaign Spring renewals")
    expect(rows).to_have_count(len(pending))
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.callId)") == [c["id"] for c in pending]
    # Choosing another campaign in the filter lists its calls.
    page.get_by_label("Campaign", exact=True).select_option(aid)
    expect(rows).to_have_count(len(campaign_calls(aid, "PENDING")))
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.campaignId)")) == {aid}
    step(f"calls filtered by campaign: {len(theirs)} rows = GET /calls?campaignId=, "
         f"{len(pending)} with PENDING too; the other campaign's when chosen")

    # -- a call's page links to its campaign
    page.goto(f"{BASE}/console#/calls/{pending[0]['id']}")
    link = details_of(page).get_by_test_id("call-campaign")
    expect(link).to_have_text("Spring renewals")
    expect(link).to_have_attribute("href", f"#/campaigns/{sid}")
    link.click()
    expect(heading).to_contain_text("Spring renewals")
    step("a call's page shows its campaign, linked to the campaign's page")

    # -- pause (Escape keeps it running first), resume, cancel: each confirmed, each checked
    # through the API
    page.get_by_role("button", name="Pause…").click()
    dialog = page.get_by_role("dialog", name="Pause this campaign?")
    expect(dialog).to_be_visible()
    expect(page.get_by_role("button", name="Keep it running")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert ok("GET", f"/campaigns/{sid}")["status"] == "ACTIVE"
    page.get_by_role("button", name="Pause…").click()
    page.get_by_role("button", name="Pause the campaign").click()
    expect(page.locator(".success")).to_have_text("The campaign is PAUSED.")
    expect(page.locator("#announcer")).to_have_text("The campaign is PAUSED.")
    assert ok("GET", f"/campaigns/{sid}")["status"] == "PAUSED"
    expect(heading).to_contain_text("PAUSED")
    expect(page.get_by_role("button", name="Pause…")).to_have_count(0)
    step("pause from the page (Escape kept it running, then confirmed): the API says PAUSED")

    page.get_by_role("button", name="Resume…").click()
    expect(page.get_by_role("dialog", name="Resume this campaign?")).to_be_visible()
    page.get_by_role("button", name="Resume the campaign").click()
    expect(page.locator(".success")).to_have_text("The campaign is ACTIVE.")
    assert ok("GET", f"/campaigns/{sid}")["status"] == "ACTIVE"
    expect(heading).to_contain_text("ACTIVE")
    step("resume from the page: the API says ACTIVE")

    waiting = [c["id"] for c in campaign_calls(sid, "PENDING")]
    assert len(waiting) == 3, waiting
    page.get_by_role("button", name="Cancel campaign…").click()
    expect(page.get_by_role("dialog", name="Cancel this campaign?")).to_contain_text("Its 3 waiting calls will be canceled")
    page.get_by_role("button", name="Cancel the campaign").click()
    expect(page.locator(".success")).to_have_text("The campaign is CANCELED; 3 waiting calls were canceled.")
    after = ok("GET", f"/campaigns/{sid}")
    assert after["status"] == "CANCELED" and after["canceledAt"], after
    assert campaign_calls(sid, "PENDING") == [], "PENDING calls left in a canceled campaign"
    statuses = {c["id"]: c["status"] for c in campaign_calls(sid)}
    assert all(statuses[i] == "CANCELED" for i in waiting), statuses
    expect(heading).to_contain_text("CANCELED")
    expect(progress_region.locator('a.count[data-status="PENDING"] .count-number')).to_have_text("0")
    expect(progress_region.locator('a.count[data-status="CANCELED"] .count-number')).to_have_text(str(after["progress"]["calls"]["CANCELED"]))
    for name in ("Pause…", "Resume…", "Cancel campaign…"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    step("cancel from the page: the API says CANCELED and its 3 PENDING calls CANCELED; no action left on the page")

    # -- a refused pause: the campaign is canceled behind the page's back while it confirms
    page.goto(f"{BASE}/console#/campaigns/{aid}")
    expect(heading).to_contain_text("Autumn follow-ups")
    page.get_by_role("button", name="Pause…").click()
    expect(page.get_by_role("dialog", name="Pause this campaign?")).to_be_visible()
    ok("POST", f"/campaigns/{aid}/cancel")
    status, conflict = api("POST", f"/campaigns/{aid}/pause")
    assert status == 409, conflict
    page.get_by_role("button", name="Pause the campaign").click()
    refused = page.get_by_role("alert").filter(has_text="The pause was refused")
    expect(refused).to_contain_text("409 Conflict")
    expect(refused).to_contain_text(conflict["detail"])
    expect(refused).to_contain_text(conflict["type"])
    expect(heading).to_contain_text("CANCELED")
    step(f"a refused pause shows the API's problem: 409 Conflict, {conflict['detail']!r}")


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
