import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import FORMAT, fingerprint, load_idrp, read_metadata, save_idrp
from model.errors import CheckpointError
from model.testing import tiny_idrp

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = tiny_idrp(d=20, m=5)
    path = tmp_path / "m.safetensors"
    fp = save_idrp(model, path, info={"data": "none"})
    loaded = load_idrp(path)
    assert loaded.config == model.config and loaded.fingerprint == fp and loaded.name == "m"
    assert loaded.info == {"data": "none"}
    x = torch.rand(4, 20)
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_fingerprint_is_stable_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    fp = save_idrp(tiny_idrp(d=12, m=3), path)
    code = f"from model.checkpoint import load_idrp; print(load_idrp({str(path)!r}).fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == fp


def test_fingerprint_changes_with_any_value() -> None:
    state = {k: v.clone() for k, v in tiny_idrp(d=8, m=2).state_dict().items()}
    before = fingerprint(state)
    state["code_scales"][0] += 1e-6
    assert fingerprint(state) != before


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], **meta: str) -> None:
    metadata = read_metadata(path)
    metadata.update(meta)
    save_file(tensors, str(path), metadata=metadata)


def test_missing_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_idrp(tiny_idrp(d=8, m=2), path)
    tensors = load_file(str(path))
    del tensors["code_scales"]
    _rewrite(path, tensors)
    with pytest.raises(CheckpointError, match=r"missing keys \['code_scales'\]"):
        load_idrp(path)


def test_config_that_does_not_match_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_idrp(tiny_idrp(d=8, m=2), path)
    config = json.loads(read_metadata(path)["config"])
    config["m"] = 3
    _rewrite(path, load_file(str(path)), config=json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"tensor code_scales expected .* \(3,\), got .* \(2,\)"
    ):
        load_idrp(path)


def test_bad_format_config_and_garbage_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_idrp(tiny_idrp(d=8, m=2), path)
    tensors = load_file(str(path))
    _rewrite(path, tensors, format="other/9")
    with pytest.raises(CheckpointError, match=f"expected format '{FORMAT}', got 'other/9'"):
        load_idrp(path)
    _rewrite(path, tensors, format=FORMAT, config='{"d": 8, "m": 9}')
    with pytest.raises(CheckpointError, match=r"bad config in metadata: expected 1 <= m < d=8"):
        load_idrp(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_idrp(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_idrp(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(("name", "margin_db"), [("digits-m16", 3.0), ("mnist-m64", 0.0)])
def test_shipped_weights_load_and_beat_pca_on_test(name: str, margin_db: float) -> None:
    """The held-out promise of each shipped model (issue: digits >= PCA + 3 dB, MNIST > PCA)."""
    path = ROOT / "weights" / f"{name}.safetensors"  # shipped: a missing file fails the load
    from model import data
    from model.evaluate import idrp_reconstruct, metrics, pca_reconstruct

    model = load_idrp(path)
    split = data.load(model.info["data"])
    idrp = metrics(split.test, idrp_reconstruct(model, split.test))["psnr"]
    pca = metrics(split.test, pca_reconstruct(split.train, model.config.m, split.test))["psnr"]
    assert idrp > pca + margin_db
