"""The paper's experiments (MemoryTransit Sec. 4.1 and 4.2), reproduced: `python -m model.paper`.

The paper scores IDRP and PCA on four images by PSNR / MAE / MSE per image and names neither the
images, nor m, nor the synthetic data (../shared/paper/EXPERIMENTS.md). Our choices, each
written into the results:

- Images: the four quadrants of scikit-learn's flower.jpg (BT.601 luma in [0, 1], each cropped
  to 208 x 320), cut into non-overlapping 8 x 8 patches (d = 64): 1,040 patches per image. An
  item is a patch, the code keeps m = 8 of its 64 values (8x fewer numbers). A score is over
  the whole image (all its patches' pixels, reconstructions clipped to [0, 1], data range 1).
- IDRP: the paper's 4.2 shape, 6 affine coupling layers of hidden width 256, predictor hidden
  256, g pre-trained alone (f frozen) for 2,000 steps, then f and g jointly. Beyond the paper,
  f starts at PCA (`IDRP.fit_pca`, the repo's default) and each subnet has 1 residual block.
- 4.1 trained on synthetic data, two kinds (`SYNTHETIC`): "gauss", Gaussian patches with the
  mean and covariance of the real training patches (china.jpg, stride 4: `model.data.patches`
  train split), clipped to [0, 1]; "fields", smooth random fields with a 1/f^2 power spectrum
  (natural images' slope), random mean and contrast per patch. No real pixel reaches training.
- 4.2 trained on real data: "paper" trains on the four images' own patches (the paper's setting:
  its numbers are fits of the training data); "held out" trains on china.jpg's patches and
  tests on the flower quadrants, which it never saw.
- PCA, the paper's way: fitted on the four images' patches, i.e. on the test items themselves
  (the paper's PCA numbers are the same in 4.1 and 4.2). Held out: fitted on the same training
  items as IDRP (the synthetic patches in 4.1, china's in 4.2).

Writes bench/results/paper.md and paper.json. A run is a few CPU minutes per experiment on one
thread; `--steps` / `--pretrain-steps` / `--synthetic-items` scale it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA

from model.config import IDRPConfig
from model.idrp import IDRP

__all__ = [
    "PAPER",
    "SYNTHETIC",
    "TrainSpec",
    "field_patches",
    "flower_images",
    "gaussian_patches",
    "image_scores",
    "main",
    "to_patches",
    "train_idrp",
]

PATCH = 8
M = 8
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The paper's tables (EXPERIMENTS.md): per image (PSNR dB, MAE, MSE).
PAPER: dict[str, dict[str, list[tuple[float, float, float]]]] = {
    "4.1": {
        "IDRP": [
            (15.40, 0.128622, 0.028872),
            (14.94, 0.135155, 0.032035),
            (13.54, 0.154129, 0.044223),
            (17.87, 0.100705, 0.016349),
        ],
    },
    "4.2": {
        "IDRP": [
            (40.60, 0.004741, 0.000087),
            (39.04, 0.005617, 0.000125),
            (44.34, 0.002972, 0.000037),
            (42.05, 0.004154, 0.000062),
        ],
    },
}
PAPER_PCA = [
    (27.68, 0.032490, 0.001706),
    (27.22, 0.034426, 0.001898),
    (29.60, 0.026074, 0.001097),
    (27.90, 0.031142, 0.001624),
]
PAPER["4.1"]["PCA"] = PAPER["4.2"]["PCA"] = PAPER_PCA


# ------------------------------------------------------------------------------------ data


def _luma(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image(name).astype(np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114])  # (H, W) in [0, 1]


def flower_images() -> list[np.ndarray]:
    """The four test images: flower.jpg's quadrants (213 x 320), cropped to multiples of 8."""
    img = _luma("flower.jpg")
    h, w = img.shape[0] // 2, img.shape[1] // 2
    quads = [img[:h, :w], img[:h, w:], img[h:, :w], img[h:, w:]]
    return [q[: q.shape[0] // PATCH * PATCH, : q.shape[1] // PATCH * PATCH] for q in quads]


def to_patches(img: np.ndarray, size: int = PATCH, stride: int = PATCH) -> np.ndarray:
    """(H, W) -> (N, size * size) float32 patches at this stride (row-major)."""
    windows = np.lib.stride_tricks.sliding_window_view(img, (size, size))[::stride, ::stride]
    return windows.reshape(-1, size * size).astype(np.float32)


def china_patches() -> np.ndarray:
    """The real training patches of the held-out runs: china.jpg at stride 4 (16,695)."""
    return to_patches(_luma("china.jpg"), stride=4)


def gaussian_patches(n: int, ref: np.ndarray, seed: int) -> np.ndarray:
    """n patches from N(mean, cov) of the reference patches ref (N, d), clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    ref64 = ref.astype(np.float64)
    x = rng.multivariate_normal(ref64.mean(axis=0), np.cov(ref64, rowvar=False), size=n)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def field_patches(n: int, seed: int, size: int = PATCH, alpha: float = 2.0) -> np.ndarray:
    """n smooth random fields (size x size, flattened) with power spectrum 1/f^alpha: white
    noise on a 2x larger grid shaped in Fourier space and cropped (so it need not be periodic),
    then a random mean in [0.1, 0.9] and a random contrast (log-uniform std 0.01-0.25) per
    patch, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    g = 2 * size
    f = np.sqrt(np.fft.fftfreq(g)[:, None] ** 2 + np.fft.fftfreq(g)[None, :] ** 2)
    amp = np.where(f > 0, 1.0 / np.maximum(f, 1e-9) ** (alpha / 2), 0.0)  # (g, g)
    noise = rng.standard_normal((n, g, g))
    field = np.fft.ifft2(np.fft.fft2(noise) * amp).real[:, :size, :size]  # (n, size, size)
    field = field.reshape(n, -1)
    field = (field - field.mean(axis=1, keepdims=True)) / field.std(axis=1, keepdims=True)
    mean = rng.uniform(0.1, 0.9, (n, 1))
    std = np.exp(rng.uniform(np.log(0.01), np.log(0.25), (n, 1)))
    return np.clip(mean + std * field, 0.0, 1.0).astype(np.float32)


SYNTHETIC = ("gauss", "fields")


def synthetic(kind: str, n: int, seed: int) -> np.ndarray:
    if kind == "gauss":
        return gaussian_patches(n, china_patches(), seed)
    if kind == "fields":
        return field_patches(n, seed)
    raise ValueError(f"expected a synthetic kind in {SYNTHETIC}, got {kind!r}")


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class TrainSpec:
    """How each experiment trains (the paper's 4.2 shape; steps scaled to CPU minutes)."""

    m: int = M
    n_layers: int = 6
    hidden: int = 256
    n_blocks: int = 1
    predictor_hidden: int = 256
    pretrain_steps: int = 2000
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    pca_init: bool = True  # False: the paper's identity start


def train_idrp(x: np.ndarray, spec: TrainSpec) -> IDRP:
    """IDRP on items x (N, d): PCA start, g alone for pretrain_steps (the paper's pre-training,
    f frozen), then f and g jointly for `steps` (AdamW, warm-up + cosine, gradient clip 1)."""
    from model.train import warmup_cosine

    config = IDRPConfig(
        d=x.shape[1],
        m=spec.m,
        n_layers=spec.n_layers,
        hidden=spec.hidden,
        n_blocks=spec.n_blocks,
        predictor_hidden=spec.predictor_hidden,
        seed=spec.seed,
        pca_init=spec.pca_init,
    )
    model = IDRP(config)
    xt = torch.from_numpy(x)
    if spec.pca_init:
        model.fit_pca(xt)
    g = torch.Generator().manual_seed(spec.seed)

    def batches(n_steps: int) -> Any:
        for _ in range(n_steps):
            yield xt[torch.randint(0, len(xt), (spec.batch_size,), generator=g)]

    model.train()
    opt_g = torch.optim.AdamW(model.predictor.parameters(), lr=spec.lr)
    for xb in batches(spec.pretrain_steps):
        opt_g.zero_grad(set_to_none=True)
        model.predictor_loss(xb).backward()
        opt_g.step()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-5)
    sched = warmup_cosine(opt, max(spec.steps, 1))
    for xb in batches(spec.steps):
        loss, _ = model.loss(xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


def image_scores(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """One image's scores over all its pixels: PSNR (data range 1), MAE, MSE; x_hat clipped."""
    err = np.clip(x_hat, 0.0, 1.0).astype(np.float64) - x.astype(np.float64)
    mse = float((err**2).mean())
    return {
        "psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "mae": float(np.abs(err).mean()),
        "mse": mse,
    }


def _pca(train: np.ndarray, m: int) -> PCA:
    return PCA(n_components=m, random_state=0).fit(train)


def _score_all(
    model: IDRP, pca_paper: PCA, pca_held: PCA, images: list[np.ndarray]
) -> list[dict[str, dict[str, float]]]:
    out = []
    for x in images:
        with torch.no_grad():
            idrp = model.decode(model.encode(torch.from_numpy(x))).numpy()
        out.append(
            {
                "idrp": image_scores(x, idrp),
                "pca_paper": image_scores(x, pca_paper.inverse_transform(pca_paper.transform(x))),
                "pca_held_out": image_scores(x, pca_held.inverse_transform(pca_held.transform(x))),
            }
        )
    return out


def experiments(spec: TrainSpec, synthetic_items: int) -> list[dict[str, Any]]:
    """Every run: (experiment, variant, what IDRP trained on, per-image scores, seconds)."""
    images = [to_patches(img) for img in flower_images()]
    test_all = np.concatenate(images)
    pca_paper = _pca(test_all, spec.m)
    china = china_patches()
    runs: list[tuple[str, str, str, np.ndarray]] = [
        *(
            (
                "4.1",
                kind,
                f"synthetic {kind}: {synthetic_items:,} patches (held out by construction)",
                synthetic(kind, synthetic_items, spec.seed),
            )
            for kind in SYNTHETIC
        ),
        ("4.2", "paper", f"the 4 test images' own {len(test_all):,} patches", test_all),
        ("4.2", "held out", f"china.jpg, {len(china):,} patches at stride 4", china),
    ]
    results = []
    for experiment, variant, trained_on, x_train in runs:
        start = time.time()
        model = train_idrp(x_train, spec)
        seconds = time.time() - start
        scores = _score_all(model, pca_paper, _pca(x_train, spec.m), images)
        results.append(
            {
                "experiment": experiment,
                "variant": variant,
                "trained_on": trained_on,
                "train_items": len(x_train),
                "train_seconds": round(seconds, 1),
                "images": scores,
            }
        )
        print(f"{experiment} {variant}: {seconds:.0f} s", file=sys.stderr)
    return results


# ------------------------------------------------------------------------------------ report


def _mean(rows: list[dict[str, dict[str, float]]], key: str, metric: str) -> float:
    return float(np.mean([r[key][metric] for r in rows]))


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| exp | IDRP trained on | image | paper IDRP PSNR / MAE / MSE | ours IDRP PSNR / MAE / "
        "MSE | paper PCA PSNR | ours PCA (paper's way) PSNR / MAE / MSE | PCA held out PSNR |"
    )
    lines = [head, "|---|---|---:|---|---|---:|---|---:|"]
    for r in results:
        paper = PAPER[r["experiment"]]
        for i, s in enumerate(r["images"]):
            pi, pp = paper["IDRP"][i], paper["PCA"][i]
            lines.append(
                f"| {r['experiment']} | {r['variant']} | {i + 1} | "
                f"{pi[0]:.2f} / {pi[1]:.4f} / {pi[2]:.5f} | "
                f"**{s['idrp']['psnr']:.2f}** / {s['idrp']['mae']:.4f} / {s['idrp']['mse']:.5f} | "
                f"{pp[0]:.2f} | {s['pca_paper']['psnr']:.2f} / {s['pca_paper']['mae']:.4f} / "
                f"{s['pca_paper']['mse']:.5f} | {s['pca_held_out']['psnr']:.2f} |"
            )
    lines += [
        "",
        "Means over the 4 images (PSNR dB):",
        "",
        "| exp | IDRP trained on | paper IDRP | ours IDRP | paper PCA | ours PCA paper's way "
        "| ours PCA held out | ours IDRP - PCA paper's way | ours IDRP - PCA held out |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        paper = PAPER[r["experiment"]]
        rows = r["images"]
        idrp, pca_p, pca_h = (_mean(rows, k, "psnr") for k in ("idrp", "pca_paper", "pca_held_out"))
        lines.append(
            f"| {r['experiment']} | {r['variant']} | "
            f"{np.mean([p[0] for p in paper['IDRP']]):.2f} | {idrp:.2f} | "
            f"{np.mean([p[0] for p in paper['PCA']]):.2f} | {pca_p:.2f} | {pca_h:.2f} | "
            f"{idrp - pca_p:+.2f} | {idrp - pca_h:+.2f} |"
        )
    return "\n".join(lines)


SETUP = """Setup (the paper names none of it; model/paper.py's docstring has the details):
images = the 4 quadrants of scikit-learn's flower.jpg (BT.601 luma in [0, 1], 208 x 320 each),
items = their non-overlapping 8 x 8 patches (d = 64, 1,040 per image), m = 8 kept values per
patch; a score is over all of an image's pixels (reconstructions clipped to [0, 1]). IDRP = the
paper's 4.2 shape: 6 affine couplings, hidden 256, predictor hidden 256, g pre-trained alone
for {pretrain:,} steps (f frozen), then {steps:,} joint steps of batch 256 (scaled to a few CPU
minutes per run; no validation, no early stopping); f starts at {start} and each subnet has 1
residual block (beyond the paper). 4.1 trains on synthetic patches only ({synthetic:,}): "gauss" =
Gaussian with the mean and covariance of china.jpg's patches, "fields" = 1/f^2 random fields
with random mean and contrast. 4.2 "paper" trains on the 4 test images' own patches (as the
paper, whose numbers are training-set fits); "held out" trains on china.jpg's 16,695 patches
(stride 4) and never sees flower.jpg. PCA "paper's way" is fitted on the 4 test images'
patches (the test items themselves, as the paper's identical 4.1 / 4.2 PCA rows suggest);
"held out" on the same training items as IDRP (synthetic patches in 4.1, china.jpg in 4.2)."""


def render(doc: dict[str, Any]) -> str:
    spec = doc["spec"]
    setup = SETUP.format(
        pretrain=spec["pretrain_steps"],
        steps=spec["steps"],
        synthetic=doc["synthetic_items"],
        start="PCA" if spec.get("pca_init", True) else "the identity (as the paper)",
    )
    seconds = ", ".join(
        f"{r['experiment']} {r['variant']} {r['train_seconds']:.0f} s" for r in doc["results"]
    )
    return (
        f"# The paper's experiments (Sec. 4.1, 4.2), reproduced\n\n`{doc['command']}` "
        f"({doc['date']}, {doc['threads']} thread; training: {seconds})\n\n{setup}\n\n"
        f"Per image (ours in bold; the paper's beside):\n\n{table(doc['results'])}\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=TrainSpec.steps, help="joint training steps")
    p.add_argument("--pretrain-steps", type=int, default=TrainSpec.pretrain_steps)
    p.add_argument("--synthetic-items", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-pca-init", action="store_true", help="f starts at the identity (paper)")
    p.add_argument("--out", default=str(RESULTS / "paper"), help="writes <out>.md and .json")
    p.add_argument("--render", action="store_true", help="only rewrite <out>.md from <out>.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        out.with_suffix(".md").write_text(render(json.loads(out.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(args.threads)
    spec = TrainSpec(
        steps=args.steps, pretrain_steps=args.pretrain_steps, pca_init=not args.no_pca_init
    )
    results = experiments(spec, args.synthetic_items)
    cmd = "python -m model.paper " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = {
        "command": cmd.strip(),
        "spec": spec.__dict__,
        "patch": PATCH,
        "synthetic_items": args.synthetic_items,
        "paper": PAPER,
        "results": results,
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "threads": args.threads,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    text = render(doc)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
