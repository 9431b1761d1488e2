"""The model pages of MLflow's UI, checked in a real browser (issue 26.7): the experiment's Models tab lists the
runs' logged models, a logged model's page shows its linked metrics and its run, and a registered model's version
page names the run it came from. Called by :mod:`~medrobust.experiments.tracking.check_mlflow_ui`."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

Result = tuple[str, bool, str]


def model_checks(browser: object, url: str, client: MlflowClient, exp: str, runs: list, out: Path) -> list[Result]:
    """One result per page: nothing to check (no result) where no run has a logged model (tag ``model.id``). The
    run checked in detail is one whose model was registered (``medrobust register``), if any."""
    with_model = [r for r in runs if r.data.tags.get("model.id")]
    if not with_model:
        return []
    models = {r.info.run_id: client.get_logged_model(r.data.tags["model.id"]) for r in with_model}
    versions = {k: json.loads(m.tags.get("mlflow.modelVersions", "[]")) for k, m in models.items()}
    run = next((r for r in with_model if versions[r.info.run_id]), with_model[0])
    model_id, registered = models[run.info.run_id].model_id, versions[run.info.run_id][-1:]
    names = [r.info.run_name for r in with_model]
    results = [
        _page(browser, f"{url}/#/experiments/{exp}/models", names, out / "models_tab.png",
              f"experiment's Models tab lists the {len(names)} runs' logged models by source run"),
        _page(browser, f"{url}/#/experiments/{exp}/models/{model_id}",
              ["test/bal_acc", run.info.run_name, *(v["name"] for v in registered)], out / "logged_model.png",
              f"logged model {model_id} shows its test metrics, its run and its registered versions"),
    ]  # fmt: skip
    for version in registered:
        name, number = version["name"], version["version"]
        results.append(
            _page(browser, f"{url}/#/models/{name}", [f"Version {number}"], out / "registered.png",
                  f"registered model {name} lists version {number}")
        )  # fmt: skip
        address = f"{url}/#/models/{name}/versions/{number}"
        check = f"version {number} of {name} links run {run.info.run_name}"
        results.append(_page(browser, address, [run.info.run_name], out / "model_version.png", check))
    return results


def _page(browser: object, address: str, wanted: list[str], shot: Path, name: str) -> Result:
    """Open ``address``; PASS when every text of ``wanted`` shows within a minute."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(address)
    try:
        for text in wanted:
            page.get_by_text(text).first.wait_for(timeout=60_000)
        ok, detail = True, f"shows {', '.join(wanted)}"
    except Exception as err:  # a timeout is a failed check
        missing = [text for text in wanted if text not in page.inner_text("body")]
        ok, detail = False, f"missing {missing} ({type(err).__name__})"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    return name, ok, f"{detail}; {shot}"
