"""``medrobust construct``: Ilyas et al.'s robust and nonrobust datasets from a trained model, as MedMNIST files.

    medrobust construct mlflow:pneumonia_nonrobust/source_standard --kind det --out d_det.npz
    medrobust fit --config experiments/configs/features/train_constructed.yaml \
        --data.path runs:/<run id>/dataset/d_det.npz

The file's training split is constructed (:mod:`medrobust.lightning_modules.features.feature_datasets`); its val and
test splits are the original ones. The work is done in chunks under ``<out>.parts`` (a killed construction continues
where it stopped, with the same result), and the file is logged to MLflow with its lineage (:func:`record`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from medrobust.datamodules.cache import save_reproducible
from medrobust.datamodules.files import MedMNISTSpec, load_arrays, locate, resolve_roots
from medrobust.datamodules.remote import fetch_dataset
from medrobust.datamodules.tensor_dataset import TensorImageDataset
from medrobust.experiments.construction.construct_chunks import ChunkStore
from medrobust.experiments.construction.construct_record import record
from medrobust.lightning_modules.attacks.threat import NORMS, Threat
from medrobust.lightning_modules.features import feature_datasets as fd
from medrobust.lightning_modules.features.teacher import Teacher, load_teacher
from medrobust.utilities.errors import InputError
from medrobust.utilities.hashing import file_md5
from medrobust.utilities.mlflow_source import is_remote


@dataclass
class Settings:
    """Everything a constructed file depends on (recorded as ``construct.*`` params)."""

    kind: str
    eps: float | None
    step: float
    steps: int
    norm: str
    start: str
    seed: int
    subsample: int | None
    chunk_size: int
    source: str
    source_run_id: str | None
    data_md5: str
    #: representation matching stops once no image's best loss improved by this much (relative) in 50 steps
    tolerance: float | None = None
    #: the share of relabelled images the source must read as their new label for a det/rand set to be valid
    min_success: float = 0.95

    def check(self) -> None:
        attack = fd.is_attack(self.kind)
        if self.norm not in NORMS:
            raise InputError(f"Unknown norm {self.norm!r}; valid: {list(NORMS)}")
        if attack and not (self.eps is not None and self.eps > 0 and math.isfinite(self.eps)):
            raise InputError(f"eps must be > 0 for {self.kind}, got {self.eps}")
        if not attack and self.eps is not None:
            raise InputError(f"{self.kind} matches representations with no ball around the image; eps does not apply")
        if not self.step > 0:
            raise InputError(f"step must be > 0, got {self.step}")
        if self.steps < 1 or self.chunk_size < 1 or (self.subsample is not None and self.subsample < 1):
            raise InputError("steps, chunk size and subsample must be >= 1")
        if self.start not in ("image", "noise"):
            raise InputError(f"Unknown start {self.start!r}; valid: image (another training image), noise")
        if not 0.0 <= self.min_success <= 1.0:
            raise InputError(f"min_success: a share in [0, 1], got {self.min_success}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise InputError(f"match tolerance must be > 0 (or unset: every step), got {self.tolerance}")


def source_data(
    teacher: Teacher, root: str | None, path: str | None, flag: str | None = None
) -> tuple[MedMNISTSpec, Path]:
    """The MedMNIST file to construct from: ``path`` (a file of dataset ``flag``), else the source's own training
    data (its flag and size, found under ``root`` or the roots it was trained with). The source must fit the data's
    task, classes and channels."""
    data = teacher.data_hparams or {}
    flag, size = flag or data.get("flag"), data.get("size", 28)
    if flag is None:
        raise InputError(f"{teacher.source!r} does not record its training data; give --data-path and --flag")
    spec = MedMNISTSpec(flag, size)
    own = data.get("path") if flag == data.get("flag") and not root else None  # the very file it was trained on
    if path or own:
        file = fetch_dataset(path or own) if is_remote(path or own) else Path(path or own).expanduser()
        if not file.is_file():
            raise InputError(f"{file} does not exist; give --data-path or --data-root")
    else:
        file = locate(spec, resolve_roots(root or data.get("root")))
    hp = teacher.hparams
    if (hp.get("num_classes"), hp.get("in_chans"), hp.get("task", spec.task)) != (
        spec.num_classes,
        spec.in_chans,
        spec.task,
    ):
        raise InputError(
            f"{teacher.source!r} is a {hp.get('task')} model with {hp.get('num_classes')} classes and "
            f"{hp.get('in_chans')} channels; {flag} is {spec.task} with {spec.num_classes} classes and "
            f"{spec.in_chans} channels"
        )
    if spec.task == "multilabel":
        raise InputError("constructed datasets relabel each image with one target class; multi-label tasks have none")
    return spec, file


def plan(settings: Settings, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Per training image, from the seed alone: which images (``index``), their new labels and start images."""
    generator = torch.Generator().manual_seed(settings.seed)
    n = len(labels)
    index = torch.arange(n)
    if settings.subsample is not None and settings.subsample < n:
        index = torch.randperm(n, generator=generator)[: settings.subsample].sort().values
    targets = fd.construction_targets(settings.kind, labels[index], num_classes, generator)
    other = torch.randint(n - 1, (len(index),), generator=generator)
    other = other + (other >= index).long()  # another image than the one it stands for
    return {"index": index, "targets": targets, "other": other}


def build_chunk(net: torch.nn.Module, settings: Settings, images: torch.Tensor, todo: dict, k: int) -> dict:
    """Construct chunk ``k``: uint8 images, labels, and per-image diagnostics."""
    lo = k * settings.chunk_size
    sl = slice(lo, lo + settings.chunk_size)
    index, targets = todo["index"][sl], todo["targets"][sl]
    x = images[index]
    if fd.is_attack(settings.kind):
        threat = Threat(settings.norm, settings.eps or 0.0).ball()
        x_new = fd.targeted_pgd(net, x, targets, threat, settings.steps, settings.step)
        out = fd.quantize_within(x, x_new, threat)
    else:
        if settings.start == "noise":
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + k)
            start = torch.rand(x.shape, generator=generator)
        else:
            start = images[todo["other"][sl]]
        matched, ran = fd.match_representation(net, start, x, settings.steps, settings.step, settings.tolerance)
        out = fd.quantize_within(x, matched, None)
    x_out = out.float() / 255
    with torch.no_grad():
        predicted = net(x_out).argmax(1)
    gap = fd.representation_gap(net, x_out, x)
    return {
        "images": out.numpy(),
        "labels": targets.numpy().astype(np.uint8).reshape(-1, 1),
        "source_labels": todo["labels"][index].numpy().astype(np.uint8).reshape(-1, 1),
        "hit": (predicted == targets).numpy(),
        "l2": (x_out - x).flatten(1).norm(dim=1).numpy(),
        "linf": (x_out - x).flatten(1).abs().amax(1).numpy(),
        "gap": gap.numpy(),
        "steps_run": np.full(len(x), ran if not fd.is_attack(settings.kind) else settings.steps),
    }


def construct(teacher: Teacher, spec: MedMNISTSpec, file: Path, settings: Settings, out: Path) -> dict:
    """Build ``out`` (resuming from ``<out>.parts``) and return its diagnostics; the chunks are removed at the end."""
    settings.check()
    arrays = load_arrays(spec, file)
    train = TensorImageDataset.from_numpy(*arrays["train"], multilabel=False)
    images, labels = train.images.float() / 255, train.labels
    todo = plan(settings, labels, spec.num_classes) | {"labels": labels}
    store = ChunkStore(out.with_name(out.name + ".parts"), asdict(settings) | {"out": out.name})
    n_chunks = math.ceil(len(todo["index"]) / settings.chunk_size)
    finished = [k for k in range(n_chunks) if store.done(k)]
    started, n_built = time.perf_counter(), 0
    with tqdm(total=len(todo["index"]), unit="img", desc=f"construct {settings.kind}", dynamic_ncols=True) as bar:
        bar.update(sum(min(settings.chunk_size, len(todo["index"]) - k * settings.chunk_size) for k in finished))
        for k in range(n_chunks):
            if store.done(k):
                continue
            chunk = build_chunk(teacher.net, settings, images, todo, k)
            store.save(k, chunk)
            bar.update(len(chunk["images"]))
            n_built += len(chunk["images"])
    seconds = time.perf_counter() - started
    built = store.gather(n_chunks)
    channels_last = built["images"].transpose(0, 2, 3, 1) if spec.in_chans == 3 else built["images"][:, 0]
    files = {"train_images": channels_last, "train_labels": built["labels"]}
    for split in ("val", "test"):
        files[f"{split}_images"], files[f"{split}_labels"] = arrays[split]
    save_reproducible(out, files)
    store.remove()
    return diagnostics(built, seconds, n_built)


def diagnostics(built: dict, seconds: float, n_built: int) -> dict:
    """What the run records about the construction: how often the source model reads the new label, distances, the
    share of labels that changed, and the time per image (of this invocation)."""
    changed = built["labels"][:, 0] != built["source_labels"][:, 0]
    hit = built["hit"].astype(bool)
    return {
        "n": len(changed),
        "source_agrees": float(hit.mean()),
        "source_agrees_changed": float(hit[changed].mean()) if changed.any() else float("nan"),
        "label_changed": float(changed.mean()),
        "l2_mean": float(built["l2"].mean()),
        "l2_max": float(built["l2"].max()),
        "linf_max": float(built["linf"].max()),
        "feature_gap_mean": float(built["gap"].mean()),
        "steps_run_mean": float(built["steps_run"].mean()) if "steps_run" in built else float("nan"),
        "seconds": seconds,
        "seconds_per_image": seconds / max(n_built, 1),
    }


def construct_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="medrobust construct",
        description="Build a robust or nonrobust training set from a trained model (Ilyas et al. 2019) as a "
        "MedMNIST-format .npz (val/test stay the original ones) and log it to MLflow with its lineage. Killed, it "
        "continues from <out>.parts with the same result.",
    )
    parser.add_argument("source", help="checkpoint file, runs:/<id>/<path>, run id, or mlflow:<experiment>/<run name>")
    parser.add_argument("--kind", required=True, help=f"one of {list(fd.KINDS)}")
    parser.add_argument("--out", required=True, type=Path, help="the .npz to write")
    parser.add_argument("--eps", type=float, default=None, help="attack budget (default: the paper's 0.5, scaled)")
    parser.add_argument("--step", type=float, default=None, help="step size (default: the paper's 0.1, scaled)")
    parser.add_argument("--steps", type=int, default=None, help="iterations (default: 100 for det/rand, 1000 else)")
    parser.add_argument("--norm", default="l2", help="attack norm for det/rand: l2 (paper) or linf")
    parser.add_argument("--start", default="image", help="robust/nonrobust start: image (another one) or noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-success",
        type=float,
        default=0.95,
        help="det/rand: the share of relabelled images the source must read as their new label, else the set is "
        "marked invalid (construct.valid=false)",
    )
    parser.add_argument(
        "--match-tol",
        type=float,
        default=None,
        help="robust/nonrobust: stop once no image's best feature loss improved by this much (relative) in 50 steps",
    )
    parser.add_argument("--subsample", type=int, default=None, help="construct from this many training images")
    parser.add_argument("--chunk-size", type=int, default=256, help="images per resumable chunk (and per batch)")
    parser.add_argument("--data-root", default=None, help="where the source's MedMNIST file is (default: its own)")
    parser.add_argument("--data-path", default=None, help="construct from this .npz instead")
    parser.add_argument("--flag", default=None, help="the MedMNIST dataset of --data-path (default: the source's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment-name", default="constructed_datasets")
    parser.add_argument("--run-name", default=None, help="default: <kind>_from_<source run name or file>")
    parser.add_argument("--no-mlflow", action="store_true", help="write the file only")
    ns = parser.parse_args(argv)
    return run_construct(ns)


def run_construct(ns: argparse.Namespace) -> int:
    from medrobust.experiments.tracking.mlflow_logger import resolve_tracking_uri

    uri = resolve_tracking_uri(ns.tracking_uri)
    if ns.out.exists() and not ns.overwrite:
        raise InputError(f"{ns.out} exists; pass --overwrite to replace it")
    if ns.out.suffix != ".npz":
        raise InputError(f"--out {ns.out} must end in .npz")
    attack = fd.is_attack(ns.kind)
    teacher = load_teacher(ns.source, uri, what="Construction source")
    spec, file = source_data(teacher, ns.data_root, ns.data_path, getattr(ns, "flag", None))
    eps, step = fd.paper_settings((spec.in_chans, spec.size, spec.size))
    settings = Settings(
        kind=ns.kind,
        eps=ns.eps if ns.eps is not None or not attack else eps,
        step=ns.step if ns.step is not None else step,
        steps=ns.steps or (fd.PAPER["attack_steps"] if attack else fd.PAPER["match_steps"]),
        norm=ns.norm,
        start=ns.start,
        seed=ns.seed,
        subsample=ns.subsample,
        chunk_size=ns.chunk_size,
        source=ns.source,
        source_run_id=teacher.run_id,
        data_md5=file_md5(file),
        tolerance=getattr(ns, "match_tol", None),
        min_success=getattr(ns, "min_success", 0.95),
    )
    settings.check()
    print(
        f"construct {settings.kind} from {ns.source} ({teacher.hparams['model_name']}) on {spec.flag} {spec.size}px: "
        f"{f'{settings.norm} eps {settings.eps:.4g}' if attack else 'feature matching'}, step {settings.step:.4g}, "
        f"{settings.steps} steps{'' if ns.eps or not attack else ' (paper eps 0.5 / step 0.1 scaled by sqrt(d/3072))'}"
    )
    stats = construct(teacher, spec, file, settings, ns.out)
    md5 = file_md5(ns.out)
    print(
        f"wrote {ns.out} (md5 {md5}): {stats['n']} images; the source model reads the new label on "
        f"{stats['source_agrees']:.1%} ({stats['source_agrees_changed']:.1%} of changed labels); mean L2 change "
        f"{stats['l2_mean']:.3f}, feature gap {stats['feature_gap_mean']:.3f}; {stats['seconds_per_image'] * 1e3:.1f} "
        "ms per image"
    )
    stats["valid"] = float(not attack or stats["source_agrees_changed"] >= settings.min_success)
    if not stats["valid"]:
        print(
            f"warning: INVALID: the source model reads the new label on only {stats['source_agrees_changed']:.1%} of "
            f"the relabelled images (< {settings.min_success:.0%}); the rest carry the old class's features under the "
            "new label (Ilyas et al.'s attacks succeed nearly always). The run is tagged construct.valid=false and "
            "study tables list it apart; a larger --eps or more --steps makes the dataset what the protocol assumes.",
            file=sys.stderr,
        )
    if not ns.no_mlflow:
        run_id = record(uri, ns, settings, teacher, spec, ns.out, md5, stats)
        print(f"MLflow run {run_id}; train on it with --data.path runs:/{run_id}/dataset/{ns.out.name}")
    return 0
