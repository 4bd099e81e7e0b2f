"""Score shipped IDRP weights against PCA at the same m: `python -m model.evaluate`.

For each weights file, on the TEST split and on the training split of its data set: IDRP vs PCA
(fitted on the same training items). Metrics on reconstructions clipped to [0, 1] (data range 1):
mean per-item PSNR, PSNR of the global MSE (the fair one for patches), MAE and MSE. Writes
<out>/<name>.json and <out>/<name>.png (originals / IDRP / PCA, as the paper's figures) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from model import data as datasets
from model.checkpoint import load_idrp, read_metadata
from model.codec_info import is_text_codec
from model.idrp import IDRP


def metrics(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """PSNR (data range 1) per item then averaged, PSNR of the global MSE, MAE, MSE."""
    x_hat = np.clip(x_hat, 0.0, 1.0)
    err = (x_hat.astype(np.float64) - x.astype(np.float64)) ** 2
    per_item = err.mean(axis=1)
    psnr_items = 10 * np.log10(1.0 / np.maximum(per_item, 1e-12))
    mse = float(err.mean())
    return {
        "psnr": float(psnr_items.mean()),
        "psnr_global": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "mae": float(np.abs(x_hat - x).mean()),
        "mse": mse,
    }


def idrp_reconstruct(
    model: IDRP, x: np.ndarray, refine_steps: int = 0, batch_size: int = 1024
) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch_size):
        z = model.encode(torch.from_numpy(x[i : i + batch_size]), refine_steps=refine_steps)
        out.append(model.decode(z).cpu().numpy())
    return np.concatenate(out)


def pca_reconstruct(train: np.ndarray, m: int, x: np.ndarray) -> np.ndarray:
    pca = PCA(n_components=m, random_state=0).fit(train)
    return pca.inverse_transform(pca.transform(x))


def figure(path: Path, shape: tuple[int, ...], rows: dict[str, np.ndarray], n: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.1, len(rows) * 1.25))
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c].reshape(shape), 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    weights: Path, out_dir: Path, device: str = "cpu", refine_steps: int = 25
) -> dict[str, object]:
    model = load_idrp(weights, device=device)
    if is_text_codec(model.info):
        raise ValueError(f"{weights} is a text codec: score it with `python -m bench.text`")
    data_name = str(model.info.get("data", ""))
    split = datasets.load(data_name)
    m = model.config.m
    result: dict[str, object] = {
        "model": model.name,
        "weights": str(weights),
        "fingerprint": model.fingerprint,
        "data": data_name,
        "d": model.config.d,
        "m": m,
        "config": json.loads(model.config.to_json()),
        "train_items": len(split.train),
        "test_items": len(split.test),
        "refine_steps": refine_steps,
    }
    recon: dict[str, np.ndarray] = {}
    for part, x in (("test", split.test), ("train", split.train)):
        idrp_hat = idrp_reconstruct(model, x)
        pca_hat = pca_reconstruct(split.train, m, x)
        result[part] = {"idrp": metrics(x, idrp_hat), "pca": metrics(x, pca_hat)}
        if refine_steps:
            refined = idrp_reconstruct(model, x, refine_steps)
            result[part]["idrp_refined"] = metrics(x, refined)  # type: ignore[index]
        if part == "test":
            recon = {"original": x, "IDRP": idrp_hat, f"PCA m={m}": pca_hat}
    out_dir.mkdir(parents=True, exist_ok=True)
    result["figure"] = str(out_dir / f"{model.name}.png")
    figure(out_dir / f"{model.name}.png", split.shape, recon)
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__}
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out_dir / f"{model.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| model | split | IDRP PSNR | PCA PSNR | gain dB | IDRP+refine PSNR | gain dB "
        "| IDRP PSNR(global) | PCA PSNR(global) | IDRP MAE | PCA MAE | IDRP MSE | PCA MSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for part in ("test", "train"):
            s = r[part]
            assert isinstance(s, dict)
            i, p = s["idrp"], s["pca"]
            rf = s.get("idrp_refined")
            refined = f"{rf['psnr']:.2f} | {rf['psnr'] - p['psnr']:+.2f}" if rf else "- | -"
            lines.append(
                f"| {r['model']} | {part} | {i['psnr']:.2f} | {p['psnr']:.2f} | "
                f"{i['psnr'] - p['psnr']:+.2f} | {refined} | "
                f"{i['psnr_global']:.2f} | {p['psnr_global']:.2f} | "
                f"{i['mae']:.4f} | {p['mae']:.4f} | {i['mse']:.5f} | {p['mse']:.5f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "weights", nargs="*", help="weights files (default: every weights/*.safetensors)"
    )
    p.add_argument("--out-dir", default="weights/eval")
    p.add_argument("--device", default="cpu")
    p.add_argument("--refine-steps", type=int, default=25, help="also score refined codes")
    args = p.parse_args(argv)
    files = [Path(w) for w in args.weights] or [
        f
        for f in sorted(Path("weights").glob("*.safetensors"))
        if not is_text_codec(json.loads(read_metadata(f).get("info", "{}")))
    ]
    results = [evaluate(f, Path(args.out_dir), args.device, args.refine_steps) for f in files]
    text = table(results)
    print(text)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if not args.weights:
        (Path(args.out_dir) / "summary.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
