"""Check, in a real headless Chromium, that the MLflow UI shows a sweep: the experiment opens on its runs table (not
the GenAI traces overview), the compare view of the children, the parent run's trade-off figures, the children's
``summary/*`` metrics, and their models: the Models tab, a logged model's page with its metrics, and a registered
version linked to its run (:mod:`~medrobust.experiments.tracking.ui_model_checks`).
Screenshots go to ``--out``.

    sudo apt-get install chromium            # Debian's Chromium; the script drives it with Playwright
    pip install -e ".[ui]"
    python -m medrobust.experiments.tracking.check_mlflow_ui --sweep pneumonia_pgd_eps_cpu        # sqlite:///mlflow.db
    by default

Without ``--server`` it starts ``mlflow server`` on 127.0.0.1 over the tracking store, and stops it at the end.
Exit status 0 when every check passes; each check prints PASS or FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from medrobust.experiments.sweeping.sweep_store import child_runs
from medrobust.experiments.sweeping.sweep_store import find_parent as find_sweep_parent
from medrobust.experiments.tracking.mlflow_logger import experiment_url, resolve_tracking_uri
from medrobust.experiments.tracking.mlflow_server import LocalMlflowServer
from medrobust.experiments.tracking.ui_model_checks import model_checks

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FIGURES = ("plots/tradeoff_adversarial.png", "plots/tradeoff_shift.png", "plots/sweep_curves.png")


def find_parent(client: MlflowClient, sweep: str | None, parent: str | None) -> object:
    if parent:
        return client.get_run(parent)
    for exp in client.search_experiments():
        run = find_sweep_parent(client, exp.experiment_id, sweep)
        if run is not None:
            return run
    raise SystemExit(f"no sweep parent run named {sweep!r} in {client.tracking_uri}")


def _experiment_opens_on_runs(browser: object, url: str, exp: str, parent: str, out: Path) -> tuple[str, bool, str]:
    """The experiment's runs table lists the sweep's runs, reached by the link medrobust prints.

    MLflow 3.17's UI chooses between its GenAI pages (traces) and its model-training pages (runs) with a global
    switch ("GenAI | Model training", kept in the browser, GenAI by default); the ``mlflow.experimentKind`` tag
    medrobust sets is read only by UIs that let the experiment decide. ``?workflowType=machine_learning`` opens the
    runs table in either, and the browser keeps that choice for later visits.
    """
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(experiment_url(url, exp))
    try:
        page.get_by_text("Runs", exact=True).first.wait_for(timeout=60_000)
        page.locator(f'a[href*="{parent}"]').first.wait_for(timeout=60_000)  # the sweep's row (children nest in it)
        ok, detail = (
            True,
            f"runs table lists the sweep's parent run ({page.get_by_text('matching runs').first.inner_text()})",
        )
    except Exception as err:  # a timeout is a failed check
        ok, detail = False, f"runs not listed ({type(err).__name__}); page starts: {page.inner_text('body')[:120]!r}"
    shot = out / "experiment.png"
    page.screenshot(path=str(shot), full_page=False)
    return "experiment link opens its runs table", ok, f"{detail}; {shot}"


#: what the compare view's parallel-coordinates plot shows: the swept budget and seed, clean and worst-case robust
#: balanced accuracy, and balanced accuracy under shift
COMPARE_PARAMS = ("callbacks.AdversarialTraining.eps", "seed_everything")
COMPARE_METRICS = (
    "summary/clean_bal_acc",
    "summary/adv_bal_acc/linf_2_255",
    "summary/adv_bal_acc/linf_8_255",
    "summary/shift_bal_acc",
)


def _compare_view(browser: object, url: str, exp: str, children: list, out: Path) -> tuple[str, bool, str]:
    """MLflow's compare view of the sweep's finished children: its parallel-coordinates plot set to the swept values
    and the ``summary/*`` trade-off metrics (the README's picture, ``compare.png``)."""
    ids = [child.info.run_id for child in children if child.info.status == "FINISHED"]
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(experiment_url(url, exp))  # the model-training pages (not the GenAI ones with their assistant panel)
    page.wait_for_timeout(3_000)
    page.goto(f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp])}")
    try:
        page.get_by_text(f"Comparing {len(ids)} Runs").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2_000)
        with contextlib.suppress(Exception):  # MLflow 3.17's assistant panel, where it opens, hides half the plot
            page.get_by_label("Close").first.click(timeout=3_000)
        page.get_by_role("button", name="Clear All").click(timeout=10_000)
        boxes = page.locator("input[role=combobox]")  # the plot's parameters, then its metrics
        for index, names in ((0, COMPARE_PARAMS), (1, COMPARE_METRICS)):
            for name in names:
                boxes.nth(index).click()
                boxes.nth(index).fill(name)
                page.wait_for_timeout(400)
                page.keyboard.press("Enter")
            page.keyboard.press("Escape")
        page.wait_for_timeout(1_500)
        shown = [name for name in COMPARE_METRICS if name in page.inner_text("body")]
        ok, detail = bool(shown), f"{len(ids)} runs compared on {len(shown)} summary metrics"
    except Exception as err:  # a timeout is a failed check
        ok, detail = False, f"compare view incomplete ({type(err).__name__})"
    shot = out / "compare.png"
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1500, "height": 720})
    return "compare view lines the children up by summary/*", ok, f"{detail}; {shot}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medrobust.experiments.tracking.check_mlflow_ui", description=__doc__.split("\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--sweep", help="the sweep's name (its parent run is found by tag)")
    group.add_argument("--parent", help="the parent run id")
    parser.add_argument("--tracking-uri", default=None, help="store to serve (default: as medrobust)")
    parser.add_argument("--server", default=None, help="an MLflow server already running (else one is started)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", default="runs/ui_check", help="folder for the screenshots")
    ns = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    server = None
    if ns.server:
        url = ns.server.rstrip("/")
        client = MlflowClient(url)
    else:
        uri = resolve_tracking_uri(ns.tracking_uri)
        client = MlflowClient(uri)
        server = LocalMlflowServer(uri).wait()
        url = server.url
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    parent = find_parent(client, ns.sweep, ns.parent)
    exp, pid = parent.info.experiment_id, parent.info.run_id
    children = child_runs(client, exp, pid)
    logged = {a.path for a in client.list_artifacts(pid, "plots")}
    results: list[tuple[str, bool, str]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=ns.chromium, args=CHROMIUM_ARGS)
            results.append(_experiment_opens_on_runs(browser, url, exp, pid, out))
            if children:
                results.append(_compare_view(browser, url, exp, children, out))
            tag = client.get_experiment(exp).tags.get("mlflow.experimentKind")
            results.append(("experiment tagged as model training", tag == "custom_model_development", f"tag {tag!r}"))
            for figure in (f for f in FIGURES if f in logged):
                page = browser.new_page(viewport={"width": 1500, "height": 1000})  # fresh: the SPA keeps selection
                page.goto(f"{url}/#/experiments/{exp}/runs/{pid}/artifacts/{figure}")
                try:
                    # The artifact viewer loads the file into a blob: URL; a decoded image is the proof.
                    page.get_by_text(figure, exact=True).first.wait_for(timeout=60_000)
                    width = page.wait_for_function(
                        "() => Math.max(0, ...[...document.images].map(i => i.complete ? i.naturalWidth : 0))"
                        " > 300 && Math.max(...[...document.images].map(i => i.naturalWidth))",
                        timeout=60_000,
                    ).json_value()
                    ok, detail = True, f"rendered, {width} px wide"
                except Exception as err:  # a timeout is a failed check, not a crash
                    ok, detail = False, f"not rendered ({type(err).__name__})"
                shot = out / f"parent_{Path(figure).stem}.png"
                page.screenshot(path=str(shot), full_page=True)
                results.append((f"parent run shows {figure}", ok, f"{detail}; {shot}"))
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            for child in children[:2]:
                cid = child.info.run_id
                page.goto(f"{url}/#/experiments/{exp}/runs/{cid}")
                wanted = sorted(k for k in child.data.metrics if k.startswith("summary/"))
                try:
                    shown = page.get_by_text("summary/clean_acc", exact=True).first
                    shown.wait_for(timeout=60_000)
                    shown.scroll_into_view_if_needed()  # the screenshot then shows the summary metrics
                    text = page.inner_text("body")
                    missing = [k for k in wanted if k not in text]
                    ok, detail = not missing and bool(wanted), f"{len(wanted) - len(missing)}/{len(wanted)} shown"
                except Exception as err:
                    ok, detail = False, f"summary metrics not shown ({type(err).__name__})"
                shot = out / f"child_{child.data.tags.get('mlflow.runName', cid)}.png".replace("/", "_")
                page.screenshot(path=str(shot), full_page=True)
                results.append(
                    (f"child run {child.data.tags.get('mlflow.runName')} shows summary/*", ok, f"{detail}; {shot}")
                )
            results += model_checks(browser, url, client, exp, children, out)
            browser.close()
    finally:
        if server is not None:
            server.stop()
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if not results:
        print("FAIL  nothing to check: the parent run has no figures and no children")
    return 0 if results and all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
