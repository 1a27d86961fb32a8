"""Evaluate a checkpoint on the validation split (or --split heldout, the independent set): PSNR
vs bicubic and Lanczos3, seam ratios at boundary periods 32/64/128 px, the independent-block
ablation, CPU cost; each for the clean LR (antialiased bicubic) and for the same LR saved as JPEG
q75 (what people upload; Lanczos3 and bicubic then work from the same decoded JPEG). Writes JSON
and side-by-side crops.

    /usr/bin/python3 model/evaluate.py --ckpt model/release/infdit-s4.ckpt.pt --data .data \\
        --manifest model/release/infdit-s4.json --out model/release
"""
import argparse, io, json, math, re, sys, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network import upsample, jpeg_level
from data import load_split, degrade, centre_crop
from sample import sample_image


def to_u8(t):  # (1,3,H,W) in [-1,1] -> HWC uint8, the engine's rounding
    return np.clip(np.round((t[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5), 0, 255).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def luma(a):
    a = a.astype(np.float64)
    return 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255


PERIODS = (32, 64, 128)


def seam_sums(img, period, scale):
    """Sums of |gradient| across the lines at multiples of `period` and across the other lines
    of the same phase modulo the scale, both directions. Blocks are 64 px: period 64 is every
    block boundary, 128 every second one (a pattern of two blocks), 32 adds the mid-block lines."""
    y = luma(img)
    gx = np.abs(np.diff(y, axis=1))   # gx[:, j] is the step between column j and j+1
    gy = np.abs(np.diff(y, axis=0))
    out = np.zeros(4)
    for g, n in ((gx, y.shape[1]), (gy, y.shape[0])):
        idx = np.arange(1, n)          # the line between pixel i-1 and i
        seam = idx[idx % period == 0] - 1
        other = idx[(idx % scale == 0) & (idx % period != 0)] - 1
        if g is gx:
            out += [g[:, seam].sum(), g[:, seam].size, g[:, other].sum(), g[:, other].size]
        else:
            out += [g[seam].sum(), g[seam].size, g[other].sum(), g[other].size]
    return out


def ratio(s):
    return (s[0] / s[1]) / (s[2] / s[3])


def targets(summary):
    """Round 2's bar for replacing the release model (issue 15), for whichever variants were run."""
    out = []
    fid = lambda v: summary[v]["fidelity"]["psnr"] - summary[v]["lanczos3"]["psnr"]
    seams = lambda v, n: [summary[v][n]["seam_ratio"][str(p)] for p in PERIODS]
    if "fidelity" in summary.get("clean", {}):
        out.append({"what": "clean: fidelity ≥ Lanczos3 + 1.0 dB", "value": f"{fid('clean'):+.2f} dB", "met": fid("clean") >= 1.0})
        s = seams("clean", "fidelity")
        out.append({"what": "clean: seams ≤ 1.05 at 32/64/128 px", "value": " / ".join(f"{x:.3f}" for x in s),
                    "met": all(x <= 1.05 for x in s)})
    if "fidelity" in summary.get("jpeg75", {}):
        out.append({"what": "JPEG q75: fidelity ≥ Lanczos3 + 0.5 dB", "value": f"{fid('jpeg75'):+.2f} dB", "met": fid("jpeg75") >= 0.5})
        s, ref = seams("jpeg75", "fidelity"), seams("jpeg75", "lanczos3")
        out.append({"what": "JPEG q75: seams ≤ Lanczos3's at 32/64/128 px",
                    "value": " / ".join(f"{x:.3f} (≤ {r:.3f})" for x, r in zip(s, ref)), "met": all(x <= r for x, r in zip(s, ref))})
    return out


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
    ap.add_argument("--variants", default="clean,jpeg75",
                    help="LR variants: clean, jpegNN (the LR saved as JPEG quality NN), jpegNN-untold (the same, but a "
                         "jpeg_cond model is told 0: what a JPEG re-saved as PNG gets)")
    ap.add_argument("--restorer", metavar="CKPT", help="model/restore.py checkpoint: a told JPEG variant's LR goes through it "
                    "first, as the engine does for a model with a restorer (row restored-lanczos3: Lanczos3 of the restored LR)")
    ap.add_argument("--split", default="val", help="the data folder's split to measure: val (lxqt-themes, the one runs are "
                    "chosen on) or heldout (data_fetch.py --heldout: the independent set; measure a chosen release, never choose by it)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N validation images (a quick check)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (the figures are the same up to float rounding)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the independent-block ablation (a third of a CPU evaluation's time)")
    ap.add_argument("--presets", default="", help="comma-separated subset of the manifest's presets (default: all)")
    a = ap.parse_args()
    for v in a.variants.split(","):
        if not (v == "clean" or re.fullmatch(r"jpeg([1-9][0-9]?|100)(-untold)?", v)):
            ap.error(f"--variants: unknown variant {v!r}; use clean, jpegNN or jpegNN-untold (NN a quality 1-100)")
    from train import load_ema, all_cores
    torch.set_num_threads(all_cores())   # was max(1, get_num_threads()): 1 thread of 2 on this machine
    dev = torch.device(a.device)
    model, st = load_ema(a.ckpt, dev)
    if a.restorer:
        from restore import load as load_restorer, restore_image
        restorer = load_restorer(a.restorer)[0]
    cfg = model.cfg
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cost_key = f"torch_{dev.type}_s_per_mpx"
    man = json.loads(Path(a.manifest).read_text())
    smp = man["sampling"]
    presets = dict(smp["presets"])
    for n in a.detail_steps or []:
        presets[f"euler{n}"] = {"method": "euler", "steps": n}
    if a.presets:
        presets = {k: v for k, v in presets.items() if k in a.presets.split(",")}
    cw, ch = map(int, a.crop.split("x"))
    val = load_split(a.data, a.split)
    if not val:
        ap.error(f"--split {a.split}: {a.data}/index.json lists no {a.split!r} images (splits: val; heldout from data_fetch.py --heldout)")
    if a.limit:
        val = val[:a.limit]
    variants = a.variants.split(",")
    rows, sums, times = {v: [] for v in variants}, {v: {} for v in variants}, {}
    panels = []
    for k, (entry, arr) in enumerate(val):
        if a.panels_only is not None and k not in a.panels_only:
            continue
        gt = centre_crop(arr, cw, ch)
        hr = torch.from_numpy(gt.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        clean_u8 = to_u8(degrade(hr, cfg.scale))
        for variant in variants:
            if variant == "clean":
                lr_u8 = clean_u8
            else:
                quality = int(re.match(r"jpeg(\d+)", variant)[1])
                buf = io.BytesIO(); Image.fromarray(clean_u8).save(buf, format="JPEG", quality=quality)
                lr_u8 = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            # a jpeg_cond model is told the quality, as the server reads it from the file's tables
            told = 0.0 if variant == "clean" or variant.endswith("-untold") else float(quality)
            model_u8 = restore_image(restorer, lr_u8, told) if a.restorer and 0 < told < 100 else lr_u8
            lr = (torch.from_numpy(model_u8.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1).to(dev)  # the server sees uint8 LR
            jq = jpeg_level(torch.tensor([told])).to(dev) if cfg.jpeg_cond else None
            outs = {"bicubic": to_u8(upsample(lr, cfg.scale)),
                    "lanczos3": np.asarray(Image.fromarray(lr_u8).resize((cw, ch), Image.LANCZOS))}
            if model_u8 is not lr_u8:
                outs["restored-lanczos3"] = np.asarray(Image.fromarray(model_u8).resize((cw, ch), Image.LANCZOS))
            runs = list(presets.items()) + ([("fidelity-independent", dict(presets["fidelity"], independent=True))] if "fidelity" in presets and variant == "clean" and not a.no_ablation else [])
            for name, p in runs:
                t = time.time()
                den = (lambda x, s: model.forward_image(x, lr, torch.full((1,), s, device=dev), independent=True, jq=jq)) if p.get("independent") else None
                out = sample_image(model, lr, p["method"], p["steps"], smp["sigma_min"], smp["sigma_max"], smp["rho"], seed=k,
                                   denoise=den, jq=jq)
                sync()
                times.setdefault(name, []).append((time.time() - t) / (cw * ch / 1e6))
                outs[name] = to_u8(out)
            row = {"file": entry["packed"]}
            for name, img in outs.items():
                row[name] = {"psnr": psnr(img, gt), "psnr_y": psnr(luma(img), luma(gt))}
                sums[variant][name] = sums[variant].get(name, 0) + np.stack([seam_sums(img, p, cfg.scale) for p in PERIODS])
            sums[variant]["ground_truth"] = sums[variant].get("ground_truth", 0) + np.stack([seam_sums(gt, p, cfg.scale) for p in PERIODS])
            rows[variant].append(row)
            print(k, variant, entry["packed"], {n: round(v["psnr"], 2) for n, v in row.items() if n != "file"}, flush=True)
            if (a.panels_only is not None or k < 3) and "fidelity" in outs:
                # show the most textured 128×128 window: flat sky says nothing about a super-resolver
                g = np.abs(np.diff(luma(gt), axis=1))[:-1] + np.abs(np.diff(luma(gt), axis=0))[:, :-1]
                best, yy, xx = -1.0, 0, 0
                for ty in range(0, ch - 128, 16):
                    for tx in range(0, cw - 128, 16):
                        e = g[ty:ty + 128, tx:tx + 128].mean()
                        if e > best:
                            best, yy, xx = e, ty, tx
                near = lambda u8: np.asarray(Image.fromarray(u8).resize((cw, ch), Image.NEAREST))
                # LR · [restored LR] · Lanczos3 · fidelity · [detail] · ground truth: a column only where it was computed
                cols = [near(lr_u8)] + ([near(model_u8)] if model_u8 is not lr_u8 else []) + [outs["lanczos3"], outs["fidelity"]] \
                    + ([outs["detail"]] if "detail" in outs else []) + [gt]
                panels.append((variant, np.concatenate([c[yy:yy + 128, xx:xx + 128] for c in cols], axis=1)))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    for variant in {v for v, _ in panels}:
        Image.fromarray(np.concatenate([p for v, p in panels if v == variant], axis=0)).save(out / ("crops.png" if variant == "clean" else f"crops-{variant}.png"))
    if a.panels_only is not None:
        return
    summary = {}
    for variant in variants:
        gt_ratio = [ratio(s) for s in sums[variant]["ground_truth"]]
        names = [n for n in rows[variant][0] if n != "file"]
        summary[variant] = {n: {"psnr": float(np.mean([r[n]["psnr"] for r in rows[variant]])),
                                "psnr_y": float(np.mean([r[n]["psnr_y"] for r in rows[variant]])),
                                "seam_ratio": {str(p): float(ratio(sums[variant][n][i]) / gt_ratio[i]) for i, p in enumerate(PERIODS)},
                                **({cost_key: float(np.mean(times[n]))} if n in times else {})} for n in names}
    res = {"checkpoint": a.ckpt, "steps": st.get("step"), "crops": st.get("crops"), "restorer": a.restorer, "split": a.split,
           "val_split": "+".join(sorted({e.get("package", "?") for e, _ in val})),
           "crop": a.crop, "n": len(rows[variants[0]]), "summary": summary, "per_image": rows,
           "seam_periods_px": list(PERIODS), "sampling": smp, "torch_threads": torch.get_num_threads()}
    res["targets"] = targets(summary)
    (out / "eval.json").write_text(json.dumps(res, indent=1))
    for variant in variants:
        ref = summary[variant]["lanczos3"]["psnr"]
        print(f"--- LR {variant} (seam ratios at {'/'.join(map(str, PERIODS))} px, output over ground truth)")
        for n, v in summary[variant].items():
            print(f"{n:22s} PSNR {v['psnr']:6.2f} dB ({v['psnr'] - ref:+.2f} vs Lanczos3)  Y {v['psnr_y']:6.2f} dB  seams "
                  + " / ".join(f"{v['seam_ratio'][str(p)]:.3f}" for p in PERIODS)
                  + (f"  {v[cost_key]:.1f} s/Mpx (torch, {dev.type})" if cost_key in v else ""))
    for t in res["targets"]:
        print(f"target {t['what']}: {t['value']} — {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
