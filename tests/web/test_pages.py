"""The web pages in a real browser (Debian's Chromium driven by Playwright): every page renders
with real data, a radiologist's feedback shows up in the metrics, tenants stay walled, and the
run keeps a screenshot of every page (test-artifacts/screenshots)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from aifi.dicom.deid import Deidentifier, PseudonymKey
from aifi.exchange.audit_cli import app as audit_app
from aifi.exchange.blobs import open_blob_store
from aifi.exchange.clock import utcnow
from aifi.exchange.db import Database
from aifi.exchange.models import Job, JobInput
from aifi.exchange.server import ExchangeThread
from aifi.exchange.settings import ExchangeSettings
from aifi.phantoms import write_study
from aifi.products import ich_triage, tissue_volume
from aifi.vendor import JobContext, ProductError, ProductResult, VendorClient, Worker
from aifi.web import mount, pages
from support.peers import require_executable

pytestmark = pytest.mark.peer
KEY = "aifi_pages-test-operator-key-0123456789abcd"
PASSWORD = "correct horse battery"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
USERS = {
    "olivia": ("operator", "operator"),
    "rita": ("hospital-a", "radiologist"),
    "victor": ("aifi-reference", "vendor-engineer"),
    "otto": ("other-vendor", "vendor-engineer"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An exchange with users, two admitted products and one completed triage job."""
    tmp = tmp_path_factory.mktemp("pages")
    settings = ExchangeSettings(data_dir=tmp / "exchange", operator_key=KEY, admit_on_register=True)
    with ExchangeThread(settings, extensions=[mount]) as exchange:
        operator = httpx.Client(
            base_url=exchange.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )
        keys = {}
        for org, kind in (
            ("hospital-a", "hospital"), ("aifi-reference", "vendor"), ("other-vendor", "vendor")
        ):  # fmt: skip
            keys[org] = operator.post(
                "/organisations", json={"id": org, "name": org.title(), "kind": kind}
            ).json()["api_key"]
        for username, (org, role) in USERS.items():
            operator.post(
                "/users",
                json={
                    "organisation_id": org, "username": username, "password": PASSWORD,
                    "display_name": username.title(), "role": role,
                },
            ).raise_for_status()  # fmt: skip
        vendor = VendorClient(exchange.url, keys["aifi-reference"])
        vendor.register_product(ich_triage.manifest("aifi-reference"))
        vendor.register_product(tissue_volume.manifest("aifi-reference"))
        hospital = httpx.Client(
            base_url=exchange.url,
            headers={"Authorization": f"Bearer {keys['hospital-a']}"},
            timeout=60,
        )
        hospital.post(
            "/subscriptions", json={"product_id": ich_triage.PRODUCT_ID}
        ).raise_for_status()
        write_study("ct-head", tmp / "raw", seed=2, size="default", haemorrhage_ml=20.0)
        engine = Deidentifier(PseudonymKey(b"p" * 32))
        files = []
        for path in sorted((tmp / "raw").rglob("*.dcm")):
            target = tmp / "pseudo" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            engine.deidentify_file(path, target)
            files.append(target)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        job = hospital.post(
            "/jobs",
            json={"product_id": ich_triage.PRODUCT_ID, "study_uid": study, "idempotency_key": "k"},
        ).json()
        for path in files:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            hospital.put(
                f"/jobs/{job['id']}/inputs/{uid}", content=path.read_bytes()
            ).raise_for_status()
        hospital.post(f"/jobs/{job['id']}/ready", json={"instances": len(files)}).raise_for_status()
        assert Worker(vendor, ich_triage.run, workdir=tmp).run_once(wait_seconds=10) == job["id"]
        yield {
            "url": exchange.url,
            "job_id": job["id"],
            "hospital_key": keys["hospital-a"],
            "vendor_key": keys["aifi-reference"],
            "data_dir": tmp / "exchange",
        }
        for client in (operator, hospital, vendor):
            client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_executable("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        yield browser
        browser.close()


_lock = threading.Lock()


def visit(page: Any, url: str, name: str) -> Any:
    response = page.goto(url)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    return response


def logged_in(browser: Any, site: dict[str, Any], username: str) -> Any:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(site["url"] + "/ui/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site["url"] + "/ui/")
    return page


def test_a_wrong_password_is_refused(browser: Any, site: dict[str, Any]) -> None:
    page = browser.new_page()
    visit(page, site["url"] + "/ui/", "login")
    assert page.url.endswith("/ui/login")
    page.fill("#username", "rita")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert "Unknown user or wrong password" in page.content()


def test_the_operator_sees_the_nation(browser: Any, site: dict[str, Any]) -> None:
    page = logged_in(browser, site, "olivia")
    visit(page, site["url"] + "/ui/", "operator-overview")
    assert "Map of hospitals and products" in page.content()
    assert page.locator("td", has_text="Hospital-A").count() == 1
    # Hospital-A's triage result is done and its gateway has not collected it (there is
    # none here); nothing of it waits for a vendor.
    row = page.locator("tr", has=page.locator("td", has_text="Hospital-A"))
    assert re.fullmatch(r"1 \(\d+ (s|min)\)", row.locator("td.uncollected").inner_text())
    assert row.locator("td.waiting").inner_text() == "–"
    visit(page, site["url"] + "/ui/catalogue", "operator-catalogue")
    assert (
        page.locator("a", has_text="Intracranial").count() >= 1 or "ich" in page.content().lower()
    )
    visit(page, site["url"] + f"/ui/products/{ich_triage.PRODUCT_ID}", "operator-product")
    assert "Dossier gaps" in page.content() and "Record of processing" in page.content()
    visit(page, site["url"] + "/ui/evaluation", "operator-evaluation")
    assert ich_triage.PRODUCT_ID in page.content()
    # The nation sees each product's national drift chart (and any with an alert): here the
    # one triage product's, with the month of its one positive study.
    figures = page.locator("figure.p-chart")
    captions = figures.locator("figcaption").all_inner_texts()
    assert captions == [f"{ich_triage.PRODUCT_ID} — national"]
    assert figures.locator("circle.point").count() == 1
    assert figures.locator("svg").first.bounding_box()["width"] > 100
    # The page opens on the last twelve months; a past year has none of these jobs, and months
    # backwards are refused with the reason.
    shown = page.locator(".period-shown").inner_text()
    assert shown.endswith(f"to {utcnow():%Y-%m}"), shown
    page.fill("input[name=since]", "2020-01")
    page.fill("input[name=until]", "2020-12")
    with page.expect_navigation():
        page.click("form.period button")
    visit(page, page.url, "operator-evaluation-2020")
    assert page.locator(".period-shown").inner_text() == "2020-01 to 2020-12"
    # One click for a recent quarter: this one, named as the page names it.
    now = utcnow()
    quarter = (now.month - 1) // 3 + 1
    with page.expect_navigation():
        page.click(f"nav.period-shortcuts a:text-is('{now.year} Q{quarter}')")
    first = 3 * (quarter - 1) + 1
    shown = f"{now.year}-{first:02d} to {now.year}-{first + 2:02d}"
    assert page.locator(".period-shown").inner_text() == shown
    assert page.locator("nav.period-shortcuts b").inner_text() == f"{now.year} Q{quarter}"
    page.goto(site["url"] + "/ui/evaluation?since=2020-01&until=2020-12")
    assert "No jobs requested in 2020-01 to 2020-12." in page.inner_text("main")
    assert page.locator("figure.p-chart").count() == 0
    backwards = visit(
        page,
        site["url"] + "/ui/evaluation?since=2026-05&until=2026-03",
        "operator-evaluation-backwards",
    )
    assert backwards.status == 422
    assert "since (2026-05) is after until (2026-03)" in page.inner_text("main")
    # The form keeps the months as typed, to correct them; no figures stand under a period
    # that was refused (before, an empty "all time" table did).
    assert page.input_value("input[name=since]") == "2026-05"
    assert page.input_value("input[name=until]") == "2026-03"
    assert page.locator(".period-shown").count() == 0 and page.locator("table").count() == 0
    everything = visit(
        page, site["url"] + "/ui/evaluation?since=&until=", "operator-evaluation-all-time"
    )
    assert everything.status == 200
    assert page.locator(".period-shown").inner_text() == "all time"
    assert page.locator("figure.p-chart").count() == 1
    # The operator archives the log so far (as AIFI_ARCHIVE_AUDIT_AFTER_SECONDS would): the
    # page says where those entries went, and the chain still holds across them.
    tomorrow = f"{utcnow() + timedelta(days=1):%Y-%m-%d}"
    archived = CliRunner().invoke(
        audit_app, ["archive", "--before", tomorrow, "--data-dir", str(site["data_dir"])]
    )
    assert archived.exit_code == 0, archived.output
    visit(page, site["url"] + "/ui/audit", "operator-audit")
    assert "the hash chain is intact" in page.content()
    # The site keeps logging while the command archives, so a second run may follow the first.
    said = page.locator("p.archived").inner_text()
    assert re.search(r"^\d+ older entries are in \d+ archive files? in the object store", said)
    anchor = page.locator("p.anchor code").first.inner_text()
    position, digest = anchor.split(":")
    assert int(position) >= 1 and len(digest) == 64  # what the replicas' journals carry
    # The privacy officer's question, asked on the page: a job's entries, archived or not.
    job = site["job_id"]
    visit(page, site["url"] + f"/ui/audit?object={job}", "operator-audit-search")
    kept = page.locator("table.found td.kept").all_inner_texts()
    assert kept and all(k == "database" or k.startswith("audit/") for k in kept)
    assert any(k.startswith("audit/") for k in kept)  # archived by the command above
    objects = page.locator("table.found td:nth-child(6)").all_inner_texts()
    assert all(job in o for o in objects)
    assert page.input_value("input[name=object]") == job
    # Showing the newest entries was itself an access, logged as a listing of those entries.
    newest = page.locator("table:not(.found) tr").all_inner_texts()
    assert any("operator\toperator\tread\taudit entries " in row for row in newest)
    refused = visit(page, site["url"] + f"/ui/audit?object={job}&since=May", "operator-audit-bad")
    assert refused.status == 422
    assert "since: 'May' is not a day (YYYY-MM-DD)" in page.inner_text("main")
    assert page.locator("table.found").count() == 0
    visit(page, site["url"] + "/ui/priorities", "operator-priorities")
    report = page.context.request.get(site["url"] + "/ui/business-case/report")
    assert report.status == 200 and "NPV" in report.text()
    visit(page, site["url"] + "/ui/business-case", "operator-business-case")
    page.frame_locator("iframe").locator("h1").first.wait_for()
    # The operator sees metadata, never images.
    response = visit(
        page, site["url"] + f"/ui/jobs/{site['job_id']}/key-image.png", "operator-key-image"
    )
    assert response.status == 403


def test_a_radiologists_feedback_shows_up_in_the_metrics(
    browser: Any, site: dict[str, Any]
) -> None:
    page = logged_in(browser, site, "rita")
    visit(page, site["url"] + "/ui/", "hospital-jobs")
    assert "completed" in page.content()
    visit(page, site["url"] + f"/ui/jobs/{site['job_id']}", "hospital-job")
    assert "Triage positive" in page.content()
    # The radiologist sees which version of the product read the study.
    assert page.locator(".product-version").inner_text() == f"version {ich_triage.VERSION}"
    image = page.locator("img.key")
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0
    # Drawn from pixels: on record as a read of the job's results.
    entries = httpx.get(
        site["url"] + "/audit", params={"limit": 5000}, headers={"Authorization": f"Bearer {KEY}"}
    ).json()
    drawn = [e for e in entries if e["object_id"] == f"{site['job_id']}/key-image.png"]
    assert drawn and {(e["action"], e["organisation_id"]) for e in drawn} == {
        ("read", "hospital-a")
    }
    page.check("input[name=agreement][value=disagree]")
    page.check("input[name=radiologist_positive][value=no]")
    page.fill("textarea[name=correction]", "calcification, not blood")
    with page.expect_navigation():
        page.click("text=Save feedback")
    visit(page, site["url"] + f"/ui/jobs/{site['job_id']}", "hospital-job-feedback")
    assert "Recorded: disagree" in page.inner_text("main")
    visit(page, site["url"] + "/ui/evaluation", "hospital-metrics")
    row = page.locator("tr", has_text="hospital-a").first
    cells = dict(zip(headers_of(page), row.locator("td").all_inner_texts(), strict=True))
    assert cells["Agree"].startswith("0 %") and cells["Disagree"].startswith("100 %")  # 0/1, 1/1
    assert cells["Not delivered"] == "–"  # the job is not acknowledged: nothing said yet
    # A hospital sees its own drift charts beside the national ones.
    captions = page.locator("figure.p-chart figcaption").all_inner_texts()
    assert sorted(captions) == sorted(
        f"{ich_triage.PRODUCT_ID} — {where}" for where in ("hospital-a", "national")
    )
    visit(page, site["url"] + "/ui/priorities", "hospital-priorities")
    page.fill("input[name=area]", "fracture detection on radiographs")
    page.select_option("select[name=benefit]", "5")
    with page.expect_navigation():  # the form posts and the page comes back with the score
        page.click("text=Save score")
    assert "fracture detection on radiographs" in page.content()
    assert visit(page, site["url"] + "/ui/audit", "hospital-audit-refused").status == 403
    # The gateway could not file the results: the job page and the evaluation say so.
    headers = {"Authorization": f"Bearer {site['hospital_key']}"}
    acknowledged = httpx.post(
        site["url"] + "/jobs/acknowledge",
        json={"job_ids": [site["job_id"]], "not_delivered": {site["job_id"]: "unfileable"}},
        headers=headers,
    )
    assert acknowledged.status_code == 200, acknowledged.text
    visit(page, site["url"] + f"/ui/jobs/{site['job_id']}", "hospital-job-not-delivered")
    said = page.locator("dd.delivery")
    assert (
        said.inner_text()
        == "results not delivered: they could not be filed in the PACS as they are"
    )
    assert "bad" in str(said.get_attribute("class"))
    visit(page, site["url"] + "/ui/evaluation", "hospital-metrics-not-delivered")
    row = page.locator("tr", has_text="hospital-a").first
    cells = dict(zip(headers_of(page), row.locator("td").all_inner_texts(), strict=True))
    assert cells["Not delivered"] == "100 % (1/1)"


def headers_of(page: Any) -> list[str]:
    return list(page.locator("tr").first.locator("th").all_inner_texts())


def test_vendors_see_their_own_products_only(browser: Any, site: dict[str, Any]) -> None:
    page = logged_in(browser, site, "victor")
    visit(page, site["url"] + "/ui/", "vendor-home")
    assert ich_triage.PRODUCT_ID in page.content()
    visit(page, site["url"] + f"/ui/products/{ich_triage.PRODUCT_ID}", "vendor-product")
    assert "Dossier gaps" in page.content()
    visit(page, site["url"] + "/ui/jobs", "vendor-jobs")
    other = logged_in(browser, site, "otto")
    visit(other, site["url"] + "/ui/", "other-vendor-home")
    assert ich_triage.PRODUCT_ID not in other.content()
    response = visit(
        other, site["url"] + f"/ui/products/{ich_triage.PRODUCT_ID}", "other-vendor-refused"
    )
    assert response.status == 404
    assert (
        visit(other, site["url"] + f"/ui/jobs/{site['job_id']}", "other-vendor-job").status == 404
    )


def test_evaluation_per_version_names_the_version_that_ran_each_job(
    browser: Any, site: dict[str, Any]
) -> None:
    """A vendor compares its versions in practice: ticked, the page has a row per version,
    with when it ran, and the period shortcuts keep the choice."""
    page = logged_in(browser, site, "victor")
    visit(page, site["url"] + "/ui/evaluation", "vendor-evaluation")
    assert "Version" not in headers_of(page)
    page.check("input[name=by_version]")
    with page.expect_navigation():
        page.click("form.period button")
    visit(page, page.url, "vendor-evaluation-per-version")
    assert page.is_checked("input[name=by_version]")
    rows = page.locator("tr", has_text=ich_triage.PRODUCT_ID)
    assert rows.count() == 2  # hospital-a's and the national row, each of the one version
    job = httpx.get(
        site["url"] + f"/jobs/{site['job_id']}",
        headers={"Authorization": f"Bearer {site['vendor_key']}"},
    ).json()
    day = job["created_at"][:10]
    for n in range(2):
        cells = dict(
            zip(headers_of(page), rows.nth(n).locator("td").all_inner_texts(), strict=True)
        )
        # Its one day of jobs, and the day the vendor published it (the site's first).
        assert cells["Version"] == f"{ich_triage.VERSION}\n{day}\npublished {day}"
        assert cells["Uptake"] == "–"  # eligible studies are counted per product
    shortcut = page.locator("nav.period-shortcuts a").first
    assert "by_version=1" in str(shortcut.get_attribute("href"))


def pseudonymised_study(folder: Path, seed: int) -> tuple[list[Path], str]:
    """A small phantom study as a gateway sends it: its files and its Study Instance UID."""
    write_study("ct-head", folder / "raw", seed=seed, size="small")
    engine = Deidentifier(PseudonymKey(bytes([seed]) * 32))
    files = []
    for path in sorted((folder / "raw").rglob("*.dcm")):
        files.append(folder / "pseudo" / path.name)
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        engine.deidentify_file(path, files[-1])
    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_evaluation_per_version_flags_a_version_the_catalogue_never_named(
    browser: Any, site: dict[str, Any], tmp_path: Path
) -> None:
    """Workers still running versions the vendor never published (0.9, and a 63-character
    name, ending in a space as a failure stored before the exchange refused such names had
    it) fail jobs of a product published as 1.0.0: the page flags each version as not in the
    catalogue, shows the space, stays within the window, and gives a published version its
    publication day."""
    product = "version-check"
    versions = ["0.9", "1.0.0-" + "rc" * 28 + " "]
    failed: list[str] = []

    def old_version(_context: JobContext) -> ProductResult:
        raise ProductError("no brain in the field of view")

    with (
        httpx.Client(
            base_url=site["url"], headers={"Authorization": f"Bearer {site['hospital_key']}"}
        ) as hospital,
        VendorClient(site["url"], site["vendor_key"]) as vendor,
    ):
        vendor.register_product({**tissue_volume.manifest("aifi-reference"), "id": product})
        hospital.post("/subscriptions", json={"product_id": product}).raise_for_status()
        for n, version in enumerate(versions):
            files, study = pseudonymised_study(tmp_path / str(n), seed=9 + n)
            job = hospital.post(
                "/jobs",
                json={"product_id": product, "study_uid": study, "idempotency_key": study,
                      "instances": len(files)},
            ).json()  # fmt: skip
            for path in files:
                uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                hospital.put(
                    f"/jobs/{job['id']}/inputs/{uid}", content=path.read_bytes()
                ).raise_for_status()
            worker = Worker(
                vendor, old_version, workdir=tmp_path, product_versions={product: version.strip()}
            )
            assert worker.run_once(wait_seconds=10) == job["id"]
            failed.append(job["id"])
        database = Database(ExchangeSettings(data_dir=site["data_dir"]).resolved_database_url())
        with database.session() as session:  # stored so before the rule
            session.execute(
                update(Job).where(Job.id == failed[1]).values(product_version=versions[1])
            )
        database.dispose()
        said = hospital.get("/evaluation", params={"by_version": "true"}).json()
    page = logged_in(browser, site, "victor")
    visit(page, site["url"] + "/ui/evaluation?by_version=1", "vendor-evaluation-unpublished")
    rows = page.locator("tr", has_text=product)
    assert rows.count() == 4  # hospital-a's and the national row of each version that ran
    shown = {"0.9": "0.9", versions[1]: f"“{versions[1]}”"}  # a space at the end is shown
    for n in range(4):
        cell = rows.nth(n).locator("td.version")
        name = cell.locator(".name").inner_text()
        assert name in shown.values()
        flag = cell.locator(".unpublished")
        assert flag.inner_text() == "not in the catalogue" and flag.is_visible()
        assert "no record of this version's publication" in str(flag.get_attribute("title"))
        assert cell.locator(".published").count() == 0
    # However long a version's name, the page fits the window (a wide table scrolls in it).
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    # The published version's cell shows its publication day, and has no flag.
    [first] = {r["published_on"] for r in said if r["product_id"] == ich_triage.PRODUCT_ID}
    published = page.locator("tr", has_text=ich_triage.PRODUCT_ID).first.locator("td.version")
    assert published.locator(".unpublished").count() == 0
    assert published.locator(".published").inner_text() == f"published {first}"


def test_the_live_list_shows_the_latest_jobs_first(
    browser: Any, site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hospital passes the page's length within days (300 studies a day): the list must stay
    live, not freeze on the first jobs it ever had. Here the page holds two."""
    monkeypatch.setattr(pages, "LIVE_JOBS", 2)
    newer = []
    with httpx.Client(
        base_url=site["url"], headers={"Authorization": f"Bearer {site['hospital_key']}"}
    ) as hospital:
        for n in range(3):
            created = hospital.post(
                "/jobs",
                json={
                    "product_id": ich_triage.PRODUCT_ID,
                    "study_uid": f"2.25.{9000 + n}",
                    "idempotency_key": f"later-{n}",
                },
            )
            created.raise_for_status()
            newer.append(created.json()["id"])
    page = logged_in(browser, site, "rita")
    visit(page, site["url"] + "/ui/jobs", "hospital-jobs-latest-first")
    shown = page.locator("table tr td:first-child a").all_inner_texts()
    assert shown == [newer[2][:8], newer[1][:8]]


def test_a_job_whose_images_the_exchange_lost_says_so_and_is_not_the_products_failure(
    browser: Any, site: dict[str, Any], tmp_path: Path
) -> None:
    """An image of the study lost from the exchange's store before the product read it (the
    store restored to an earlier moment): the vendor's worker fails the job, the job's page
    says the exchange lost the images, and the product's evaluation does not count the
    failure against it."""
    settings = ExchangeSettings(data_dir=site["data_dir"], operator_key=KEY)
    database = Database(settings.resolved_database_url())
    blobs = open_blob_store(settings.resolved_blob_url(), settings.upload_spool)
    files, study = pseudonymised_study(tmp_path, seed=5)
    with (
        httpx.Client(
            base_url=site["url"], headers={"Authorization": f"Bearer {site['hospital_key']}"}
        ) as hospital,
        VendorClient(site["url"], site["vendor_key"]) as vendor,
    ):
        hospital.post("/subscriptions", json={"product_id": tissue_volume.PRODUCT_ID})
        job = hospital.post(
            "/jobs",
            json={"product_id": tissue_volume.PRODUCT_ID, "study_uid": study,
                  "idempotency_key": "lost-images", "instances": len(files)},
        ).json()  # fmt: skip
        first, *rest = files
        uid = pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID
        hospital.put(f"/jobs/{job['id']}/inputs/{uid}", content=first.read_bytes())
        with database.session() as session:
            [key] = session.scalars(select(JobInput.blob_key).where(JobInput.job_id == job["id"]))
        blobs.delete(key)  # lost before the job opened to vendors
        for path in rest:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            hospital.put(
                f"/jobs/{job['id']}/inputs/{uid}", content=path.read_bytes()
            ).raise_for_status()
        worker = Worker(vendor, tissue_volume.run, workdir=tmp_path)
        assert worker.run_once(wait_seconds=10) == job["id"]
        failed = hospital.get(f"/jobs/{job['id']}").json()
    database.dispose()
    assert failed["state"] == "failed" and failed["inputs_lost_at"] is not None
    page = logged_in(browser, site, "rita")
    visit(page, site["url"] + f"/ui/jobs/{job['id']}", "hospital-job-images-lost")
    said = page.locator("dd.inputs-lost")
    assert said.inner_text().startswith("lost from the exchange's store")
    visit(page, site["url"] + "/ui/evaluation", "hospital-metrics-images-lost")
    row = page.locator("tr", has_text=tissue_volume.PRODUCT_ID).first
    cells = dict(zip(headers_of(page), row.locator("td").all_inner_texts(), strict=True))
    assert cells["Volume"] == "1"
    # Not the product's failure, and not hidden: counted apart.
    assert " ".join(cells["Failure rate"].split()) == "– 1 with images lost by the exchange"
