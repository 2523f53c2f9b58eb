"""One end-to-end run in a real browser: log in, launch, watch live progress, see it finish.

Drives Debian's chromium (installed by `scripts/ensure-chromium`) against pytest-django's
live server, with two real RQ workers doing the job.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from django.urls import reverse

from project.models import Job

# Playwright's sync API runs an event loop in the main thread, and Django refuses database
# calls from a thread with a running loop. The test still reads the database only outside the
# `sync_playwright()` block: inside it, Django would open a second connection (connections
# are per context) that nothing closes, and the test database could not be dropped.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def test_an_operator_launches_a_job_and_watches_it_finish_without_a_reload(
    live_server, workers, operator
):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing; scripts/ensure-chromium installs it")
    from playwright.sync_api import expect, sync_playwright

    workers(2)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)

            # Logging in through the login page lands on the dashboard.
            page.goto(live_server.url + reverse("home"))
            page.fill("input[name=username]", "olivia")
            page.fill("input[name=password]", "pw-olivia")
            page.click("button:has-text('Log in')")
            expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

            # Launch a job that takes a few seconds: 120 items x 150 ms / 4 at a time.
            form = page.locator("#launch-sleep")
            form.locator("input[name=sleep-items]").fill("120")
            form.locator("input[name=sleep-latency_ms]").fill("150")
            form.locator("input[name=sleep-run-concurrency]").fill("4")
            form.locator("button[type=submit]").click()
            page.wait_for_url(re.compile(r"/jobs/\d+/$"))
            job_id = int(re.search(r"/jobs/(\d+)/$", page.url)[1])
            page.evaluate("window.__noReload = 1")

            # The processed count climbs at least twice while the page stays loaded.
            processed = page.locator("[data-testid=processed] strong")
            seen = [int(processed.inner_text().replace(",", ""))]
            deadline = time.monotonic() + 60
            while len(seen) < 3 and time.monotonic() < deadline:
                value = int(processed.inner_text().replace(",", ""))
                if value > seen[-1]:
                    seen.append(value)
                page.wait_for_timeout(100)
            assert len(seen) >= 3, f"processed count did not advance twice: {seen}"

            # It finishes: final badge, tallies and summary, still without a reload.
            status = page.locator("[data-testid=status]")
            expect(status).to_have_text("Succeeded", timeout=60_000)
            expect(page.locator("[data-testid=summary]")).to_contain_text("120 succeeded")
            expect(processed).to_have_text("120")
            # The item table reloaded once at the end: no row is left waiting or running.
            expect(page.locator("#items .badge-succeeded").first).to_be_visible()
            expect(page.locator("#items .badge-running, #items .badge-pending")).to_have_count(0)
            assert page.evaluate("window.__noReload") == 1

            # Polling has stopped: no request for the progress partial in the next 3 s.
            progress_url = reverse("job_progress", args=[job_id])
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.wait_for_timeout(3000)
            assert [url for url in requests if progress_url in url] == []
        finally:
            browser.close()

    job = Job.objects.get()
    assert job.pk == job_id
    assert job.source == Job.Source.DASHBOARD
    assert job.started_by == operator
    assert job.status == Job.Status.SUCCEEDED
