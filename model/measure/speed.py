"""Where a GPU training step's time goes, and what each way of attending costs there. One process runs
train.py's own profiled step (same data, degradations, loss and seam loss as a run) once per variant:

    python3 model/measure/speed.py --data .data --ckpt /tmp/speed [--variants V,V,…] [--seconds 240]

A variant is BATCH:BIAS:BACKEND[:compile][:trace] — train.py's --batch, --attn-bias (mask | fold),
--sdpa-backend (auto | flash | efficient | cudnn | math), --compile, --torch-profile (the top kernels).
A variant that fails (a kernel that refuses its inputs, out of memory, out of time) is reported and the
next one runs. First, the evaluation path (fp32, no grad; what evaluate.py runs) on this device against
the CPU, for both ways of giving the bias. Ends with one line per variant, fastest first.
"""
import argparse, sys, time, traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit import network
from training import train
from training.data import load_split

# What the H200 run of 2026-11-28 measured (results/speed-h200.log) was the eager kernels at batch 64 and
# fold:auto:compile at 256 (eager 256 with fold ran out of its 139 GiB). Next: where the compiled step's
# time goes, whether mask compiles as well, and how the rate scales with batch (256 peaked at 99.8 GiB).
DEFAULT = "64:mask:auto,256:fold:auto:compile:trace,256:mask:auto:compile,128:fold:auto:compile"


def parse_variant(text):
    parts = text.split(":")
    flags = set(parts[3:])
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] not in train.ATTN_BIASES \
            or parts[2] not in train.SDPA_BACKENDS or flags - {"compile", "trace"}:
        raise SystemExit(f"--variants: {text!r} is not BATCH:{'|'.join(train.ATTN_BIASES)}:{'|'.join(train.SDPA_BACKENDS)}[:compile][:trace]")
    return int(parts[0]), parts[1], parts[2], "compile" in flags, "trace" in flags


def check_eval_path(ckpt, data, device):
    """Max |device − CPU| of forward_image (fp32, no grad) on a validation crop, per bias mode."""
    model, _ = train.load_ema(ckpt)
    cfg = model.cfg
    img = torch.from_numpy(load_split(data, "val")[0][1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    side = lambda n: min(n, 4 * cfg.block) // cfg.block * cfg.block   # whole blocks, at most 4 a side
    hr = img[..., :side(img.shape[2]), :side(img.shape[3])]
    lr = torch.nn.functional.avg_pool2d(hr, cfg.scale)
    g = torch.Generator().manual_seed(0)
    x = hr + 0.5 * torch.randn(hr.shape, generator=g)
    sigma = torch.tensor([0.5])
    with torch.no_grad():
        ref = model.forward_image(x, lr, sigma)
        md = model.to(device)
        for mode in ("mask", "fold"):
            network.SDPA_BIAS = mode
            try:
                out = md.forward_image(x.to(device), lr.to(device), sigma.to(device)).cpu()
                print(f"evaluation path on {device}, bias {mode}: max |Δ| vs CPU {(out - ref).abs().max().item():.2e}", flush=True)
            except Exception as e:  # noqa: BLE001 — the point is to report it
                print(f"evaluation path on {device}, bias {mode}: FAILED {type(e).__name__}: {e}", flush=True)
    network.SDPA_BIAS = "mask"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".data")
    ap.add_argument("--ckpt", default="/tmp/infdit-speed", help="scratch folder for train.py's checkpoint")
    ap.add_argument("--init", default="model/release/infdit-s4.ckpt.pt", help="the weights every variant starts from")
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("--seconds", type=float, default=240.0, help="all variants together; the last ones get what is left")
    ap.add_argument("--per-variant", type=float, default=30.0, help="seconds a variant may take (compile: 4×)")
    ap.add_argument("--steps", type=int, default=10, help="profiled steps per variant, after --skip unprofiled")
    ap.add_argument("--skip", type=int, default=5, help="unprofiled steps first (warm-up; a compiled variant compiles in them)")
    ap.add_argument("--crop", type=int, default=256, help="train.py's --crop")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    variants = [parse_variant(v) for v in a.variants.split(",")]
    t0 = time.time()
    print(f"torch {torch.__version__}, device {a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device == "cuda" else ""), flush=True)
    check_eval_path(a.init, a.data, a.device)
    results = []
    for batch, bias, backend, comp, trace in variants:
        name = f"batch {batch} bias {bias} sdpa {backend}{' compiled' if comp else ''}"
        left = a.seconds - (time.time() - t0)
        budget = min(left, a.per_variant * (4 if comp else 1))
        if budget < 10:
            print(f"{name}: skipped, {left:.0f} s left", flush=True); results.append((name, None)); continue
        argv = ["--data", a.data, "--ckpt", a.ckpt, "--init", a.init, "--device", a.device, "--batch", str(batch), "--crop", str(a.crop),
                "--attn-bias", bias, "--sdpa-backend", backend, "--seam-weight", "5", "--seam-loss", "ratio",
                "--no-optimizer-in-ckpt", "--minutes", f"{budget / 60:.3f}", "--profile-skip", str(a.skip),
                "--profile-steps", str(a.steps), "--max-steps", str(a.skip + a.steps), "--save-every", "1e9"]
        argv += ["--compile"] if comp else []
        argv += ["--torch-profile"] if trace else []
        print(f"--- {name}", flush=True)
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            rate = train.main(argv)
        except Exception as e:  # noqa: BLE001 — a refusing kernel or OOM is a result, not the end
            print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
            traceback.print_exc(limit=2)
            rate = None
        finally:
            if a.device == "cuda":
                torch.cuda.empty_cache()
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if a.device == "cuda" else 0
        print(f"{name}: {f'{rate:.1f} crops/s' if rate else 'no figure (failed or out of time)'}, peak {peak:.1f} GiB", flush=True)
        results.append((name, rate))
    print("=== summary (train.py's profiled step, crops/s), fastest first")
    for name, rate in sorted(results, key=lambda r: -(r[1] or 0)):
        print(f"{rate:9.1f}  {name}" if rate else f"{'—':>9}  {name}")


if __name__ == "__main__":
    main()
