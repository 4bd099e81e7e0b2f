"""The second stage of a read: rescoring candidates on their reconstructions (issue 12).

Stage 1 finds the top R slots by cosine of codes (`MemoryBank.search`, one pass, nothing
counted). Stage 2, only a decodable memory can do: decode those R codes (one batched decode)
and rank them by cosine between the query ITEM and each reconstruction, in the input space
(the embedding space for a text codec), then keep the top k. A hit's `score` is that
input-space cosine (`min_score` applies to it) and its `code_score` the stage-1 cosine. Ties
keep the stage-1 order. The caller counts the returned hits (`MemoryBank.touch`): candidates
that are not returned count nothing, so a rescored batch still equals the same reads one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from model.bank import MemoryBank

__all__ = ["Rescored", "rescore"]


class Rescored(NamedTuple):
    """(n, k) slots (-1 after the hits), scores (input space), code scores, and the hits'
    reconstructions (n, k, d) (zeros where -1)."""

    slots: Tensor
    scores: Tensor
    code_scores: Tensor
    reconstructions: Tensor


def rescore(
    bank: MemoryBank,
    decode: Callable[[Tensor], Tensor],
    x: Tensor,
    z: Tensor,
    top_k: int,
    min_score: float | None,
    namespace: str | None,
    candidates: int,
) -> Rescored:
    """Queries x (n, d) with codes z (n, m): the top_k of their max(candidates, top_k) code
    neighbours, re-ranked by cosine of x with each candidate's reconstruction."""
    r = max(candidates, top_k)
    cand, code = bank.search(z, r, None, namespace)  # (n, R), best code first
    valid = cand >= 0
    n, d = x.shape
    if min_score is None and bool(valid.all()):  # the usual case: R hits per query, no floor
        return _rescore_full(bank, decode, x, cand, code, top_k)
    recon = torch.zeros(n, r, d, dtype=torch.float32)
    if bool(valid.any()):
        decoded = decode(bank.hit_codes(cand[valid])).float()
        recon = recon.to(decoded.device)
        recon[valid.to(decoded.device)] = decoded
    score = _input_cosines(x, recon)  # (n, R)
    ok = valid.to(score.device)
    if min_score is not None:
        ok = ok & (score >= min_score)
    key = torch.where(ok, score, -math.inf)
    take = torch.argsort(key, dim=1, descending=True, stable=True)[:, :top_k]  # (n, k)
    keep = key.gather(1, take) > -math.inf
    dev = cand.device
    slots = torch.where(keep.to(dev), cand.gather(1, take.to(dev)), -1)
    scores = torch.where(keep, score.gather(1, take), 0.0)
    code_scores = torch.where(keep.to(dev), code.gather(1, take.to(dev)), 0.0)
    picked = recon.gather(1, take.unsqueeze(2).expand(n, top_k, d)) * keep.unsqueeze(2)
    return Rescored(slots, scores.to(dev), code_scores, picked)


def _rescore_full(
    bank: MemoryBank,
    decode: Callable[[Tensor], Tensor],
    x: Tensor,
    cand: Tensor,
    code: Tensor,
    top_k: int,
) -> Rescored:
    """`rescore` where every query has its R candidates and no min_score: the same ranking and
    values in about half the torch calls (no masks to build, scatter or apply)."""
    n, r = cand.shape
    recon = decode(bank.hit_codes(cand.reshape(-1))).float().view(n, r, -1)  # (n, R, d)
    score = _input_cosines(x, recon)  # (n, R)
    take = torch.argsort(score, dim=1, descending=True, stable=True)[:, :top_k]  # (n, k)
    dev = cand.device
    at = take.to(dev)
    picked = recon.gather(1, take.unsqueeze(2).expand(n, top_k, recon.shape[2]))
    return Rescored(cand.gather(1, at), score.gather(1, take).to(dev), code.gather(1, at), picked)


def _input_cosines(x: Tensor, recon: Tensor) -> Tensor:
    """Cosines (n, R) of each query item x (n, d) with its candidates' reconstructions
    recon (n, R, d), clipped to [-1, 1]; a zero row scores 0."""
    xs = x.to(recon.device, torch.float32)
    xn = xs / xs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rn = recon / recon.norm(dim=2, keepdim=True).clamp_min(1e-12)
    return (rn * xn.unsqueeze(1)).sum(dim=2).clamp_(-1.0, 1.0)
