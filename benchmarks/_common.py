"""Shared set-up for the benchmark scripts: where the data comes from, the timing options, the ratio table."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medrobust.datamodules.files import SPLITS, MedMNISTSpec, absolutize_env_paths, find, resolve_roots  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "medmnist"
absolutize_env_paths()  # a relative MEDMNIST_ROOT means the folder it was given in, not benchmarks/


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument(
        "--root",
        default=None,
        help="folder(s) with the official file (default $MEDMNIST_ROOT, else ../shared/data/medmnist); a synthetic "
        "stand-in is used when none holds it",
    )
    parser.add_argument("--batch-size", type=int, default=128)


def add_timing_args(parser: argparse.ArgumentParser, steps: int, warmup: int, rounds: int = 3) -> None:
    """The model timed, and how: timed steps after warm-up steps, repeated in alternating rounds."""
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--rounds", type=int, default=rounds)


def print_ratios(times: dict[str, list[float]], goals: dict[str, float], column: str) -> None:
    """Median ms/step per entry and its ratio to the first entry (the baseline), against each entry's goal."""
    names = list(times)
    base = statistics.median(times[names[0]])
    width = max(len(column), *map(len, names))
    print(f"{column:<{width}} {'ms/step':>9} {'ratio':>7} {'goal':>7}")
    for name in names:
        t = statistics.median(times[name])
        verdict = "" if name == names[0] else ("ok" if t / base <= goals[name] else "OVER")
        print(f"{name:<{width}} {1e3 * t:9.1f} {t / base:7.2f} {goals[name]:7.2f}  {verdict}")


def data_source(args: argparse.Namespace) -> tuple[dict[str, str], str, bool]:
    """``(datamodule kwargs, root, real)``: the official file when a root holds it; otherwise a synthetic stand-in,
    given to the datamodule as ``path`` (its own MD5 recorded, never checked against the official one) and written
    under the official name in ``root`` for ``medmnist``'s own Dataset."""
    spec = MedMNISTSpec(args.flag, args.size)
    roots = resolve_roots(args.root) if args.root else [*resolve_roots(None), SHARED]
    official = find(spec, roots)
    if official is not None:
        return {"root": str(official.parent)}, str(official.parent), True
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_medmnist_npz

    root = tempfile.mkdtemp(prefix="medrobust-bench-")
    # The official split sizes: medmnist's own Dataset (benchmarks/data_path.py) checks them.
    sizes = spec.n_samples
    path = write_medmnist_npz(Path(root) / spec.filename, args.flag, args.size, n=tuple(sizes[k] for k in SPLITS))
    return {"path": str(path)}, root, False


def training_datamodule(args: argparse.Namespace):
    """``(datamodule, real)``: the data of ``args`` set up for fitting, with Lightning's logging and warnings quieted so
    that the timing table is what the script prints."""
    import logging
    import warnings

    from medrobust.datamodules.medmnist import MedMNISTDataModule

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    source, _, real = data_source(args)
    dm = MedMNISTDataModule(args.flag, args.size, **source, batch_size=args.batch_size)
    dm.setup("fit")
    return dm, real


def alternate(jobs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each job: one warm-up call each, then ``rounds`` rounds that run every job once in turn, so
    machine noise hits all of them alike."""
    for job in jobs.values():
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
    return times
