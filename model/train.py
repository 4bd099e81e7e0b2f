"""Train an IDRP codec: `python -m model.train --data digits --m 16 --name digits-m16`.

Seeded; a validation split carved from the training items (never the test items) picks the
best epoch; writes weights/<name>.safetensors with the config and the training facts inside.
Optional: the paper's predictor pre-training phase (g alone, f frozen) before joint training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from tqdm import tqdm

from model import data as datasets
from model.checkpoint import save_idrp
from model.codec_info import RESCORE_MAX
from model.config import IDRPConfig
from model.idrp import IDRP, encode_batched
from model.ratecode import fit_rate_code


def random_shift(
    x: torch.Tensor, shape: tuple[int, ...], max_shift: int, g: torch.Generator
) -> torch.Tensor:
    """Shift each 2-D item by up to max_shift pixels (zero fill): cheap augmentation."""
    if max_shift == 0 or len(shape) != 2:
        return x
    b = x.shape[0]
    h, w = shape
    p = max_shift
    padded = torch.nn.functional.pad(x.view(b, 1, h, w), (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # (B, h, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # (B, 1, w)
    out = padded[torch.arange(b)[:, None, None], 0, rows, cols]  # (B, h, w)
    return out.reshape(b, h * w)


def random_affine(
    x: torch.Tensor, shape: tuple[int, ...], strength: float, g: torch.Generator
) -> torch.Tensor:
    """Small random rotation / scale / sub-pixel shift of each 2-D item (bilinear resampling).

    strength 1.0 means up to 10 degrees, 10% scale and half a pixel of shift.
    """
    if strength == 0 or len(shape) != 2:
        return x
    b = x.shape[0]
    h, w = shape
    u = (torch.rand(b, 4, generator=g) * 2 - 1) * strength  # (B, 4) in [-s, s]
    angle = u[:, 0] * torch.pi / 18
    scale = 1 + 0.1 * u[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, u[:, 2] / w], dim=1),  # half a pixel = 1/w in [-1, 1] units
            torch.stack([sin, cos, u[:, 3] / h], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [b, 1, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x.view(b, 1, h, w), grid, align_corners=False)
    return out.reshape(b, h * w).clamp(0, 1)


@torch.no_grad()
def mean_mse(
    model: IDRP, x: torch.Tensor, batch_size: int = 1024, value_range: tuple[float, float] = (0, 1)
) -> float:
    """Mean squared error of the reconstructions, clipped to the data's value range."""
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        total += float(((model.reconstruct(xb).clamp(*value_range) - xb) ** 2).sum())
    return total / x.numel()


def decoder_sensitivity(model: IDRP, x: np.ndarray, n: int = 256) -> np.ndarray:
    """Per code dimension j, E ||d decode(z) / d z_j||^2 over (at most n of) the items x: how
    much pixel MSE one unit of squared error in z_j costs, to first order. With independent
    per-dimension quantisation errors e_j, E ||x_hat(z + e) - x_hat(z)||^2 ~= sum_j w_j E e_j^2,
    so these weights make the bit allocation minimise reconstruction error, not code error."""
    z = encode_batched(model, x[:n])
    w = np.empty(model.config.m)
    with torch.no_grad():
        for j in range(model.config.m):
            e = torch.zeros_like(z)
            e[:, j] = 1.0
            jv = torch.func.jvp(model.reconstruct_from, (z,), (e,))[1]
            w[j] = float((jv**2).sum(dim=1).mean()) / model.config.d
    return w


def rate_codes(model: IDRP, x: np.ndarray, budgets: list[int], seed: int) -> dict[str, object]:
    """Rate-allocated codes (model/ratecode.py) of the model's codes of x, per budget in bytes,
    bits allocated by decoder-weighted distortion (`decoder_sensitivity`)."""
    if not budgets:
        return {}
    z = encode_batched(model, x).numpy()
    w = decoder_sensitivity(model, x)
    return {
        f"{b}B": fit_rate_code(z, b, weights=w, seed=seed).to_dict() for b in sorted(set(budgets))
    }


def add_rate_codes(
    path: Path, budgets: list[int], command: str, default: int | None = None
) -> dict[str, object]:
    """Fit rate codes (`rate_codes`) for an already trained weights file, on the same fit split
    its training used (the seeded validation carve-out of its data set's train split), and
    write them into its info["rate_codes"], beside any it has. Tensors, config and so the
    fingerprint are unchanged: banks and snapshots made with the file stay valid."""
    import safetensors

    from model.checkpoint import load_idrp
    from model.durable import write_safetensors

    model = load_idrp(path)
    info = dict(model.info)
    split = datasets.load(str(info["data"]))
    total = int(info["train_items"]) + int(info["val_items"])  # type: ignore[call-overload]
    train_np = split.train[:total]  # as --max-train took them
    fit_np, val_np = datasets.train_val_split(train_np, 0.1, model.config.seed)
    if (len(fit_np), len(val_np)) != (info.get("train_items"), info.get("val_items")):
        raise ValueError(
            f"expected the file's split {info.get('train_items')} / {info.get('val_items')}, "
            f"got {len(fit_np)} / {len(val_np)}: it was not trained with the default split"
        )
    rates = rate_codes(model, fit_np, budgets, model.config.seed)
    info["rate_codes"] = {**dict(info.get("rate_codes", {})), **rates}  # type: ignore[call-overload]
    info["rate_codes_command"] = command
    if default is not None:
        info["rate_default"] = f"{default}B"
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    metadata["info"] = json.dumps(info, sort_keys=True)
    write_safetensors(path, tensors, metadata)
    return {k: v["code_bytes"] for k, v in rates.items()}  # type: ignore[index]


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", choices=sorted(datasets.LOADERS))
    p.add_argument("--m", type=int)
    p.add_argument(
        "--add-rate-codes",
        type=Path,
        metavar="WEIGHTS",
        help="fit --rate-bytes codes for this trained file and write them into it (no training)",
    )
    p.add_argument("--name", help="weights/<name>.safetensors (default <data>-m<m>)")
    p.add_argument("--out-dir", default="weights")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--n-blocks", type=int, default=2)
    p.add_argument("--predictor-hidden", type=int, default=256)
    p.add_argument("--clamp", type=float, default=2.0)
    p.add_argument("--no-pca-init", action="store_true", help="start f from the identity (paper)")
    p.add_argument("--aux-weight", type=float, default=0.0, help="weight of the z_aux term")
    p.add_argument("--pretrain-epochs", type=int, default=0, help="paper's g pre-training phase")
    p.add_argument("--shift", type=int, default=0, help="random shift augmentation, pixels")
    p.add_argument("--affine", type=float, default=0.0, help="random affine augmentation strength")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian input noise")
    p.add_argument("--code-noise", type=float, default=0.0, help="std of noise on z_comp")
    p.add_argument("--sim-weight", type=float, default=0.0, help="similarity-keeping term")
    p.add_argument("--sim-temp", type=float, default=0.0, help="0: cosine MSE; > 0: listwise KL")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of weights (0 = off)")
    p.add_argument("--rate-bytes", type=int, nargs="*", default=[], help="rate codes to fit, B")
    p.add_argument(
        "--rate-default", type=int, default=None, help="the rate code a bank uses by default, B"
    )
    p.add_argument(
        "--rescore-default",
        type=int,
        default=None,
        help="candidates a read rescores by default on this codec (info['rescore_default'], "
        "what MT_RESCORE=auto serves; unset: the service's rule)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=40, help="epochs without val improvement")
    p.add_argument("--max-train", type=int, default=0, help="use at most this many train items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.add_rate_codes is None and (args.data is None or args.m is None):
        p.error("expected --data and --m (or --add-rate-codes WEIGHTS)")
    if args.add_rate_codes is not None and not args.rate_bytes:
        p.error("expected --rate-bytes with --add-rate-codes")
    if args.rate_default is not None and args.rate_default not in args.rate_bytes:
        p.error(f"expected --rate-default among --rate-bytes {args.rate_bytes}")
    if args.rescore_default is not None and not 0 <= args.rescore_default <= RESCORE_MAX:
        p.error(f"expected --rescore-default in 0..{RESCORE_MAX}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the weights file
    return args


def build_model(args: argparse.Namespace, d: int, x_fit: torch.Tensor) -> IDRP:
    config = IDRPConfig(
        d=d,
        m=args.m,
        n_layers=args.n_layers,
        hidden=args.hidden,
        n_blocks=args.n_blocks,
        predictor_hidden=args.predictor_hidden,
        clamp=args.clamp,
        seed=args.seed,
        pca_init=not args.no_pca_init,
    )
    model = IDRP(config)
    if config.pca_init:
        model.fit_pca(x_fit)
    return model


def pretrain_predictor(
    model: IDRP, x_fit: torch.Tensor, args: argparse.Namespace, g: torch.Generator
) -> None:
    """The paper's pre-training phase: g alone, f frozen, for args.pretrain_epochs."""
    opt_g = torch.optim.AdamW(model.predictor.parameters(), lr=args.lr)
    for _ in tqdm(range(args.pretrain_epochs), desc="pre-train g", file=sys.stderr):
        model.train()
        for idx in torch.randperm(len(x_fit), generator=g).split(args.batch_size):
            opt_g.zero_grad(set_to_none=True)
            model.predictor_loss(x_fit[idx]).backward()
            opt_g.step()


def warmup_cosine(
    opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(500, total_steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / max(warmup, 1))
            * 0.5
            * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        ),
    )


Best = tuple[float, int, dict[str, torch.Tensor]]  # (val MSE, epoch, state dict)


def fit(
    model: IDRP,
    split: datasets.Split,
    x_fit: torch.Tensor,
    x_val: torch.Tensor,
    args: argparse.Namespace,
    g: torch.Generator,
    init_val: float,
) -> tuple[Best, int]:
    """Joint training with early stopping on x_val (init_val: its MSE before training, the floor
    to beat); the best (val MSE, epoch, state) and the epochs run."""
    vrange = split.value_range
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = warmup_cosine(opt, args.epochs * math.ceil(len(x_fit) / args.batch_size))
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)
        )
        if args.ema
        else None
    )
    best: Best = (init_val, 0, clone_state(model))
    desc = f"train {args.data} m={args.m}"
    bar = tqdm(range(1, args.epochs + 1), desc=desc, file=sys.stderr, mininterval=5)
    epoch = 0
    for epoch in bar:
        model.train()
        for idx in torch.randperm(len(x_fit), generator=g).split(args.batch_size):
            xb = random_shift(x_fit[idx], split.shape, args.shift, g)
            xb = random_affine(xb, split.shape, args.affine, g)
            if args.noise:
                xb = (xb + args.noise * torch.randn(xb.shape, generator=g)).clamp(*vrange)
            loss, parts = model.loss(
                xb,
                aux_weight=args.aux_weight,
                code_noise=args.code_noise,
                sim_weight=args.sim_weight,
                sim_temp=args.sim_temp,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
        scored = model if ema is None else cast(IDRP, ema.module)
        val = mean_mse(scored, x_val, value_range=vrange)
        if val < best[0]:
            best = (val, epoch, clone_state(scored))
        bar.set_postfix(
            train=f"{parts['recon']:.5f}", val=f"{val:.5f}", best=f"{best[0]:.5f}@{best[1]}"
        )
        if epoch - best[1] >= args.patience:
            break
    return best, epoch


def clone_state(model: IDRP) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def train(args: argparse.Namespace) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    split = datasets.load(args.data)
    train_np = split.train[: args.max_train] if args.max_train else split.train
    fit_np, val_np = datasets.train_val_split(train_np, args.val_fraction, args.seed)
    x_fit, x_val = torch.from_numpy(fit_np), torch.from_numpy(val_np)
    model = build_model(args, split.d, x_fit)
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()
    init_val = mean_mse(model, x_val, value_range=split.value_range)
    if args.pretrain_epochs:
        pretrain_predictor(model, x_fit, args, g)
    best, epochs_run = fit(model, split, x_fit, x_val, args, g, init_val)
    model.load_state_dict(best[2])
    model.eval()
    model.calibrate_code_scales(torch.from_numpy(train_np))
    rates = rate_codes(model, fit_np, args.rate_bytes, args.seed)
    seconds = time.time() - start
    name = args.name or f"{args.data}-m{args.m}"
    out = Path(args.out_dir) / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {
        **split.meta,
        "data": args.data,
        "train_items": len(fit_np),
        "val_items": len(val_np),
        "test_items_used": 0,
        "best_epoch": best[1],
        "epochs_run": epochs_run,
        "val_mse_init": init_val,
        "val_mse_best": best[0],
        "train_seconds": round(seconds, 1),
        "hardware": hardware(),
        "torch": torch.__version__,
        "command": "python -m model.train " + shlex.join(args.argv),
    }
    if rates:
        info["rate_codes"] = rates  # fitted on the fit split's codes (model/ratecode.py)
    if args.rate_default is not None:
        info["rate_default"] = f"{args.rate_default}B"
    if args.rescore_default is not None:
        info["rescore_default"] = args.rescore_default
    fp = save_idrp(model, out, name=name, info=info, shape=split.shape)
    print(json.dumps({"weights": str(out), "fingerprint": fp, **info}, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    np.set_printoptions(precision=4)
    args = parse_args(argv)
    if args.add_rate_codes is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        command = "python -m model.train " + shlex.join(args.argv)
        added = add_rate_codes(args.add_rate_codes, args.rate_bytes, command, args.rate_default)
        print(json.dumps(added))
        return
    train(args)


if __name__ == "__main__":
    main()
