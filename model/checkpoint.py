"""IDRP weights as self-describing safetensors files (no pickle).

The file holds the state dict; its metadata holds the IDRPConfig as JSON, the model name and
free-form training facts. Loading rebuilds the model from that config and checks the keys and
shapes strictly, so code and weights that drift apart fail loudly. `fingerprint` is a sha256 of
the tensors (names, dtypes, shapes and bytes), stable across processes and machines: snapshots
record it so that a bank is never decoded by a model that did not encode it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from model.config import IDRPConfig
from model.durable import read_safetensors_file_header, tensor_sha256, write_safetensors
from model.errors import CheckpointError
from model.idrp import IDRP

FORMAT = "memorytransit-idrp/1"


def fingerprint(state: Mapping[str, Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes (model.durable.tensor_sha256)."""
    return tensor_sha256(state, describe=True)


def _state(model: IDRP) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_idrp(
    model: IDRP, path: str | Path, *, name: str | None = None, info: Mapping[str, object] = {}
) -> str:
    """Write model to path atomically (tmp + fsync + rename + fsync the folder); return its
    fingerprint."""
    path = Path(path)
    state = _state(model)
    metadata = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "name": name or path.name.removesuffix(".safetensors"),
        "info": json.dumps(dict(info), sort_keys=True),
    }
    write_safetensors(path, state, metadata)
    return fingerprint(state)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The weights file's metadata, reading only its header (cheap: no tensors loaded)."""
    try:
        header = read_safetensors_file_header(path)
    except OSError as e:
        raise CheckpointError(f"weights file {path} is not a readable safetensors file: {e}") from e
    if header is None:
        raise CheckpointError(
            f"weights file {path} is not a readable safetensors file: bad or truncated header"
        )
    return dict(header.get("__metadata__", {}))


def load_idrp(path: str | Path, device: str | torch.device = "cpu") -> IDRP:
    """Rebuild the IDRP stored at path, in eval mode, with `fingerprint` and `name` set."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"weights file {path}: expected format {FORMAT!r}, got {meta.get('format')!r}"
        )
    try:
        config = IDRPConfig.from_json(meta["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"weights file {path}: bad config in metadata: {e}") from e
    model = IDRP(config)
    expected = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(expected) - keys), sorted(keys - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"weights file {path} does not match the code: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}"
            )
        state = {k: f.get_tensor(k) for k in sorted(keys)}
    for key, tensor in state.items():
        want = expected[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise CheckpointError(
                f"weights file {path}: tensor {key} expected {want.dtype} {tuple(want.shape)}, "
                f"got {tensor.dtype} {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.fingerprint = fingerprint(state)
    model.name = meta.get("name", path.stem)
    model.info = json.loads(meta.get("info", "{}"))
    return model.to(device).eval()
