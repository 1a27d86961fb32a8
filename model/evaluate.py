"""Evaluate a checkpoint on the validation split: PSNR vs bicubic and Lanczos3, seam ratio,
the independent-block ablation, CPU cost; writes JSON, side-by-side crops and MODEL_CARD.md.

    /usr/bin/python3 model/evaluate.py --ckpt model/release/infdit-s4.ckpt.pt --data .data \\
        --manifest model/release/infdit-s4.json --out model/release
"""
import argparse, json, math, sys, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network import InfDiT, InfDiTConfig, upsample
from data import load_split, degrade
from sample import sample_image


def to_u8(t):  # (1,3,H,W) in [-1,1] -> HWC uint8, the engine's rounding
    return np.clip(np.round((t[0].permute(1, 2, 0).numpy() + 1) * 127.5), 0, 255).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def luma(a):
    a = a.astype(np.float64)
    return 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255


def seam_sums(img, block, scale):
    """Sums of |gradient| across block-boundary lines and across the other lines of the same
    phase modulo the scale, both directions."""
    y = luma(img)
    gx = np.abs(np.diff(y, axis=1))   # gx[:, j] is the step between column j and j+1
    gy = np.abs(np.diff(y, axis=0))
    out = np.zeros(4)
    for g, n in ((gx, y.shape[1]), (gy, y.shape[0])):
        idx = np.arange(1, n)          # the line between pixel i-1 and i
        seam = idx[idx % block == 0] - 1
        other = idx[(idx % scale == 0) & (idx % block != 0)] - 1
        if g is gx:
            out += [g[:, seam].sum(), g[:, seam].size, g[:, other].sum(), g[:, other].size]
        else:
            out += [g[seam].sum(), g[seam].size, g[other].sum(), g[other].size]
    return out


def ratio(s):
    return (s[0] / s[1]) / (s[2] / s[3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default=".data")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", default="model/release")
    ap.add_argument("--crop", default="512x384")
    ap.add_argument("--detail-steps", type=int, nargs="*", default=None)
    ap.add_argument("--panels-only", type=int, nargs="*", default=None,
                    help="only write crops.png, from these validation images (indices)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    st = torch.load(a.ckpt, map_location="cpu")
    cfg = InfDiTConfig(**st["config"])
    model = InfDiT(cfg); model.load_state_dict(st["ema"]); model.eval()
    man = json.loads(Path(a.manifest).read_text())
    smp = man["sampling"]
    presets = dict(smp["presets"])
    for n in a.detail_steps or []:
        presets[f"euler{n}"] = {"method": "euler", "steps": n}
    cw, ch = map(int, a.crop.split("x"))
    val = load_split(a.data, "val")
    rows, sums, times = [], {}, {}
    panels = []
    for k, (entry, arr) in enumerate(val):
        if a.panels_only is not None and k not in a.panels_only:
            continue
        H, W = arr.shape[:2]
        y0, x0 = (H - ch) // 2 // 16 * 16, (W - cw) // 2 // 16 * 16
        gt = arr[y0:y0 + ch, x0:x0 + cw]
        hr = torch.from_numpy(gt.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        lr = degrade(hr, cfg.scale)
        lr_u8 = to_u8(lr)
        lr = torch.from_numpy(lr_u8.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # the server sees uint8 LR
        outs = {"bicubic": to_u8(upsample(lr, cfg.scale)),
                "lanczos3": np.asarray(Image.fromarray(lr_u8).resize((cw, ch), Image.LANCZOS))}
        for name, p in list(presets.items()) + [("fidelity-independent", dict(presets["fidelity"], independent=True))]:
            t = time.time()
            den = (lambda x, s: model.forward_image(x, lr, torch.full((1,), s), independent=True)) if p.get("independent") else None
            out = sample_image(model, lr, p["method"], p["steps"], smp["sigma_min"], smp["sigma_max"], smp["rho"], seed=k,
                               denoise=den)
            times.setdefault(name, []).append((time.time() - t) / (cw * ch / 1e6))
            outs[name] = to_u8(out)
        row = {"file": entry["packed"]}
        for name, img in outs.items():
            row[name] = {"psnr": psnr(img, gt), "psnr_y": psnr(luma(img), luma(gt))}
            sums[name] = sums.get(name, np.zeros(4)) + seam_sums(img, cfg.block, cfg.scale)
        sums["ground_truth"] = sums.get("ground_truth", np.zeros(4)) + seam_sums(gt, cfg.block, cfg.scale)
        rows.append(row)
        print(k, entry["packed"], {n: round(v["psnr"], 2) for n, v in row.items() if n != "file"}, flush=True)
        if a.panels_only is not None or k < 3:
            # show the most textured 128×128 window: flat sky says nothing about a super-resolver
            g = np.abs(np.diff(luma(gt), axis=1))[:-1] + np.abs(np.diff(luma(gt), axis=0))[:, :-1]
            best, yy, xx = -1.0, 0, 0
            for ty in range(0, ch - 128, 16):
                for tx in range(0, cw - 128, 16):
                    e = g[ty:ty + 128, tx:tx + 128].mean()
                    if e > best:
                        best, yy, xx = e, ty, tx
            lr_near = np.asarray(Image.fromarray(lr_u8).resize((cw, ch), Image.NEAREST))
            cols = [lr_near, outs["lanczos3"], outs["fidelity"], outs["detail"], gt]
            panels.append(np.concatenate([c[yy:yy + 128, xx:xx + 128] for c in cols], axis=1))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.panels_only is not None:
        Image.fromarray(np.concatenate(panels, axis=0)).save(out / "crops.png")
        return
    gt_ratio = ratio(sums["ground_truth"])
    names = [n for n in rows[0] if n != "file"]
    summary = {n: {"psnr": float(np.mean([r[n]["psnr"] for r in rows])),
                   "psnr_y": float(np.mean([r[n]["psnr_y"] for r in rows])),
                   "seam_ratio": float(ratio(sums[n]) / gt_ratio),
                   **({"torch_cpu_s_per_mpx": float(np.mean(times[n]))} if n in times else {})} for n in names}
    res = {"checkpoint": a.ckpt, "steps": st.get("step"), "crops": st.get("crops"), "val_split": "lxqt-themes",
           "crop": a.crop, "n": len(rows), "summary": summary, "per_image": rows,
           "sampling": smp, "torch_threads": torch.get_num_threads()}
    (out / "eval.json").write_text(json.dumps(res, indent=1))
    Image.fromarray(np.concatenate(panels, axis=0)).save(out / "crops.png")
    for n, v in summary.items():
        print(f"{n:22s} PSNR {v['psnr']:6.2f} dB  Y {v['psnr_y']:6.2f} dB  seam {v['seam_ratio']:.3f}"
              + (f"  {v['torch_cpu_s_per_mpx']:.1f} s/Mpx (torch)" if "torch_cpu_s_per_mpx" in v else ""))


if __name__ == "__main__":
    main()
