"""The portal in a real headless Chromium (Debian's ``chromium``, driven by playwright)
against a live server, a real Celery worker and the real database: sign in, upload, watch
the file become ready, search it, ask and follow up, open a citation at its highlighted
passage, give feedback and find it in the admin's queue.

Set ``KMS_SCREENSHOT_DIR`` (e.g. ``docs/screenshots``) to keep a screenshot of each page.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, Permission, User

from kms.store.models import Domain, Feedback

CHROMIUM = os.environ.get("KMS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: "
                       "install it (apt-get install chromium) or set KMS_CHROMIUM"),
]

POLICY = """# Insulin pump handover

Nurses check the pump's basal rate against the prescription at every handover.
The reservoir is replaced every three days, and the cannula site is changed every 72 hours.

## Alarms

An occlusion alarm means the line is blocked: stop the pump and call the diabetes team.
"""


@pytest.fixture
def people(domain: Domain) -> dict[str, User]:
    staff = Group.objects.create(name="diabetes-nurses")
    domain.member_groups.add(staff)
    nurse = User.objects.create_user("nurse", password="pw-nurse-4471")
    nurse.groups.add(staff)
    nurse.user_permissions.add(Permission.objects.get(codename="add_document"))
    curator = User.objects.create_superuser("curator", password="pw-curator-4471")
    return {"nurse": nurse, "curator": curator}


class Shots:
    def __init__(self, page) -> None:
        self.page = page
        folder = os.environ.get("KMS_SCREENSHOT_DIR")
        self.folder = Path(folder) if folder else None

    def take(self, name: str) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


def test_a_nurse_uploads_searches_asks_follows_a_citation_and_gives_feedback(
        live_server, worker_factory, people, tmp_path, settings) -> None:
    from playwright.sync_api import expect, sync_playwright

    worker_factory(KMS_BM25_REFRESH_SECONDS="1").start()
    policy = tmp_path / "insulin-pump.md"
    policy.write_text(POLICY)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        shots = Shots(page)

        page.goto(f"{live_server.url}/portal/")
        expect(page).to_have_url(f"{live_server.url}/portal/login/?next=/portal/")
        shots.take("login")
        page.get_by_label("User name").fill("nurse")
        page.get_by_label("Password").fill("pw-nurse-4471")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Search")).to_be_visible()

        page.get_by_role("link", name="Documents").click()
        page.get_by_label("Files").set_input_files(str(policy))
        page.get_by_role("button", name="Upload").click()
        expect(page.get_by_text("insulin-pump.md: ")).to_be_visible()
        row = page.locator("tr", has_text="Insulin pump")
        expect(row.locator("[data-label]")).to_have_text("Ready", timeout=120_000)
        expect(row.locator("[data-version]")).to_have_text("v1")
        shots.take("documents")

        page.get_by_role("link", name="Search").click()
        page.get_by_label("Search for").fill("occlusion alarm")
        page.get_by_role("button", name="Search").click()
        result = page.locator(".result").first
        expect(result.get_by_role("link", name="Insulin pump")).to_be_visible()
        marked = result.locator("mark").filter(has_text=re.compile("^occlusion$", re.I))
        expect(marked.first).to_be_visible()
        result.get_by_text("Why this result").click()
        expect(result.get_by_text("Meaning (dense)")).to_be_visible()
        shots.take("search")

        page.get_by_role("link", name="Ask", exact=True).click()
        page.get_by_role("button", name="New conversation").click()
        page.get_by_label("Your question").fill("What does an occlusion alarm on the "
                                                "insulin pump mean?")
        page.get_by_role("button", name="Ask").click()
        first = page.locator("article.turn").nth(0)
        expect(first.locator("a.cite").first).to_be_visible(timeout=60_000)
        expect(first.locator(".answer")).to_contain_text("blocked")
        page.get_by_label("Ask a follow-up").fill("And how often is its cannula site "
                                                  "changed?")
        page.get_by_role("button", name="Ask").click()
        second = page.locator("article.turn").nth(1)
        expect(second.locator(".rewrite")).to_contain_text("Searched as:", timeout=60_000)
        expect(second.locator("a.cite").first).to_be_visible(timeout=60_000)
        expect(second.locator(".answer")).to_contain_text("72 hours")
        shots.take("ask")

        second.get_by_role("button", name="Source 1 was wrong").click()
        expect(second.locator("form.feedback.sent")).to_have_count(1)
        second.locator("a.cite").first.click()
        cited = page.locator("mark#cited")
        expect(cited).to_be_visible()
        expect(cited).to_contain_text("72 hours")
        expect(cited).to_be_in_viewport()
        shots.take("viewer")

        admin = browser.new_page(viewport={"width": 1280, "height": 800})
        admin.goto(f"{live_server.url}/admin/store/feedback/?state__exact=new")
        admin.get_by_label("Username").fill("curator")
        admin.get_by_label("Password").fill("pw-curator-4471")
        admin.get_by_role("button", name="Log in").click()
        queue = admin.locator("#result_list tbody tr")
        expect(queue).to_have_count(1)
        expect(queue.first).to_contain_text("cannula site")
        expect(queue.first).to_contain_text("Unhelpful / wrong")
        Shots(admin).take("admin-feedback")
        browser.close()
    feedback = Feedback.objects.get()
    assert (feedback.target, feedback.rating, feedback.citation) == ("citation", "down", 1)
    assert feedback.document.source == "insulin-pump.md"
