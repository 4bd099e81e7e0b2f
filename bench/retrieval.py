"""Retrieval over a bank of embeddings, for bench/text.py: cosine top-k, the agreement and
recall columns, the baseline codecs (centred PCA, faiss index_factory quantisers) and the
two-stage read of IDRP codes (rank by code, rescore the top r decoded)."""

from __future__ import annotations

import numpy as np

from model.idrp import IDRP, decode_batched

TOP = 10


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k(scores: np.ndarray, k: int = TOP) -> np.ndarray:
    """Indices of the k largest scores per row, best first (ties: lowest index)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    rows = np.arange(len(scores))[:, None]
    order = np.lexsort((part, -scores[rows, part]), axis=1)
    return part[rows, order]


def ranked(
    queries: np.ndarray, bank: np.ndarray, k: int = TOP, batch: int = 500, *, normalise: bool = True
) -> np.ndarray:
    """Top-k bank rows per query by cosine (bank rows normalised unless normalise=False)."""
    b = unit(bank) if normalise else np.asarray(bank, dtype=np.float32)
    q = unit(queries) if normalise else np.asarray(queries, dtype=np.float32)
    return np.concatenate([top_k(q[i : i + batch] @ b.T, k) for i in range(0, len(q), batch)])


def rec_cos(x: np.ndarray, x_hat: np.ndarray) -> float:
    return float((unit(x) * unit(x_hat)).sum(axis=1).mean())


def scores_of(top: np.ndarray, exact: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Task R@1 / R@10 against the labels, top-1 / top-10 agreement with exact search."""
    agree10 = np.mean([len(set(a) & set(b)) / TOP for a, b in zip(top, exact, strict=True)])
    return {
        "r1": float((top[:, 0] == target).mean()),
        "r10": float((top == target[:, None]).any(axis=1).mean()),
        "agree1": float((top[:, 0] == exact[:, 0]).mean()),
        "agree10": float(agree10),
    }


class PCAMap:
    """Centred PCA of the training embeddings: codes = (x - mean) @ V[:m].T."""

    def __init__(self, train: np.ndarray) -> None:
        x = train.astype(np.float64)
        self.mean = x.mean(axis=0)
        _, _, vh = np.linalg.svd(x - self.mean, full_matrices=False)
        self.vh = vh  # (d, d), rows = principal directions

    def codes(self, x: np.ndarray, m: int) -> np.ndarray:
        return ((x - self.mean) @ self.vh[:m].T).astype(np.float32)

    def decode(self, c: np.ndarray) -> np.ndarray:
        return (c @ self.vh[: c.shape[1]] + self.mean).astype(np.float32)


def faiss_roundtrip(
    key: str, train: np.ndarray, bank: np.ndarray, opq_niter: int, beam: int = 8
) -> tuple[np.ndarray, int]:
    """Train a faiss index_factory codec on train; bank reconstructions and bytes per item."""
    import faiss

    index = faiss.index_factory(train.shape[1], key)
    if key.startswith("OPQ"):
        faiss.downcast_VectorTransform(index.chain.at(0)).niter = opq_niter  # type: ignore[attr-defined]
    if key.startswith("RQ"):
        index.rq.max_beam_size = beam  # type: ignore[attr-defined]
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    codes = index.sa_encode(np.ascontiguousarray(bank, dtype=np.float32))
    return index.sa_decode(codes), int(codes.shape[1])


def rescored(
    model: IDRP,
    q: np.ndarray,
    zq: np.ndarray,
    z_bank: np.ndarray,
    r: int,
    batch: int = 250,
    keep: int = TOP,
) -> np.ndarray:
    """Top `keep` (<= r) after decoding the code ranking's top r and re-ranking by cosine with
    q."""
    out = []
    zb = unit(z_bank)
    for i in range(0, len(q), batch):
        cand = top_k(unit(zq[i : i + batch]) @ zb.T, r)  # (b, r)
        x_hat = unit(decode_batched(model, z_bank[cand.reshape(-1)]).numpy()).reshape(
            *cand.shape, -1
        )
        s = np.einsum("bd,brd->br", unit(q[i : i + batch]), x_hat)
        out.append(np.take_along_axis(cand, top_k(s, keep), axis=1))
    return np.concatenate(out)
