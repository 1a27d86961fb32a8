"""Would the transformer add anything to the base if mixed in? PSNR over Lanczos3 of (1 − w)·base + w·model
for a range of w, on a split's evaluation crops (evaluate.py's crops and clean LR), the model's `fidelity`
preset. A model trained over bicubic that knows what the base lacks would beat the base at some w > 0.

    /usr/bin/python3 model/measure/blend.py --base model/release/infdit-s4.base.ckpt.pt [--data .data --split val]
"""
import argparse, json, sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from training.train import load_ema, all_cores
from infdit.base import load as load_base, cascade
from infdit.sample import sample_image
from training.data import load_split, centre_crop, degrade
from measure.evaluate import to_u8, psnr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="model/release/infdit-s4.ckpt.pt")
    ap.add_argument("--manifest", default="model/release/infdit-s4.json", help="its sampling (the fidelity preset)")
    ap.add_argument("--base", required=True, help="a base checkpoint (model/infdit/base.py)")
    ap.add_argument("--data", default=".data"); ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5,0.7,1", help="the model's shares w")
    a = ap.parse_args()
    torch.set_num_threads(all_cores())
    model, _ = load_ema(a.ckpt)
    base = load_base(a.base)
    smp = json.loads(Path(a.manifest).read_text())["sampling"]
    p = smp["presets"]["fidelity"]
    ws = [float(w) for w in a.weights.split(",")]
    res, lz = {w: [] for w in ws}, []
    for k, (_, arr) in enumerate(load_split(a.data, a.split)[: a.limit or None]):
        gt = centre_crop(arr, 512, 384, 64)
        lr_u8 = to_u8(degrade(torch.from_numpy(gt.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1, 4))
        lr = torch.from_numpy(lr_u8.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            f = sample_image(model, lr, p["method"], p["steps"], smp["sigma_min"], smp["sigma_max"], smp["rho"], seed=k, stage=1)
            b = cascade(base, lr, 1)
        lz.append(psnr(np.asarray(Image.fromarray(lr_u8).resize((gt.shape[1], gt.shape[0]), Image.LANCZOS)), gt))
        for w in ws:
            res[w].append(psnr(to_u8((1 - w) * b + w * f), gt))
    ref = float(np.mean(lz))
    print(f"{a.data} {a.split}, {len(lz)} crops, Lanczos3 {ref:.2f} dB; gain of (1 - w)·base + w·fidelity: "
          + "  ".join(f"w {w:g}: {np.mean(v) - ref:+.3f}" for w, v in res.items()))


if __name__ == "__main__":
    main()
