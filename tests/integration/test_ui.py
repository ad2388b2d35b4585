"""The Prefect UI as a person uses it: Debian's chromium, headless, driven by Playwright against
`squeeze serve` on the session's API server. One flow run, started from the manual deployment's
custom-run form; screenshots of every step go to tests/screenshots/ (git-ignored)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from squeeze.config.files import load_params
from squeeze.config.params import COMPRESSION_STAGES, Params
from tests.conftest import PROJECT
from tests.integration.test_deployments import serving, wait_for_deployments

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright downloads no browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
SCREENSHOTS = PROJECT / "tests" / "screenshots"
RUN_TIMEOUT_MS = 600_000
# the one candidate the form's run builds: a quantized teacher (no training, a few seconds)
QUICK_CANDIDATES = {
    "quantize": {"teacher_int8": {"upstream": "teacher", "mode": "static", "weights": "int8",
                                  "per_channel": True, "calibration_samples": 64,
                                  "fp32_first_layer": False}},
}  # fmt: skip


@pytest.fixture
def ui(prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The UI's base URL; the API's is exported for `squeeze serve`, which polls every second."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    return prefect_api.removesuffix("/api")


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh headless chromium page, 1280×800."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make setup does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            browser.close()


def shot(page: Any, name: str) -> Path:
    """Save a screenshot of the viewport as tests/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")  # toasts shown, not fading in
    return path


def field(scope: Any, label: str) -> Any:
    """The schema-form property labelled `label` (a top-level one reads 'label (Optional)')."""
    title = re.compile(rf"^{re.escape(label)}( \(Optional\))?$")
    header = scope.locator(".schema-form-property__label").filter(has_text=title).first
    return header.locator(
        "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '),"
        " ' schema-form-property ')][1]"
    )


def sections() -> dict[str, str]:
    """Every Params section as the form labels it -> its description in the schema.

    The form labels a property by its key, title-cased; a section's description is the one of
    its model ($ref) or of the field itself. Markdown code spans render without backticks.
    """
    schema = Params.model_json_schema()
    found = {}
    for key, prop in schema["properties"].items():
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        text = prop.get("description") or schema["$defs"].get(ref, {}).get("description")
        label = prop.get("title") or key.replace("_", " ").title()
        assert text, f"params section {key!r} has no description for the form"
        found[label] = " ".join(text.replace("`", "").split())
    return found


def runs_of(deployment_id: Any) -> list[Any]:
    """The flow runs of a deployment, from the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=only)


def choose(page: Any, select: Any, option: str) -> None:
    """Pick an option of a Prefect select (its popover opens from the keyboard; a synthetic
    click on the button toggles it open and shut at once)."""
    select.locator("button.p-select-button__control").focus()
    page.keyboard.press("ArrowDown")
    page.locator(".p-select-option", has_text=re.compile(rf"^{re.escape(option)}$")).click()
    select.locator(".p-select-button__value", has_text=option).wait_for()


def show_artifacts(page: Any, run_url: str) -> None:
    """The run's page, Artifacts tab, scrolled to the tabs: the cards are in a virtual scroller
    that renders only those in view, and below the run graph they are not."""
    page.goto(run_url)
    page.locator("li.p-tab", has_text="Artifacts").click()
    page.get_by_role("heading", name="Task runs").wait_for()  # the artifacts have loaded
    page.get_by_role("tablist").evaluate("tabs => tabs.scrollIntoView()")


def open_artifact(page: Any, run_url: str, key: str) -> None:
    """From the run's Artifacts tab, open the artifact card `key`."""
    show_artifacts(page, run_url)
    page.get_by_text(key, exact=True).click()
    page.wait_for_url(re.compile(r"/artifacts/artifact/"))


@pytest.mark.slow
def test_a_person_runs_the_manual_deployment_from_the_ui_form_and_reads_the_report(
    workspace: Path, ui: str, page: Any
) -> None:
    from playwright.sync_api import expect

    params = load_params(workspace)
    policy = next(p for p in ("fastest", "most_accurate") if p != params.gate.policy)
    with serving(workspace) as proc:
        manual = wait_for_deployments(["manual"], proc, workspace, timeout_s=120)["manual"]
        # the session's server may hold runs of this deployment name from earlier tests
        before = {r.id for r in runs_of(manual.id)}
        page.goto(f"{ui}/deployments/deployment/{manual.id}/run")
        form = field(page, "params")
        form.wait_for()

        # 1. every params section, with the description its model or field has in the schema
        for label, description in sections().items():
            section = field(form, label)
            expect(section).to_be_visible()
            expect(section.locator(".p-label__description").first).to_have_text(description)
        shot(page, "1-form")

        # 2. a value out of range is refused: a message names the field, no run is created
        val_fraction = field(field(form, "Ingest"), "Val Fraction").locator("input")
        val_fraction.fill("0.7")
        page.get_by_role("button", name="Submit").click()
        # (the UI shows the API's refusal in two identical toasts)
        refusal = page.locator(".p-toast__card", has_text="'params.ingest.val_fraction'")
        expect(refusal.first).to_contain_text("0.7 is greater than or equal to the maximum of 0.5")
        val_fraction.scroll_into_view_if_needed()
        shot(page, "2-form-refuses-val-fraction")
        assert {r.id for r in runs_of(manual.id)} == before
        # dismissed (they overlap, so a pointer click would reach only the top one)
        refusal.locator(".p-toast__close button").evaluate_all("bs => bs.forEach(b => b.click())")
        expect(refusal).to_have_count(0)
        val_fraction.fill(str(params.ingest.val_fraction))

        # 3. a quick run: one cheap candidate, and another gate policy, all typed in the form
        for stage in COMPRESSION_STAGES:
            code = field(form, stage.title()).locator("textarea")
            code.fill(json.dumps(QUICK_CANDIDATES.get(stage, {})))
        gate_policy = field(field(form, "Gate"), "Policy")
        choose(page, gate_policy, policy)
        gate_policy.scroll_into_view_if_needed()
        shot(page, "3-form-gate-policy")
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url(re.compile(rf"/deployments/deployment/{manual.id}(\?|$)"))
        (flow_run,) = [r for r in runs_of(manual.id) if r.id not in before]
        run_url = f"{ui}/runs/flow-run/{flow_run.id}"
        page.goto(run_url)
        # the run page refreshes itself; the state badge ends in a final state
        badge = page.locator(".state-badge").first
        expect(badge).to_have_text(
            re.compile("Completed|Failed|Crashed|Cancelled"), timeout=RUN_TIMEOUT_MS
        )
        shot(page, "4-run")
        expect(badge).to_have_text("Completed")
    assert load_params(workspace).gate.policy == policy  # the run wrote what the form sent
    assert set(load_params(workspace).quantize) == {"teacher_int8"}

    # 4. the run's artifacts: the candidates table, the gate's verdicts and decision, the plot
    show_artifacts(page, run_url)
    for key in ("candidates", "gate-verdicts", "gate-decision", "pareto"):
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    shot(page, "5-run-artifacts")

    open_artifact(page, run_url, "candidates")
    table = page.get_by_role("table").first
    for name in ("teacher", "teacher_int8"):
        expect(table.get_by_text(name, exact=True)).to_be_visible()
    shot(page, "6-artifact-candidates")

    open_artifact(page, run_url, "gate-decision")
    expect(page.get_by_text(f"policy {policy}")).to_be_visible()
    shot(page, "7-artifact-gate-decision")

    open_artifact(page, run_url, "pareto")
    plot = page.get_by_role("img", name="Pareto plot")
    expect(plot).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())
    shot(page, "8-artifact-pareto")
