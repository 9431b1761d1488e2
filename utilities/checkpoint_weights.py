"""One copy of a model's weights: a Lightning checkpoint without the tensors a ``torch.export`` program already
holds, and the full checkpoint rebuilt from the two. A logged model keeps its weights once, in ``model.pt2``, beside
such a weightless checkpoint (hyperparameters, callback states, epoch; a few kilobytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: the key a weightless checkpoint records its missing weights under: which program file holds them, and which keys
WEIGHTS_KEY = "weights_in_program"
#: what a checkpoint holds only to continue training (a resume reads the local ``last.ckpt``)
TRAINING_STATE = ("optimizer_states", "lr_schedulers")


def without_weights(checkpoint: dict[str, Any], program: torch.export.ExportedProgram) -> dict[str, Any]:
    """``checkpoint`` without optimizer or scheduler state and without every ``state_dict`` entry ``program`` holds
    with the same name, dtype, shape and value (what it does not hold, or holds otherwise, stays), recording which
    keys went."""
    held = program.state_dict
    moved = sorted(k for k, v in checkpoint["state_dict"].items() if k in held and _same(v, held[k]))
    light = {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE}
    gone = set(moved)
    light["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in gone}
    light[WEIGHTS_KEY] = {"program": "model.pt2", "keys": moved, "order": list(checkpoint["state_dict"])}
    return light


def with_weights(checkpoint: dict[str, Any], program_path: Path | str) -> dict[str, Any]:
    """The full checkpoint again: ``checkpoint``'s ``state_dict`` with the weights it names read from the program
    at ``program_path`` (:func:`program_weights`: raw tensor bytes, no pickle, no graph). A checkpoint that has its
    weights is returned as it is; a key the program lacks is a ValueError."""
    record = checkpoint.get(WEIGHTS_KEY)
    if record is None:
        return checkpoint
    held = program_weights(program_path)
    missing = [k for k in record["keys"] if k not in held]
    if missing:
        raise ValueError(
            f"the program {program_path} lacks {len(missing)} weight(s) the checkpoint names: {missing[:3]}"
        )
    full = {k: v for k, v in checkpoint.items() if k != WEIGHTS_KEY}
    merged = {**{k: held[k] for k in record["keys"]}, **checkpoint["state_dict"]}
    order = [k for k in record.get("order", []) if k in merged]  # the module's own order, as Lightning saved it
    full["state_dict"] = {k: merged[k] for k in order + sorted(set(merged) - set(order))}
    return full


def program_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """The weights (parameters and buffers) a ``torch.export.save`` archive holds, read as raw tensor records with
    their dtype, size, stride and offset: unlike ``torch.export.load``, nothing is unpickled (its sample inputs,
    tensor subclasses and opaque constants can be) and the graph is not rebuilt. A weight stored pickled is a
    ValueError. Uses the archive reader of the pinned torch (``torch.export.pt2_archive``; private helpers)."""
    from torch._export.serde.serialize import deserialize_size, deserialize_storage_offset, deserialize_stride
    from torch.export.pt2_archive._package import PT2ArchiveReader, _build_file_map, _load_payload_config
    from torch.export.pt2_archive.constants import WEIGHTS_DIR

    with PT2ArchiveReader(str(path)) as archive:
        names = [n for n in archive.get_file_names() if n.startswith(WEIGHTS_DIR) and n.endswith("weights_config.json")]
        if len(names) != 1:
            raise ValueError(f"{path}: expected one program's weights, found {len(names)} weight configs")
        config = _load_payload_config(archive, names[0])
        pickled = [fqn for fqn, meta in config.config.items() if meta.use_pickle or meta.tensor_meta is None]
        if pickled:
            raise ValueError(f"{path}: weights stored as pickled objects are not read: {pickled[:3]}")
        flat = _build_file_map(archive, config, WEIGHTS_DIR)
        return {
            fqn: torch.as_strided(
                flat[meta.path_name],
                deserialize_size(meta.tensor_meta.sizes),
                deserialize_stride(meta.tensor_meta.strides),
                deserialize_storage_offset(meta.tensor_meta.storage_offset),
            )
            .detach()
            .clone()
            for fqn, meta in config.config.items()
        }


def _same(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and (a.dtype, a.shape) == (b.dtype, b.shape)
        and torch.equal(a, b)
    )
