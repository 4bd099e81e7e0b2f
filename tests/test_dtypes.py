"""Each bank storage dtype through the whole engine: write, read, snapshot, restart, WAL replay."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model.checkpoint import save_idrp
from model.ratecode import fit_rate_code
from model.testing import tiny_idrp
from service.engine import Engine
from service.settings import Settings

pytestmark = pytest.mark.anyio
Items = Callable[..., list[list[float]]]


@pytest.fixture(scope="module")
def calibrated_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model with int8 scales calibrated on items like the test's (as train does)
    and a 10-byte rate code fitted on their codes, named the file's default (as train
    --rate-bytes 10 --rate-default 10 does)."""
    model = tiny_idrp(d=64, m=16)
    x = torch.rand(512, 64, generator=torch.Generator().manual_seed(0))
    model.calibrate_code_scales(x)
    rate = fit_rate_code(model.encode(x).numpy(), 10)
    info = {"rate_codes": {"10B": rate.to_dict()}, "rate_default": "10B"}
    path = tmp_path_factory.mktemp("weights") / "tiny-calibrated.safetensors"
    save_idrp(model, path, info=info)
    return path


async def started(settings: Settings) -> Engine:
    engine = Engine(settings)
    await engine.start()
    return engine


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "rate"])
async def test_dtype_round_trips_through_write_read_snapshot_and_wal(
    dtype: str, make_settings: Callable[..., Settings], items: Items, calibrated_weights: Path
) -> None:
    settings = make_settings(
        weights=calibrated_weights, bank_dtype=dtype, snapshot_on_shutdown=False
    )
    x = items(4, seed=3)
    engine = await started(settings)
    try:
        written = await engine.write(x[:3], mode="each")
        assert written.slots == [0, 1, 2]
        hits = await engine.read(x[:3])
        assert [(q[0].slot, q[0].count) for q in hits] == [(0, 1), (1, 1), (2, 1)]
        assert all(q[0].score > 0.99 for q in hits)
        snap = await engine.snapshot()
        await engine.write(x[3:], mode="each")  # only in the WAL
        codes = [(await engine.get_slot(i)).code for i in range(4)]
        stats = await engine.stats()
        assert stats["bank_dtype"] == dtype
    finally:
        await engine.stop()  # no shutdown snapshot: slot 3 must come back from the WAL

    engine = await started(settings)
    try:
        stats = await engine.stats()
        assert stats["bank_dtype"] == dtype and stats["used"] == 4
        assert stats["recovery"]["snapshot"] == str(snap.path)
        assert stats["recovery"]["replayed"] == 1
        for i in range(4):
            got = (await engine.get_slot(i)).code
            assert torch.equal(torch.as_tensor(got), torch.as_tensor(codes[i]))  # bit-identical
        [[hit]] = await engine.read(x[1:2])
        assert (hit.slot, hit.count) == (1, 2)  # the count from the snapshot continues
    finally:
        await engine.stop()


async def test_auto_serves_the_storage_the_weights_name(
    make_settings: Callable[..., Settings], calibrated_weights: Path, tmp_path: Path
) -> None:
    """MT_BANK_DTYPE=auto (the default): a file with a rate_default gets a rate bank of that
    budget; one without gets float32. A budget the file does not ship stops the start."""
    engine = await started(make_settings(weights=calibrated_weights))
    try:
        stats = await engine.stats()
        assert (stats["bank_dtype"], stats["code_bytes"]) == ("rate", 10)
    finally:
        await engine.stop()
    plain = tmp_path / "plain.safetensors"
    save_idrp(tiny_idrp(d=64, m=16), plain)
    engine = await started(make_settings(weights=plain, snapshot_dir=tmp_path / "plain-snaps"))
    try:
        assert (await engine.stats())["bank_dtype"] == "float32"
    finally:
        await engine.stop()
    wrong = make_settings(
        weights=calibrated_weights, bank_dtype="rate", rate_bytes=12, snapshot_dir=tmp_path / "w"
    )
    with pytest.raises(ValueError, match=r"rate codes \['10B'\], got '12B'"):
        await started(wrong)
