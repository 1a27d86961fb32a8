"""The exported model through the real engine against PyTorch: the first N validation crops (evaluate.py's
centred crops and LR), clean as PNG and saved as JPEG by Pillow, each through `infdit render --full
--seed k`, PSNR against the ground truth beside the PyTorch figure in an evaluate.py eval.json.
`--scale 16`: the cascade (the clean PNG only) against `evaluate.py --scale 16`'s eval-x16.json.

    /usr/bin/python3 model/measure/engine_check.py [--eval model/release/eval.json] [--model model/release/infdit-s4.json]
    /usr/bin/python3 model/measure/engine_check.py --scale 16 --eval model/release/eval-x16.json

Exits 1 when any image differs by more than --tol dB (the engine keeps K/V in fp16: a few grey levels).
"""
import argparse, json, subprocess, sys, tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "model"))
from training.data import load_split, centre_crop   # noqa: E402
from measure.evaluate import psnr                   # noqa: E402
from infdit.restore import clean_lr                # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", default="model/release/eval.json", help="evaluate.py's eval.json (the PyTorch figures)")
    ap.add_argument("--model", default="model/release/infdit-s4.json")
    ap.add_argument("--data", default=".data")
    ap.add_argument("--n", type=int, default=3, help="validation crops")
    ap.add_argument("--quality", type=int, default=75, help="the JPEG variant's quality (eval.json must hold jpegNN)")
    ap.add_argument("--tol", type=float, default=0.01, help="dB")
    ap.add_argument("--scale", type=int, default=4, choices=(4, 16), help="the eval.json's scale (evaluate.py --scale)")
    a = ap.parse_args()
    ev = json.loads(Path(a.eval).read_text())
    if ev.get("scale", 4) != a.scale:
        ap.error(f"--eval {a.eval} was measured at {ev.get('scale', 4)}×, not --scale {a.scale}")
    cw, ch = map(int, ev["crop"].split("x"))
    worst = 0.0
    # a variant the eval.json did not measure (evaluate.py --variants clean) is left out, and said
    wanted = (("png", "clean"),) + ((("jpg", f"jpeg{a.quality}"),) if a.scale == 4 else ())
    variants = [(e, v) for e, v in wanted if v in ev["per_image"]]
    if not variants:
        ap.error(f"--eval {a.eval} holds none of {[v for _, v in wanted]}")
    for _, v in wanted:
        if v not in ev["per_image"]:
            print(f"{a.eval} has no {v} figures: {v} not checked")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for k, (entry, arr) in enumerate(load_split(a.data, "val")[:a.n]):
            gt = centre_crop(arr, cw, ch)                  # evaluate.py's crop and clean LR
            clean = clean_lr(gt, a.scale)
            Image.fromarray(clean).save(tmp / f"lr{k}.png")
            Image.fromarray(clean).save(tmp / f"lr{k}.jpg", quality=a.quality)
            for ext, variant in variants:
                full = tmp / f"x-{k}-{variant}.png"
                r = subprocess.run(["node", str(ROOT / "bin/infdit.js"), "render", str(tmp / f"lr{k}.{ext}"), "--out", str(tmp / f"dzi{k}{ext}"),
                                    "--full", str(full), "--seed", str(k), "--scale", str(a.scale), "--model", a.model, "--data-dir", str(tmp / "data")],
                                   capture_output=True, text=True)
                if r.returncode:
                    raise SystemExit(f"infdit render lr{k}.{ext} failed: {r.stderr[-1000:]}")
                got = psnr(np.asarray(Image.open(full).convert("RGB")), gt)
                want = ev["per_image"][variant][k]["fidelity"]["psnr"]
                worst = max(worst, abs(got - want))
                print(f"{k} {variant:7s} {entry['file']}: engine {got:.3f} dB, torch {want:.3f} dB", flush=True)
    print(f"largest difference {worst:.3f} dB (tolerance {a.tol})")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
