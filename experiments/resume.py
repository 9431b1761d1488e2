"""Which checkpoint a resume means: the newest one of the run a config names, never another run's."""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medrobust.experiments.tracking.mlflow_logger import OWNER_COMMAND, OWNER_HOST, OWNER_PID
from medrobust.utilities.errors import InputError
from medrobust.utilities.processes import host, pid_alive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to resume from (``None``: the run was killed before its first one, so it trains again from epoch
    0), and the MLflow run it continues."""

    path: Path | None
    run_id: str | None


def checkpoint_identity(path: Path) -> dict[str, Any]:
    """The ``mlflow`` record of a checkpoint (run id, experiment id, tracking URI), read with ``weights_only=True``.

    A file holding Python objects beyond tensors and plain containers is refused before anything in it runs; a file
    that is not a Lightning checkpoint (a bare ``state_dict``) is refused, naming what it holds.
    """
    if not path.is_file():
        raise InputError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # UnpicklingError for a payload, RuntimeError/EOFError for a damaged file
        raise InputError(
            f"Refused to load {path}: it is not a plain checkpoint of tensors and containers, as "
            f"torch.load(weights_only=True) requires ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None
    lightning = isinstance(checkpoint, dict) and {"state_dict", "pytorch-lightning_version"} <= set(checkpoint)
    if not lightning:
        raise InputError(f"{path} is not a Lightning checkpoint of a medrobust run: it is {describe(checkpoint)}")
    return checkpoint.get("mlflow") or {}


def checkpoint_hparams(path: Path) -> dict[str, Any]:
    """The model hyperparameters a Lightning checkpoint records (read with ``weights_only=True``, memory-mapped)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(checkpoint.get("hyper_parameters") or {})


def has_resume_state(path: Path) -> bool:
    """Whether a checkpoint holds the optimizer state a ``fit`` continues from (``last.ckpt`` does; a selected one
    that is not the last epoch does not)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return "optimizer_states" in checkpoint


def describe(obj: Any) -> str:
    """What a loaded file holds, in a few words: ``a state_dict of 122 tensors (conv1.weight, bn1.weight, ...)``."""
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"a plain state_dict of {len(keys)} tensors ({shown}), as torch.save(model.state_dict()) writes"
        return f"a dict with keys {shown or '(none)'} and no Lightning 'state_dict' and version"
    return f"a {type(obj).__name__}"


def find_resume_point(
    client: Any,
    experiment_name: str,
    run_name: str | None,
    run_id: str | None,
    root: Path,
    dirpath: str | None = None,
    hpc: bool = False,
    explicit: bool = True,
    first_process: bool = True,
) -> ResumePoint | None:
    """The checkpoint ``--ckpt_path last`` means: the newest ``last*.ckpt`` of the unfinished run this config names;
    with ``explicit``, an unfinished run with no checkpoint yet (killed in its first epoch) is continued from epoch 0.

    The run is the config's ``run_id`` if it gives one; else the unfinished (RUNNING, FAILED or KILLED) runs of its
    experiment, with its ``run_name`` if it gives one, that have a checkpoint. Several such runs are ambiguous and
    refused, listing them. With ``hpc`` (under SLURM), Lightning's ``hpc_ckpt_*.ckpt`` files in ``root`` count too,
    but only those written by that run. Returns ``None`` when there is nothing to resume; with ``explicit`` (the
    user asked for ``last``), finished runs that could be meant are named in an error instead. A run still written by
    a live process on this host is refused (checked by the ``first_process`` only: the other DDP processes of this
    command find the run their rank zero has already taken over).
    """
    hpc_files = _hpc_checkpoints(root) if hpc else {}
    if dirpath:  # one folder of the user's for every run: its newest last checkpoint says which run it was
        found = sorted((p for p in Path(dirpath).glob("last*.ckpt") if is_complete(p)), key=lambda p: p.stat().st_mtime)
        return ResumePoint(found[-1], checkpoint_identity(found[-1]).get("run_id")) if found else None
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    if run_id is not None:
        runs = [client.get_run(run_id)]
    else:
        query = f"attributes.run_name = '{run_name}'" if run_name else ""
        runs = client.search_runs([experiment.experiment_id], query, max_results=10000)
    candidates = {}
    for run in runs:
        folder = root / experiment.experiment_id / run.info.run_id / "checkpoints"
        files = [*folder.glob("last*.ckpt"), *hpc_files.get(run.info.run_id, [])]
        for broken in [f for f in files if not is_complete(f)]:
            log.warning("%s is truncated (its writer was killed mid-write?): not resumed from", broken)
        files = [f for f in files if is_complete(f)]
        if files:
            candidates[run.info.run_id] = (run, max(files, key=lambda p: p.stat().st_mtime))
    unfinished = {k: v for k, v in candidates.items() if v[0].info.status != "FINISHED" or run_id is not None}
    live = [run for run, _ in unfinished.values() if _owner_alive(run)] if first_process else []
    if live:
        listing = "\n".join(f"  {r.info.run_id} ({r.info.run_name}): process {r.data.tags[OWNER_PID]}" for r in live)
        raise InputError(
            f"--ckpt_path last: a run this config names is still being written by a live process on this host:\n"
            f"{listing}\n  Wait for it (or stop it) before resuming, or name a checkpoint: --ckpt_path <file>."
        )
    # killed before its first checkpoint: the run this config names goes on from epoch 0, in the same run
    bare = [r for r in runs if r.info.run_id not in candidates and _abandoned_fit(r)] if explicit else []
    if not unfinished and len(bare) == 1:
        return ResumePoint(None, bare[0].info.run_id)
    if len(bare) + len(unfinished) > 1 and bare:
        listing = "\n".join(
            [f"  {r.info.run_id} ({r.info.run_name}, {r.info.status}): no checkpoint" for r in bare]
            + [f"  {rid} ({run.info.run_name}, {run.info.status}): {path}" for rid, (run, path) in unfinished.items()]
        )
        raise InputError(
            f"--ckpt_path last is ambiguous: experiment {experiment_name!r} has several unfinished runs"
            f"{f' named {run_name!r}' if run_name else ''}:\n{listing}\n  Pass --ckpt_path <file>, name the run "
            "with --trainer.logger.init_args.run_name (or run_id), or start afresh without --ckpt_path."
        )
    if len(unfinished) == 1:
        (rid, (_, path)), *_ = unfinished.items()
        return ResumePoint(path, rid)
    if len(unfinished) > 1:
        listing = "\n".join(
            f"  {rid} ({run.info.run_name}, {run.info.status}): {path}" for rid, (run, path) in unfinished.items()
        )
        raise InputError(
            f"--ckpt_path last is ambiguous: experiment {experiment_name!r}"
            f"{f' has several runs named {run_name!r}' if run_name else ' has several unfinished runs'}"
            f" with checkpoints:\n{listing}\n  Pass --ckpt_path <file>, or name the run with "
            "--trainer.logger.init_args.run_name (or run_id)."
        )
    if explicit and candidates:
        listing = "\n".join(f"  {rid} ({run.info.run_name}): {path}" for rid, (run, path) in candidates.items())
        raise InputError(
            f"--ckpt_path last: every run of {experiment_name!r} this config names is FINISHED:\n{listing}\n"
            "  To continue one of them, pass its checkpoint as --ckpt_path <file>."
        )
    return None


def _owner_here(run: Any) -> int | None:
    """The id of the process on this host that last wrote ``run`` (its ``medrobust.host``/``medrobust.pid`` tags);
    ``None`` for a run written on another host or by no recorded process."""
    tags = run.data.tags
    if tags.get(OWNER_HOST) != host() or not tags.get(OWNER_PID):
        return None
    return int(tags[OWNER_PID])


def _abandoned_fit(run: Any) -> bool:
    """A ``fit`` run, outside any sweep, left RUNNING by a process on this host that is gone (what a kill leaves
    behind), or KILLED by a requeue. A FAILED run (an error, reported when it happened; its config may since have
    been changed), a run of another host, of a live process, or of a ``test`` is never continued this way."""
    tags = run.data.tags
    if run.info.status not in ("RUNNING", "KILLED") or "sweep.role" in tags or tags.get(OWNER_COMMAND) != "fit":
        return False
    pid = _owner_here(run)
    return pid is not None and not pid_alive(pid)


def _owner_alive(run: Any) -> bool:
    """A RUNNING run whose writing process is alive on this host (another terminal is training it)."""
    pid = _owner_here(run) if run.info.status == "RUNNING" else None
    return pid is not None and pid != os.getpid() and pid_alive(pid)


def is_complete(path: Path) -> bool:
    """Whether a checkpoint file is whole: ``torch.save`` writes a zip archive, whose directory comes last, so a
    file cut short by a kill mid-write has none (a dangling link is not whole either)."""
    return path.is_file() and zipfile.is_zipfile(path)


def _hpc_checkpoints(root: Path) -> dict[str, list[Path]]:
    """Lightning's SLURM checkpoints in ``root``, by the run that wrote them."""
    found: dict[str, list[Path]] = {}
    for path in root.glob("hpc_ckpt_*.ckpt"):
        if not is_complete(path):
            log.warning("%s is truncated: not resumed from", path)
            continue
        run_id = checkpoint_identity(path).get("run_id")
        if run_id:
            found.setdefault(run_id, []).append(path)
    return found
