"""OOD and adversarial detection: the streaming Gaussian fit, agreement with pytorch-ood and scikit-learn, the
calibration, DetectionEvaluation's errors, and the callback end to end on 2 DDP processes (gloo) against 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED_MEDMNIST, quiet_trainer
from mlflow import MlflowClient
from test_cli import TINY, medrobust, runs

from medrobust.callbacks import DetectionEvaluation
from medrobust.datamodules.medmnist import MedMNISTDataModule
from medrobust.experiments.cli import MedRobustCLI
from medrobust.lightning_modules.attacks.pgd import PGD
from medrobust.lightning_modules.attacks.threat_model import LinfThreat
from medrobust.lightning_modules.classifier import ClassifierModule
from medrobust.lightning_modules.detection import (
    ClassGaussians,
    Energy,
    FeatureEnsemble,
    Mahalanobis,
    MaxSoftmax,
    adaptive_objective,
    calibrate,
    detection_metrics,
    parse_targets,
)
from medrobust.lightning_modules.detection.calibration import batched_layer_scores
from medrobust.lightning_modules.features.feature_taps import capture, pooled
from medrobust.utilities.errors import InputError

DETECTION_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "detection"


def _features(n: int = 600, d: int = 12, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + 3 * labels[:, None].double() + 5.0
    return z, labels


def test_streaming_fit_equals_one_shot_fit() -> None:
    z, y = _features()
    streamed = ClassGaussians(3)
    for i in range(0, len(z), 37):  # uneven batches
        streamed.update(z[i : i + 37], y[i : i + 37])
    means, precision = streamed.finalize()
    zn, yn = z.numpy(), y.numpy()
    one_shot_means = np.stack([zn[yn == c].mean(0) for c in range(3)])
    centred = zn - one_shot_means[yn]
    one_shot_precision = np.linalg.inv(centred.T @ centred / len(zn))  # full rank: the pseudo-inverse is the inverse
    np.testing.assert_allclose(means.numpy(), one_shot_means, rtol=0, atol=1e-6)
    np.testing.assert_allclose(precision.numpy(), one_shot_precision, rtol=1e-6, atol=1e-6)
    # two "processes" with half the data each, summed, are the one-process fit
    halves = [ClassGaussians(3), ClassGaussians(3)]
    halves[0].update(z[::2], y[::2])
    halves[1].update(z[1::2], y[1::2])
    other = halves[1]
    totals = iter([other.count, other.sums, other.outer])
    halves[0].reduce(lambda t: t + next(totals))
    np.testing.assert_allclose(halves[0].finalize()[1].numpy(), precision.numpy(), rtol=1e-9, atol=1e-9)


def test_singular_covariance_pseudo_inverse_or_shrinkage() -> None:
    z, y = _features(d=6)
    z = torch.cat([z, torch.zeros(len(z), 2, dtype=z.dtype)], dim=1)  # two dead channels: a singular covariance
    g = ClassGaussians(3)
    g.update(z, y)
    _, precision = g.finalize()
    assert torch.isfinite(precision).all() and precision[:, -2:].abs().max() < 1e-9  # dead channels ignored
    shrunk = ClassGaussians(3, shrinkage=0.1)
    shrunk.update(z, y)
    assert torch.linalg.matrix_rank(shrunk.finalize()[1]) == 8
    with pytest.raises(InputError, match="classes \\[2\\] have no samples"):
        empty = ClassGaussians(3)
        empty.update(z[y < 2], y[y < 2])
        empty.finalize()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return ClassifierModule("resnet18", num_classes=3, in_chans=1, task="multiclass").net.eval()


def test_mahalanobis_agrees_with_pytorch_ood_on_the_same_layer() -> None:
    from pytorch_ood.detector import Mahalanobis as OODMahalanobis

    net = _net()
    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.arange(200) % 3
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 200, 64)]
    ours = Mahalanobis(net, ["layer1"], num_classes=3).fit(batches)

    def encoder(images: torch.Tensor) -> torch.Tensor:
        with capture(net.backbone, ["layer1"]) as taps:
            net(images)
        return pooled(taps["layer1"]).double()

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # pytorch-ood allocates its means and covariance in the default dtype
    try:
        with torch.no_grad():
            theirs = OODMahalanobis(encoder).fit_features(encoder(x), y).predict(x)
    finally:
        torch.set_default_dtype(default)
    # theirs is an outlier score: half the squared distance under a covariance not divided by N (64 channels, 200
    # images: full rank, so their small ridge and our pseudo-inverse agree)
    np.testing.assert_allclose(ours.score(x).double().numpy(), (-2 * 200 * theirs).numpy(), rtol=1e-3)


def test_baselines_agree_with_pytorch_ood() -> None:
    from pytorch_ood.detector import EnergyBased
    from pytorch_ood.detector import MaxSoftmax as OODMaxSoftmax

    logits = torch.randn(50, 4) * 3
    torch.testing.assert_close(MaxSoftmax.from_logits(logits), -OODMaxSoftmax.score(logits))
    torch.testing.assert_close(Energy(None, 2.0).from_logits(logits), -EnergyBased.score(logits, t=2.0))


def test_metrics_against_hand_computed_values_sklearn_and_pytorch_ood() -> None:
    from pytorch_ood.metrics import OODMetrics
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2, 0.1, 0.95, 0.85, 0.75, 0.65, 0.55, 0.35, 0.25,
                         0.15, 0.05, 0.99])  # fmt: skip
    s_out = torch.tensor([0.0, 0.02, 0.12, 0.22, 0.32, 0.42, 0.52, 0.04, 0.06, 0.08])
    m = detection_metrics(s_in, s_out)
    # hand count: keeping 95% of in-distribution (19 of 20) puts the threshold at 0.1; outliers >= 0.1: 0.12, 0.22,
    # 0.32, 0.42, 0.52, so 5 of 10 rejected-or-not: TNR = 5/10
    assert m["tnr_at_tpr95"] == pytest.approx(0.5)
    labels = np.r_[np.ones(20), np.zeros(10)]
    scores = np.r_[s_in.numpy(), s_out.numpy()]
    fpr, tpr, _ = roc_curve(labels, scores)
    assert m["tnr_at_tpr95"] == pytest.approx(1 - fpr[np.searchsorted(tpr, 0.95)])
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    reference = OODMetrics()
    reference.update(-torch.cat([s_in, s_out]), torch.cat([torch.zeros(20), -torch.ones(10)]).long())
    theirs = reference.compute()
    assert m["auroc"] == pytest.approx(theirs["AUROC"], abs=1e-6)
    assert m["fpr_at_tpr95_ood"] == pytest.approx(theirs["FPR95TPR"], abs=1e-6)
    # AUPR is scikit-learn's average precision (a step sum); pytorch-ood integrates the same curve by trapezoids
    assert m["aupr_in"] == pytest.approx(average_precision_score(labels, scores))
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -scores))
    assert m["aupr_in"] == pytest.approx(theirs["AUPR-IN"], abs=0.02)
    assert m["aupr_out"] == pytest.approx(theirs["AUPR-OUT"], abs=0.02)
    assert m["detection_acc"] >= 0.5 and (m["n_in"], m["n_out"]) == (20, 10)
    with pytest.raises(InputError, match="both sides"):
        detection_metrics(s_in, torch.zeros(0))


def _fitted_ensemble(n: int) -> tuple:
    """A small net, its generator, ``n`` random images of 3 classes, and a Mahalanobis detector fitted on them with
    its (unfitted) feature ensemble."""
    net = _net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.arange(n) % 3
    mahalanobis = Mahalanobis(net, ["layer3", "layer4"], num_classes=3).fit([(x, y)])
    return net, g, x, y, mahalanobis, FeatureEnsemble(mahalanobis)


def test_calibration_picks_on_validation_and_the_adaptive_attack_lowers_detection() -> None:
    net, g, x, y, _, ensemble = _fitted_ensemble(60)
    outliers = torch.rand(60, 1, 28, 28, generator=g) * 0.3  # darker images
    record = calibrate(ensemble, x, outliers, [0.0, 0.002])
    assert record["noise"] in (0.0, 0.002) and record["best_layer"] in ("layer3", "layer4")
    assert set(record["noises"]) == {"0.0", "0.002"} and ensemble.weight.shape == (2,)
    threat = LinfThreat("8/255")
    plain = PGD(threat, steps=5, random_start=False).perturb(net, x[:20], y[:20])
    adaptive = PGD(threat, steps=5, random_start=False, objective=adaptive_objective(ensemble, 10.0))
    x_adaptive = adaptive.perturb(net, x[:20], y[:20])
    assert (x_adaptive - x[:20]).abs().max() <= 8 / 255 + 1e-6
    assert ensemble.score(x_adaptive).mean() > ensemble.score(plain).mean()  # the attacker follows the detector


def test_the_ensemble_cross_validates_its_regularisation_and_calibration_splits_by_image() -> None:
    """Issue 25.19: C is chosen by cross-validation (Lee et al.'s LogisticRegressionCV), as scikit-learn's own
    LogisticRegressionCV picks it on the same folds; the calibration halves split images, so an image and its copy
    (an adversarial or corrupted version, same id) are never on both sides, even for an odd number of images."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    _, g, x, _, mahalanobis, ensemble = _fitted_ensemble(61)
    copies = (x + 0.05 * torch.randn(61, 1, 28, 28, generator=g)).clamp(0, 1)  # image j's copy is copies[j]
    record = calibrate(ensemble, x, copies, [0.0])
    assert record["split"].startswith("by image") and record["ensemble_c"] == ensemble.chosen_c
    scores = batched_layer_scores(mahalanobis, torch.cat([x, copies]), 0.0).double().numpy()
    labels = np.r_[np.ones(61), np.zeros(61)].astype(int)
    ids = np.r_[np.arange(61), np.arange(61)]
    standardised = (scores - scores.mean(0)) / scores.std(0)
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(standardised, labels, ids))
    for train, test in folds:
        assert not set(ids[train]) & set(ids[test])  # no image on both sides
    theirs = LogisticRegressionCV(Cs=10, cv=folds, scoring="roc_auc", class_weight="balanced", max_iter=1000)
    assert theirs.fit(standardised, labels).C_[0] == pytest.approx(ensemble.chosen_c)
    fixed = FeatureEnsemble(mahalanobis, regularisation=1.0).fit_scores(torch.tensor(scores), torch.tensor(labels))
    assert fixed.chosen_c == 1.0
    with pytest.raises(InputError, match="regularisation"):
        FeatureEnsemble(mahalanobis, regularisation=0)


def test_an_inverted_detector_is_flagged_in_the_study_table(capsys) -> None:
    from medrobust.experiments.studies.detection import figure, inverted, print_table

    auroc = {"mean": 0.31, "lo": 0.28, "hi": 0.34, "n": 3}
    cell = {"auroc": auroc, "tnr_at_tpr95": {"mean": 0.01}, "n_out": {"values": [10]}}
    result = {"standard": {"_calibration": {}, "ood:breastmnist": {"mahalanobis": cell}}}
    print_table(result)
    assert "0.310 [0.280, 0.340] (n=3) (0.01) INVERTED" in capsys.readouterr().out
    assert inverted(0.31) and not inverted(0.5) and not inverted(float("nan"))
    assert any(p.get_hatch() == "//" for p in figure(result).axes[0].patches)


def test_bad_input_gets_a_clear_error(tmp_path, synthetic_npz) -> None:
    with pytest.raises(InputError, match="Unknown detectors \\['odin'\\]"):
        DetectionEvaluation(targets=["pgd:8/255"], detectors=["odin"])
    with pytest.raises(InputError, match="Unknown detection target 'fgsm'"):
        DetectionEvaluation(targets=["fgsm"])
    with pytest.raises(InputError, match="needs a severity"):
        parse_targets(["corruption:gaussian_noise"])
    with pytest.raises(InputError, match="at least one target"):
        DetectionEvaluation(targets=[])
    with pytest.raises(InputError, match="fit_on"):
        DetectionEvaluation(targets=["pgd:8/255"], fit_on="pgd")
    dm = MedMNISTDataModule("pneumoniamnist", path=str(synthetic_npz()))
    model = ClassifierModule("test_resnet", dm.num_classes, dm.in_chans, dm.task)
    with pytest.raises(InputError, match="No feature tap 'layer9'.*act1, layer1"):
        DetectionEvaluation(targets=["pgd:8/255"], layers=["layer9"]).setup(None, model, "test")
    trainer = quiet_trainer(tmp_path, callbacks=[DetectionEvaluation(targets=["ood:breastmnist"], noise=[0])])
    with pytest.raises(InputError, match="add 'ood:breastmnist' to --data.shifts"):
        trainer.test(model, datamodule=dm)


def _detection_args(tmp_path: Path) -> tuple[list[str], list[str]]:
    """The detection study's config with a 4-target overlay (config arguments), and 256/64/64 images of
    PneumoniaMNIST with BreastMNIST as OOD (data arguments)."""
    if (SHARED_MEDMNIST / "breastmnist.npz").is_file():
        data = [f"--data.root={SHARED_MEDMNIST}"]
    else:
        from conftest import write_medmnist_npz

        for flag in ("pneumoniamnist", "breastmnist"):
            write_medmnist_npz(tmp_path / "data" / f"{flag}.npz", flag, n=(256, 64, 64))
        data = [f"--data.root={tmp_path / 'data'}"]
    data += ["--data.subsample={train: 256, val: 64, test: 64}", "--data.batch_size=32", "--data.eval_batch_size=16"]
    data += ["--system_metrics.enabled=false", "--data.shifts=[ood:breastmnist, corruption:gaussian_noise@5]"]
    overlay = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "medrobust.callbacks.DetectionEvaluation",
                    "init_args": {
                        "targets": ["ood:breastmnist", "corruption:gaussian_noise@5", "pgd:8/255", "adaptive:8/255"],
                        "layers": ["layer3", "layer4"],
                        "noise": [0, 0.002],
                        "pgd_steps": 3,
                        "adversarial_pairs": "all",
                    },
                }
            ]
        }
    }
    (tmp_path / "detection.yaml").write_text(yaml.safe_dump(overlay))
    config = [
        "--config",
        str(DETECTION_CONFIG / "pneumonia_detection.yaml"),
        "--config",
        str(tmp_path / "detection.yaml"),
    ]
    return config, data


def _check_detection_run(uri: str, run) -> list[str]:
    """Every target and detector, each test image once, the report and the figures; the ``test/detect/`` keys."""
    metrics = run.data.metrics
    keys = [k for k in metrics if k.startswith("test/detect/")]
    targets = {k.split("/")[3] for k in keys}
    assert targets == {"ood_breastmnist", "gaussian_noise_s5", "pgd3_linf_8_255", "adaptive3_linf_8_255"}
    assert {k.split("/")[2] for k in keys} >= {"msp", "energy", "mahalanobis", "mahalanobis_layer3", "ensemble"}
    assert metrics["test/detect/msp/pgd3_linf_8_255/n_in"] == 64  # each test image once, on 1 process or 2
    assert "summary/detect_auroc/ensemble/ood_breastmnist" in metrics
    # settings once, as the config wrote them; what the callback resolved (the layers it chose) beside them
    params = run.data.params
    assert params["callbacks.DetectionEvaluation.fit_on"] == "fgsm:8/255" and "detection.fit_on" not in params
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
        "plots/detection_roc.png",
        "plots/detection_scores.png",
    }
    report = json.loads(Path(client.download_artifacts(run.info.run_id, "detection.json")).read_text())
    assert report["calibration"]["noise"] in (0, 0.002) and report["settings"]["layers"] == ["layer3", "layer4"]
    return keys


def test_detection_end_to_end(tmp_path, tracking_uri) -> None:
    """One process, in this one (the DDP test below, marked slow, checks that two processes give these numbers)."""
    config, data = _detection_args(tmp_path)
    MedRobustCLI(args=["fit", *config, *TINY, *data, "--trainer.max_epochs=1"])
    (run,) = runs(tracking_uri)
    keys = _check_detection_run(tracking_uri, run)
    aurocs = [run.data.metrics[k] for k in keys if k.endswith("/auroc")]
    assert aurocs and all(0 <= v <= 1 for v in aurocs)


@pytest.mark.slow  # about 40 s on 2 cores; test_detection_end_to_end is its one-process sibling
def test_detection_on_two_ddp_processes_equals_one_process(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config, data = _detection_args(tmp_path)
    two = medrobust(
        "fit",
        *config,
        *TINY,
        *data,
        "--trainer.max_epochs=1",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        cwd=tmp_path,
        timeout=400,
        MLFLOW_TRACKING_URI=uri,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    (run,) = runs(uri)
    metrics = run.data.metrics
    keys = _check_detection_run(uri, run)
    one = medrobust(
        "test", *config, *TINY, *data, f"--ckpt_path={run.data.tags['best_checkpoint']}", cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    (again,) = [r for r in runs(uri) if r.info.run_id != run.info.run_id]
    for key in keys:
        # The adaptive attack ascends the Mahalanobis distances, whose precision matrix amplifies float rounding that
        # depends on how images are batched over processes; its sign steps then differ on a few pixels. Everything
        # else, the fit summed over processes included, is the one-process result.
        tolerance = 0.01 if "/adaptive" in key else 1e-4
        assert again.data.metrics[key] == pytest.approx(metrics[key], abs=tolerance), key


def test_another_datasets_validation_split_serves_as_calibration_outliers(real_root) -> None:
    dm = MedMNISTDataModule("pneumoniamnist", root=str(real_root))
    images = dm.other_dataset("breastmnist", "val")  # DetectionEvaluation(fit_on="ood:breastmnist")
    assert images.shape == (78, 1, 28, 28) and images.dtype == torch.uint8
    with pytest.raises(InputError, match="fit_on"):
        DetectionEvaluation(targets=["pgd:8/255"], fit_on="ood:")
