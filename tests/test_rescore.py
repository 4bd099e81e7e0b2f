"""Two-stage reads (issue 12): stage 1 by code cosine, stage 2 by cosine between the query item
and each candidate's reconstruction; exact results on a hand-made bank where the two disagree,
and the read rules (counts, min_score, batching) with rescoring on."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from model.bank import MemoryBank
from model.errors import InvalidInput
from model.memory import IDRPMemory, Read
from model.rescore import rescore


class SwapCodec:
    """d = m = 2; the code is the item, the reconstruction swaps its two values: code cosine
    and input-space cosine disagree on purpose."""

    config = SimpleNamespace(d=2, m=2)

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z.flip(1)


def memory() -> IDRPMemory:
    mem = IDRPMemory(SwapCodec(), MemoryBank(4, 2))  # type: ignore[arg-type]
    mem.write(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "each")  # a: slot 0, b: slot 1
    return mem


Q = torch.tensor([[0.9, 0.1]])
COS = 0.9 / math.hypot(0.9, 0.1)  # q with [1, 0]
SIN = 0.1 / math.hypot(0.9, 0.1)  # q with [0, 1]


def test_rescoring_ranks_by_the_reconstructions() -> None:
    mem = memory()
    [code] = mem.read_batch([Read(Q, top_k=2, reconstruct=False)])
    assert not isinstance(code, Exception)
    assert code.slots.tolist() == [[0, 1]]  # by codes: a first
    [res] = mem.read_batch([Read(Q, top_k=2, rescore=2)])
    assert not isinstance(res, Exception) and res.reconstructions is not None
    assert res.slots.tolist() == [[1, 0]]  # by reconstructions: b ([1, 0] rebuilt) first
    assert res.scores[0].tolist() == pytest.approx([COS, SIN], abs=1e-6)
    assert res.code_scores is not None
    assert res.code_scores[0].tolist() == pytest.approx([SIN, COS], abs=1e-6)
    assert res.reconstructions[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    [hit, other] = res.hits()[0]
    assert (hit.slot, hit.score, hit.code_score) == (1, res.scores[0, 0].item(), pytest.approx(SIN))
    assert other.slot == 0


def test_only_returned_hits_count_and_min_score_applies_to_the_final_score() -> None:
    mem = memory()
    [res] = mem.read_batch([Read(Q, top_k=1, rescore=2)])  # both candidates, one returned
    assert not isinstance(res, Exception) and res.slots.tolist() == [[1]]
    assert mem.bank.counts.tolist()[:2] == [0, 1] and mem.bank.hits == 1
    [res] = mem.read_batch([Read(Q, top_k=2, min_score=0.5, rescore=2)])
    assert not isinstance(res, Exception)
    assert res.slots.tolist() == [[1, -1]]  # a's input-space score (0.11) is below 0.5
    assert res.counts.tolist() == [[2, 0]]
    [miss] = mem.read_batch([Read(Q, top_k=1, min_score=0.999, rescore=2)])
    assert not isinstance(miss, Exception) and miss.slots.tolist() == [[-1]]
    assert (mem.bank.reads, mem.bank.hits, mem.bank.misses) == (3, 2, 1)


def test_a_rescored_batch_equals_the_reads_one_by_one() -> None:
    reads = [
        Read(Q, top_k=1, rescore=2),
        Read(torch.tensor([[0.2, 0.8]]), top_k=2, rescore=2),
        Read(Q, top_k=1),  # not rescored, in the same batch
        Read(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), top_k=2, rescore=5),
    ]
    one, batch = memory(), memory()
    alone = [one.read_batch([r])[0] for r in reads]
    together = batch.read_batch(reads)
    for a, b in zip(alone, together, strict=True):
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert torch.equal(a.slots, b.slots) and torch.equal(a.counts, b.counts)
        assert torch.allclose(a.scores, b.scores)
    assert torch.equal(one.bank.counts, batch.bank.counts)
    assert one.bank.tick == batch.bank.tick


def test_the_full_candidates_path_equals_the_masked_one() -> None:
    # min_score=None with R hits per query takes rescore's short path; min_score=-1 (which
    # every cosine passes) takes the masked one: the same slots, scores, code scores and
    # reconstructions, bit for bit. A bank of 40 random codes, 6 queries, R = 5, top 3.
    g = torch.Generator().manual_seed(4)
    bank = MemoryBank(40, 2)
    bank.write(torch.randn(40, 2, generator=g), "each")
    x = torch.randn(6, 2, generator=g)
    codec = SwapCodec()
    full = rescore(bank, codec.decode, x, x, 3, None, None, 5)
    masked = rescore(bank, codec.decode, x, x, 3, -1.0, None, 5)
    for a, b in zip(full, masked, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    assert (full.slots >= 0).all() and not torch.equal(full.slots[:, 0], bank.search(x, 1)[0][:, 0])


def test_rescore_must_be_a_non_negative_int() -> None:
    [bad] = memory().read_batch([Read(Q, rescore=-1)])
    assert (
        isinstance(bad, InvalidInput) and str(bad) == "expected rescore to be an int >= 0, got -1"
    )


def test_mt_rescore_auto_is_on_for_image_codecs_and_off_for_text_codecs() -> None:
    from model.codec_info import RESCORE_IMAGE
    from service.settings import Settings

    image, text = {"data": "digits"}, {"data": "text-minilm", "embedder": {"name": "minilm"}}
    assert Settings().rescore == "auto"
    assert (Settings().resolved_rescore(image), Settings().resolved_rescore(text)) == (3, 0)
    assert RESCORE_IMAGE == 3
    assert Settings(rescore=0).resolved_rescore(image) == 0  # a set value wins
    assert Settings(rescore=32).resolved_rescore(text) == 32
    for bad in (-1, 1001, "sometimes"):
        with pytest.raises(ValueError, match="rescore"):
            Settings(rescore=bad)


def test_mt_rescore_auto_serves_the_weights_own_default() -> None:
    """A file that names rescore_default (measured per codec) gets it under auto, text codec
    or not; a set MT_RESCORE still wins; a malformed one stops the start, naming the field."""
    from model.errors import CheckpointError
    from service.settings import Settings

    assert Settings().resolved_rescore({"data": "mnist", "rescore_default": 10}) == 10
    assert Settings().resolved_rescore({"embedder": {}, "rescore_default": 0}) == 0
    assert Settings(rescore=1).resolved_rescore({"rescore_default": 10}) == 1
    for bad in (-1, 1001, 2.5, "10", True, None):
        with pytest.raises(CheckpointError) as err:
            Settings().resolved_rescore({"rescore_default": bad})
        assert str(err.value) == (
            f"weights info rescore_default must be an integer 0..1000, got {bad!r}"
        )


def test_the_shipped_codecs_name_their_measured_rescore_defaults() -> None:
    """mnist-m384-rate's 128-byte rate code gains recall@1 from 3 to 10 candidates (0.878 ->
    0.915 held out, weights/README.md): its file says 10; the others keep the rule."""
    from model.checkpoint import read_metadata
    from model.codec_info import default_rescore

    weights = Path(__file__).resolve().parents[1] / "weights"
    got = {
        p.stem: default_rescore(json.loads(read_metadata(p)["info"]))
        for p in sorted(weights.glob("*.safetensors"))
    }
    assert got["mnist-m384-rate"] == 10
    assert got["digits-m16"] == got["mnist-m16"] == got["mnist-m256-rate"] == 3
    assert got["minilm-text-m192-rate"] == 0


@pytest.mark.anyio
async def test_the_default_read_of_the_shipped_digits_codec_is_rescored(
    tmp_path: Path,
) -> None:
    """Default settings on weights/digits-m16: /stats says 3 candidates, and a read of an
    item's noisy copy ranks by the input-space cosine with each reconstruction (score), not
    by the code cosine (code_score); rescore=0 gives the code ranking back."""
    from service.engine import Engine
    from service.settings import Settings

    engine = Engine(Settings(snapshot_dir=tmp_path / "snap", capacity=64, torch_threads=1))
    await engine.start()
    try:
        assert (await engine.stats())["rescore"] == 3
        g = torch.Generator().manual_seed(0)
        items = torch.rand(64, 64, generator=g)
        await engine.write(items.tolist(), mode="each")
        query = (items[:1] + 0.05 * torch.randn(1, 64, generator=g)).clamp(0, 1)
        [[hit]] = await engine.read(query.tolist())
        recon = torch.from_numpy(hit.reconstruction)
        assert hit.score == pytest.approx(
            float(torch.nn.functional.cosine_similarity(query[0], recon, dim=0)), abs=1e-5
        )
        assert hit.score != pytest.approx(hit.code_score, abs=1e-4)
        [[plain]] = await engine.read(query.tolist(), rescore=0)
        assert plain.score == pytest.approx(plain.code_score, abs=1e-6)
    finally:
        await engine.stop()


def test_resolving_mt_rescore_needs_only_the_serving_dependencies() -> None:
    """requirements.txt (the README's serve command) has no scikit-learn: the engine's start,
    which resolves MT_RESCORE, must not import it (it once did, through model.evaluate)."""
    import subprocess
    import sys

    code = (
        "import sys; import service.engine; from service.settings import Settings; "
        "Settings().resolved_rescore({'data': 'digits'}); "
        "print(sorted(m for m in ('sklearn', 'model.evaluate') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
