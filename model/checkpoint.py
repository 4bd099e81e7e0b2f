"""IDRP weights as self-describing safetensors files (no pickle).

The file holds the state dict; its metadata holds the IDRPConfig as JSON, the model name, the
shape of one item (e.g. [8, 8]: how a person looks at an item of d values) and free-form training
facts. Loading rebuilds the model from that config and checks the keys and
shapes strictly, so code and weights that drift apart fail loudly. `fingerprint` is a sha256 of
the tensors (names, dtypes, shapes and bytes), stable across processes and machines: snapshots
record it so that a bank is never decoded by a model that did not encode it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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
    model: IDRP,
    path: str | Path,
    *,
    name: str | None = None,
    info: Mapping[str, object] = {},
    shape: Sequence[int] | None = None,
) -> str:
    """Write model to path atomically (tmp + fsync + rename + fsync the folder); return its
    fingerprint. `shape`: one item's shape (its product is d), stored as metadata "shape"."""
    path = Path(path)
    state = _state(model)
    metadata = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "name": name or path.name.removesuffix(".safetensors"),
        "info": json.dumps(dict(info), sort_keys=True),
    }
    if shape is not None:
        dims = [int(n) for n in shape]
        if math.prod(dims) != model.config.d or min(dims, default=0) < 1:
            raise ValueError(f"expected an item shape with d={model.config.d} values, got {dims}")
        metadata["shape"] = json.dumps(dims)
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


def item_shape(meta: Mapping[str, str], d: int) -> tuple[int, ...]:
    """One item's shape from a weights file's metadata (`read_metadata`): its "shape" when
    present and of d values; else, for files saved before the shape was stored, (s, s) when d is
    a perfect square s * s (the image codecs: 8x8 digits, 28x28 MNIST) and the training facts
    name no text embedder; else (d,)."""
    try:
        dims = tuple(int(n) for n in json.loads(meta["shape"]))
        if math.prod(dims) == d and min(dims, default=0) >= 1:
            return dims
    except (KeyError, ValueError, TypeError):
        pass
    try:
        info = json.loads(meta.get("info", "{}"))
    except ValueError:
        info = {}
    side = math.isqrt(d)
    text = isinstance(info, dict) and "embedder" in info
    return (side, side) if side * side == d and d > 1 and not text else (d,)


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
