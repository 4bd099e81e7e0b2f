"""The codec deployment: stateless encode / decode of the served IDRP, batched across
concurrent requests (`@serve.batch`), on the GPU when MT_DEVICE resolves to one. Replicas are
interchangeable (`--codec-replicas`). The ingress encodes each read's queries here once, not
once per shard, and decodes the merged hits here once. Writes are encoded by their shard's own
engine, which owns the checks of what a bank may store (model/memory.py) and logs the codes.
"""

from __future__ import annotations

import torch
from ray import serve

from model.checkpoint import load_idrp
from model.errors import InvalidInput
from model.requests import first_bad
from service.engine import Engine
from service.settings import Settings

BATCH_MAX = 64  # requests per batch
BATCH_WAIT_S = 0.001


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Codec:
    def __init__(self, settings: Settings) -> None:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = settings.resolved_device()
        self.codec = Engine._compile(load_idrp(settings.weights, device=self.device))
        self.d = self.codec.config.d
        self.refine_steps = settings.refine_steps

    @serve.batch(max_batch_size=BATCH_MAX, batch_wait_timeout_s=BATCH_WAIT_S)
    async def encode(self, batch: list[torch.Tensor]) -> list[torch.Tensor | InvalidInput]:
        """Each request's query codes (B, m) on the CPU, or the InvalidInput that refuses it
        (a code that is not finite: the wording of IDRPMemory.read_batch)."""
        x = torch.cat(batch).to(self.device)
        if self.refine_steps:  # Adam steps on the code: needs autograd (IDRPMemory._encode)
            z = self.codec.encode(x, refine_steps=self.refine_steps).float().cpu()
        else:
            with torch.inference_mode():
                z = self.codec.encode(x).float().cpu()
        out: list[torch.Tensor | InvalidInput] = []
        for part in torch.split(z, [x.shape[0] for x in batch]):
            bad = first_bad(part)
            out.append(
                part
                if bad is None
                else InvalidInput(
                    f"query {bad} cannot be read: its code is not finite (values far outside "
                    "the range the codec was trained on)"
                )
            )
        return out

    @serve.batch(max_batch_size=BATCH_MAX, batch_wait_timeout_s=BATCH_WAIT_S)
    async def decode(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each request's items (H, d) float32 on the CPU from codes (H, m)."""
        sizes = [z.shape[0] for z in batch]
        if not sum(sizes):
            return [torch.zeros(0, self.d) for _ in batch]
        with torch.inference_mode():
            x = self.codec.decode(torch.cat(batch).to(self.device)).float().cpu()
        return list(torch.split(x, sizes))
