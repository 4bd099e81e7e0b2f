"""The training and evaluation commands, end to end on a tiny model and a slice of digits."""

import json
from pathlib import Path

import pytest

from model.checkpoint import load_idrp
from model.evaluate import main as evaluate_main
from model.ratecode import RateCode
from model.train import main as train_main
from model.train import parse_args, train

TINY = ["--n-layers", "2", "--hidden", "16", "--n-blocks", "1", "--predictor-hidden", "16"]


def run(tmp_path: Path, name: str, *extra: str) -> Path:
    args = ["--data", "digits", "--m", "8", "--name", name, "--out-dir", str(tmp_path)]
    return train(parse_args([*args, "--epochs", "2", "--max-train", "300", *TINY, *extra]))


def test_training_is_seeded_and_records_how_it_was_made(tmp_path: Path) -> None:
    a = load_idrp(run(tmp_path, "a", "--pretrain-epochs", "1", "--affine", "0.5", "--ema", "0.9"))
    b = load_idrp(run(tmp_path, "b", "--pretrain-epochs", "1", "--affine", "0.5", "--ema", "0.9"))
    assert a.fingerprint == b.fingerprint  # same seed, same weights
    c = load_idrp(run(tmp_path, "c", "--seed", "1"))
    assert c.fingerprint != a.fingerprint
    assert a.config.d == 64 and a.config.m == 8 and a.config.pca_init
    assert a.info["data"] == "digits" and a.info["test_items_used"] == 0
    assert (a.info["train_items"], a.info["val_items"]) == (270, 30)  # 10 % of the 300 items
    assert a.info["val_mse_best"] <= a.info["val_mse_init"]  # the PCA start is the floor
    assert "--pretrain-epochs 1" in str(a.info["command"])


def test_evaluate_writes_results_and_figure(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    weights = run(tmp_path, "tiny")
    evaluate_main([str(weights), "--out-dir", str(tmp_path / "eval"), "--refine-steps", "2"])
    result = json.loads((tmp_path / "eval" / "tiny.json").read_text())
    assert (result["train_items"], result["test_items"]) == (1437, 360)
    assert set(result["test"]) == {"idrp", "pca", "idrp_refined"}
    assert 10 < result["test"]["pca"]["psnr"] < 40
    assert (tmp_path / "eval" / "tiny.png").stat().st_size > 1000
    assert "| tiny | test |" in capsys.readouterr().out


def test_similarity_term_and_rate_codes_are_recorded(tmp_path: Path) -> None:
    args = ("--sim-weight", "1e-3", "--sim-temp", "0.05", "--rate-bytes", "4", "6")
    model = load_idrp(run(tmp_path, "rate", *args))
    codes = model.info["rate_codes"]
    assert isinstance(codes, dict) and sorted(codes) == ["4B", "6B"]
    assert [RateCode.from_dict(codes[k]).code_bytes for k in ("4B", "6B")] == [4, 6]
    assert "--sim-weight 1e-3" in str(model.info["command"])
    assert "rescore_default" not in model.info  # unset: MT_RESCORE=auto applies the rule


def test_a_measured_rescore_default_is_recorded_and_checked(tmp_path: Path) -> None:
    from model.codec_info import default_rescore

    model = load_idrp(run(tmp_path, "r7", "--rescore-default", "7"))
    assert model.info["rescore_default"] == 7 and default_rescore(model.info) == 7
    with pytest.raises(SystemExit):
        parse_args(["--data", "digits", "--m", "8", "--rescore-default", "1001"])


def test_rate_codes_added_later_are_those_training_would_have_fitted(tmp_path: Path) -> None:
    with_codes = load_idrp(run(tmp_path, "with", "--rate-bytes", "4"))
    path = run(tmp_path, "later")
    train_main(["--add-rate-codes", str(path), "--rate-bytes", "4", "6", "--rate-default", "6"])
    later = load_idrp(path)
    assert later.fingerprint == with_codes.fingerprint  # the tensors are not touched
    assert later.info["rate_codes"]["4B"] == with_codes.info["rate_codes"]["4B"]  # type: ignore[index]
    assert sorted(later.info["rate_codes"]) == ["4B", "6B"]  # type: ignore[arg-type]
    assert later.info["rate_default"] == "6B"
    assert "--add-rate-codes" in str(later.info["rate_codes_command"])
    assert later.info["command"] != later.info["rate_codes_command"]
