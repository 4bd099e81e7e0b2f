"""What a weights file's info says about serving it, with no torch import (service.settings
resolves MT_* values against it before anything heavy loads)."""

from __future__ import annotations

from collections.abc import Mapping

from model.errors import CheckpointError

__all__ = ["RESCORE_IMAGE", "RESCORE_MAX", "default_rescore", "is_text_codec"]

# Candidates a read rescores on their reconstructions (issue 12) when neither the read nor
# MT_RESCORE says: the file's info["rescore_default"] when it has one (measured per codec, see
# weights/README.md), else RESCORE_IMAGE on an image codec and 0 on a text codec.
# RESCORE_IMAGE, measured (bench.http, 10k slots, 16 connections, digits-m16): 3 keeps
# 0.86-0.90x the req/s of a plain read, 10 0.72x; held-out recall@1 0.70 -> 0.80 with 3 (0.79
# with 10). Text codecs' reconstructions blur near-duplicate texts: rescoring gains nothing.
RESCORE_IMAGE = 3
RESCORE_MAX = 1000


def is_text_codec(info: Mapping[str, object]) -> bool:
    """Text codecs (trained on sentence embeddings) name their embedder in their info."""
    return isinstance(info.get("embedder"), dict)


def default_rescore(info: Mapping[str, object]) -> int:
    """The candidates a read on this codec rescores by default (see RESCORE_IMAGE)."""
    if "rescore_default" not in info:
        return 0 if is_text_codec(info) else RESCORE_IMAGE
    r = info["rescore_default"]
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= RESCORE_MAX:
        raise CheckpointError(
            f"weights info rescore_default must be an integer 0..{RESCORE_MAX}, got {r!r}"
        )
    return r
