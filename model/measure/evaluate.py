"""Evaluate a checkpoint on the validation split (or --split heldout, the independent set): PSNR
vs bicubic and Lanczos3, seam ratios at boundary periods 32/64/128 px, the independent-block
ablation, CPU cost; each for the clean LR (antialiased bicubic) and for the same LR saved as JPEG
q75 (what people upload; Lanczos3 and bicubic then work from the same decoded JPEG). Writes JSON
and side-by-side crops.

    /usr/bin/python3 model/measure/evaluate.py --ckpt model/release/infdit-s4.ckpt.pt --data .data \\
        --manifest model/release/infdit-s4.json --out model/release
"""
import argparse, io, json, math, re, sys, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit.network import upsample, jpeg_level
from training.data import load_split, degrade, centre_crop
from infdit.sample import sample_image


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


def phase_sums(img, period):
    """(period, 2): for each phase p, the sum of |luma step| across the lines between pixel i-1 and i
    with i ≡ p (mod period), both directions, and how many steps that is. Summed over images first
    (pooled), then `grid_ratio`."""
    y = luma(img)
    out = np.zeros((period, 2))
    for axis in (1, 0):
        g = np.abs(np.diff(y, axis=axis))
        per_line = g.sum(axis=1 - axis)                  # per_line[j]: the line between j and j+1
        phase = np.arange(1, g.shape[axis] + 1) % period
        for p in range(period):
            out[p] += [per_line[phase == p].sum(), (phase == p).sum() * g.shape[1 - axis]]
    return out


def profile(sums):
    """Each phase's mean |step| (phase_sums) over the mean of all phases."""
    m = sums[:, 0] / sums[:, 1]
    return m / m.mean()


def grid_ratio(sums):
    """The LR-pixel grid ratio of phase_sums: the largest phase's mean |step| over the mean of all
    phases (1.0: no phase stands out). A staircase of period-px squares puts its steps on one phase."""
    return float(profile(sums).max())


def fine_power(img, scale):
    """Luma power above the LR's Nyquist frequency (1/(2·scale) cycles per px along either axis),
    Hann-windowed so the crop's own edges add none: the detail an upscaler made up (or kept)."""
    y = luma(img)
    y = (y - y.mean()) * np.outer(np.hanning(y.shape[0]), np.hanning(y.shape[1]))
    p = np.abs(np.fft.fft2(y)) ** 2
    fy, fx = np.abs(np.fft.fftfreq(y.shape[0]))[:, None], np.abs(np.fft.fftfreq(y.shape[1]))[None, :]
    return float(p[(fy > 0.5 / scale) | (fx > 0.5 / scale)].sum())


def targets(summary, scale=4):
    """The bar for replacing the release model (issues 15 and 31), for whichever variants were run."""
    out = []
    fid = lambda v: summary[v]["fidelity"]["psnr"] - summary[v]["lanczos3"]["psnr"]
    seams = lambda v, n: [summary[v][n]["seam_ratio"][str(p)] for p in PERIODS]
    grid = lambda v, n, p: summary[v][n]["grid_ratio"][str(p)]
    if scale == 16:
        if "fidelity" not in summary.get("clean", {}):
            return out
        out.append({"what": "16×: fidelity ≥ Lanczos3 + 0.5 dB", "value": f"{fid('clean'):+.2f} dB", "met": fid("clean") >= 0.5})
        for p in (16, 4):
            g, ref = grid("clean", "fidelity", p), grid("clean", "lanczos3", p)
            out.append({"what": f"16×: grid ratio at P = {p} ≤ Lanczos3's", "value": f"{g:.3f} (≤ {ref:.3f})", "met": g <= ref})
        e = summary["clean"]["fidelity"]["fine_energy"]
        out.append({"what": "16×: fine-detail energy ≥ 0.3 of the photo's", "value": f"{e:.3f}", "met": e >= 0.3})
        s = seams("clean", "fidelity")
        out.append({"what": "16×: seams ≤ 1.05 at 32/64/128 px", "value": " / ".join(f"{x:.3f}" for x in s), "met": all(x <= 1.05 for x in s)})
        return out
    if "fidelity" in summary.get("clean", {}):
        g, ref = grid("clean", "fidelity", 4), grid("clean", "lanczos3", 4)
        out.append({"what": "clean: grid ratio at P = 4 ≤ Lanczos3's", "value": f"{g:.3f} (≤ {ref:.3f})", "met": g <= ref})
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
    ap.add_argument("--crop", default=None, help="centred crop of each photo, WxH (default 512x384 at 4×, 768x512 at 16×; a smaller photo gives the largest crop of whole stage-1 blocks it holds)")
    ap.add_argument("--scale", type=int, default=4, choices=(4, 16),
                    help="4: one stage; 16: the cascade exactly as the engine runs it (stage 2 on stage 1's uint8 output, its own noise)")
    ap.add_argument("--detail-steps", type=int, nargs="*", default=None)
    ap.add_argument("--panels-only", type=int, nargs="*", default=None,
                    help="only write crops.png, from these validation images (indices)")
    ap.add_argument("--variants", default="clean,jpeg75",
                    help="LR variants: clean, jpegNN (the LR saved as JPEG quality NN), jpegNN-untold (the same, but a "
                         "jpeg_cond model is told 0: what a JPEG re-saved as PNG gets)")
    ap.add_argument("--restorer", metavar="CKPT", help="model/infdit/restore.py checkpoint: a told JPEG variant's LR goes through it "
                    "first, as the engine does for a model with a restorer (row restored-lanczos3: Lanczos3 of the restored LR)")
    ap.add_argument("--split", default="val", help="the data folder's split to measure: val (lxqt-themes, the one runs are "
                    "chosen on) or heldout (data_fetch.py --heldout: the independent set; measure a chosen release, never choose by it)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N validation images (a quick check)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (the figures are the same up to float rounding)")
    ap.add_argument("--no-crops", action="store_true", help="write no crops image (a device run returns a limited number of files)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the independent-block ablation (a third of a CPU evaluation's time)")
    ap.add_argument("--presets", default="", help="comma-separated subset of the manifest's presets (default: all); at "
                    "--scale 16 also A/B: preset A at stage 1, B at stage 2 (e.g. fidelity/detail)")
    ap.add_argument("--base", metavar="CKPT", help="also measure this base super-resolver alone (model/infdit/base.py checkpoint or a "
                    "SAFMN++ .pth; row base; at 16x applied twice, 8-bit between); a model trained over a base runs over it "
                    "instead of the checkpoint's own (as the engine runs the base its manifest names), and measures it without --base")
    ap.add_argument("--stage1-ckpt", metavar="CKPT", help="--scale 16: stage 1 by this checkpoint of the same network, "
                    "stage 2 by --ckpt (a cascade whose first stage need not be the 4× release)")
    a = ap.parse_args()
    for v in a.variants.split(","):
        if not (v == "clean" or re.fullmatch(r"jpeg([1-9][0-9]?|100)(-untold)?", v)):
            ap.error(f"--variants: unknown variant {v!r}; use clean, jpegNN or jpegNN-untold (NN a quality 1-100)")
    from training.train import load_ema, all_cores
    torch.set_num_threads(all_cores())   # was max(1, get_num_threads()): 1 thread of 2 on this machine
    dev = torch.device(a.device)
    model, st = load_ema(a.ckpt, dev)
    stage1_model = None
    if a.stage1_ckpt:
        if a.scale == model.cfg.scale:
            ap.error(f"--stage1-ckpt: only a cascade has a stage 1 of its own (--scale {model.cfg.scale ** 2})")
        stage1_model, st1 = load_ema(a.stage1_ckpt, dev)
        if st1["config"] != st["config"]:
            ap.error(f"--stage1-ckpt {a.stage1_ckpt}: a different network from --ckpt {a.ckpt}")
    base_net = model.base
    if a.base:
        from infdit.base import load as load_base
        base_net = load_base(a.base).to(dev)
        if model.cfg.up == "base":   # the transformer runs over the base its manifest names, as in the engine
            model.attach_base(base_net)
            if stage1_model is not None:
                stage1_model.attach_base(base_net)
    base_aware = base_net is not None and base_net.cfg.jq
    if a.restorer and base_aware:
        ap.error("--restorer: this base is JPEG-aware (it reads a JPEG's LR as it is, with its level), so no restorer comes before it")
    if a.restorer:
        from infdit.restore import load as load_restorer, restore_image
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
        # "A/B": the cascade with preset A at stage 1 and B at stage 2 (--scale 16 only)
        picked = {}
        for name in a.presets.split(","):
            parts = name.split("/")
            if any(q not in presets for q in parts) or len(parts) > 2 or (len(parts) == 2 and a.scale == cfg.scale):
                ap.error(f"--presets {name!r}: give the manifest's presets ({', '.join(presets)}; eulerN with --detail-steps N), "
                         f"or A/B for stage 1's and stage 2's at --scale {cfg.scale ** 2}")
            picked[name] = presets[name] if len(parts) == 1 else {"stage1": presets[parts[0]], "stage2": presets[parts[1]]}
        presets = picked
    a.crop = a.crop or ("768x512" if a.scale == 16 else "512x384")
    cw, ch = map(int, a.crop.split("x"))
    S = a.scale                                   # the output's factor over the LR
    stages = 1 if S == cfg.scale else 2
    if S not in (cfg.scale, cfg.scale ** 2) or cw % (cfg.block * S // cfg.scale) or ch % (cfg.block * S // cfg.scale):
        ap.error(f"--scale {S} --crop {a.crop}: the crop must be a multiple of {cfg.block * S // cfg.scale} px (a stage-1 block) at a scale of {cfg.scale} or {cfg.scale ** 2}")
    grid_periods = sorted({S, cfg.scale, cfg.patch})
    val = load_split(a.data, a.split)
    if not val:
        ap.error(f"--split {a.split}: {a.data}/index.json lists no {a.split!r} images (splits: val; heldout from data_fetch.py --heldout)")
    if a.limit:
        val = val[:a.limit]
    variants = a.variants.split(",")
    rows, sums, times = {v: [] for v in variants}, {v: {} for v in variants}, {}
    phases, fine = {v: {} for v in variants}, {v: {} for v in variants}

    def upscale(lr, p, seed, jq, base_jq=0.0):
        """A preset through every stage; a later stage reads the one before as the engine does (uint8
        pixels, never a JPEG: jq 0, no restorer, a JPEG-aware base's level 0) with its own noise (stage
        number in the key)."""
        x = lr
        for stage in range(1, stages + 1):
            q = jq if stage == 1 or jq is None else torch.zeros_like(jq)
            bq = base_jq if stage == 1 else 0.0
            ps = p.get(f"stage{stage}", p)
            m = stage1_model if stage == 1 and stage1_model is not None else model
            den = (lambda y, s, x=x, q=q: m.forward_image(y, x, torch.full((1,), s, device=dev), independent=True, jq=q)) if ps.get("independent") else None
            out = sample_image(m, x, ps["method"], ps["steps"], smp["sigma_min"], smp["sigma_max"], smp["rho"], seed=seed,
                               stage=stage, denoise=den, jq=q, base_jq=bq)
            if stage < stages:
                x = (torch.from_numpy(to_u8(out).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1).to(dev)
        return out

    panels = []
    for k, (entry, arr) in enumerate(val):
        if a.panels_only is not None and k not in a.panels_only:
            continue
        gt = centre_crop(arr, cw, ch, cfg.block * S // cfg.scale)
        gw, gh = gt.shape[1], gt.shape[0]          # cw×ch, or less for a smaller photo
        hr = torch.from_numpy(gt.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        clean_u8 = to_u8(degrade(hr, S))
        for variant in variants:
            if variant == "clean":
                lr_u8 = clean_u8
            else:
                quality = int(re.match(r"jpeg(\d+)", variant)[1])
                buf = io.BytesIO(); Image.fromarray(clean_u8).save(buf, format="JPEG", quality=quality)
                lr_u8 = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            # a jpeg_cond model is told the quality, as the server reads it from the file's tables
            told = 0.0 if variant == "clean" or variant.endswith("-untold") else float(quality)
            # a JPEG-aware base reads the JPEG as it is, with its level (its model has no restorer: the engine's rule)
            model_u8 = restore_image(restorer, lr_u8, told) if a.restorer and 0 < told < 100 else lr_u8
            base_jq = float(jpeg_level(torch.tensor(told))) if base_aware else 0.0
            lr = (torch.from_numpy(model_u8.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1).to(dev)  # the server sees uint8 LR
            jq = jpeg_level(torch.tensor([told])).to(dev) if cfg.jpeg_cond else None
            outs = {"bicubic": to_u8(upsample(lr, S)),
                    "lanczos3": np.asarray(Image.fromarray(lr_u8).resize((gw, gh), Image.LANCZOS))}
            if base_net is not None:   # the engine's base at each stage, 8-bit pixels between
                from infdit.base import cascade
                outs["base"] = to_u8(cascade(base_net, lr, stages, base_jq))
            if model_u8 is not lr_u8:
                outs["restored-lanczos3"] = np.asarray(Image.fromarray(model_u8).resize((gw, gh), Image.LANCZOS))
            runs = list(presets.items()) + ([("fidelity-independent", dict(presets["fidelity"], independent=True))] if "fidelity" in presets and variant == "clean" and not a.no_ablation else [])
            for name, p in runs:
                t = time.time()
                out = upscale(lr, p, k, jq, base_jq)
                sync()
                times.setdefault(name, []).append((time.time() - t) / (gw * gh / 1e6))
                outs[name] = to_u8(out)
            row = {"file": entry["packed"]}
            for name, img in outs.items():
                row[name] = {"psnr": psnr(img, gt), "psnr_y": psnr(luma(img), luma(gt))}
            # seams against the other lines of the output's LR-pixel grid (S px: 16 at 16×, where stage 1's
            # pixels end), so the stage-1 staircase is not counted as a seam
            for name, img in list(outs.items()) + [("ground_truth", gt)]:
                sums[variant][name] = sums[variant].get(name, 0) + np.stack([seam_sums(img, p, S) for p in PERIODS])
                phases[variant][name] = [phases[variant].get(name, [0] * len(grid_periods))[i] + phase_sums(img, P) for i, P in enumerate(grid_periods)]
                fine[variant][name] = fine[variant].get(name, 0) + fine_power(img, S)
            rows[variant].append(row)
            print(k, variant, entry["packed"], {n: round(v["psnr"], 2) for n, v in row.items() if n != "file"}, flush=True)
            if (a.panels_only is not None or k < 3) and "fidelity" in outs and not a.no_crops:
                # show the most textured 128×128 window (256×256 at 16×): flat sky says nothing about a super-resolver
                g = np.abs(np.diff(luma(gt), axis=1))[:-1] + np.abs(np.diff(luma(gt), axis=0))[:, :-1]
                best, yy, xx, win = -1.0, 0, 0, (256 if S > cfg.scale else 128)
                for ty in range(0, gh - win, 16):
                    for tx in range(0, gw - win, 16):
                        e = g[ty:ty + win, tx:tx + win].mean()
                        if e > best:
                            best, yy, xx = e, ty, tx
                near = lambda u8: np.asarray(Image.fromarray(u8).resize((gw, gh), Image.NEAREST))
                # LR · [restored LR] · Lanczos3 · [base] · fidelity · [detail] · ground truth: a column only where it was computed
                cols = [near(lr_u8)] + ([near(model_u8)] if model_u8 is not lr_u8 else []) + [outs["lanczos3"]] \
                    + ([outs["base"]] if "base" in outs else []) + [outs["fidelity"]] \
                    + ([outs["detail"]] if "detail" in outs else []) + [gt]
                panels.append((variant, np.concatenate([c[yy:yy + win, xx:xx + win] for c in cols], axis=1)))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    for variant in {v for v, _ in panels}:
        name = ("crops" if variant == "clean" else f"crops-{variant}") + ("" if S == cfg.scale else f"-x{S}")
        Image.fromarray(np.concatenate([p for v, p in panels if v == variant], axis=0)).save(out / f"{name}.png")
    if a.panels_only is not None:
        return
    summary = {}
    for variant in variants:
        gt_ratio = [ratio(s) for s in sums[variant]["ground_truth"]]
        gt_grid = [grid_ratio(s) for s in phases[variant]["ground_truth"]]
        names = [n for n in rows[variant][0] if n != "file"]
        summary[variant] = {n: {"psnr": float(np.mean([r[n]["psnr"] for r in rows[variant]])),
                                "psnr_y": float(np.mean([r[n]["psnr_y"] for r in rows[variant]])),
                                "seam_ratio": {str(p): float(ratio(sums[variant][n][i]) / gt_ratio[i]) for i, p in enumerate(PERIODS)},
                                "grid_ratio": {str(P): grid_ratio(phases[variant][n][i]) / gt_grid[i] for i, P in enumerate(grid_periods)},
                                # each phase's mean |step| over the mean of all phases, at P = the model's scale: which lines stand out
                                "phase_profile": [float(x) for x in profile(phases[variant][n][grid_periods.index(cfg.scale)])],
                                "fine_energy": fine[variant][n] / fine[variant]["ground_truth"],
                                **({cost_key: float(np.mean(times[n]))} if n in times else {})} for n in names}
    res = {"checkpoint": a.ckpt, **({"stage1_checkpoint": a.stage1_ckpt} if a.stage1_ckpt else {}), "steps": st.get("step"), "crops": st.get("crops"), "restorer": a.restorer, "split": a.split, "scale": S,
           "val_split": "+".join(sorted({e.get("package", "?") for e, _ in val})),
           "crop": a.crop, "n": len(rows[variants[0]]), "summary": summary, "per_image": rows,
           "seam_periods_px": list(PERIODS), "grid_periods_px": grid_periods, "sampling": smp, "torch_threads": torch.get_num_threads()}
    res["targets"] = targets(summary, S)
    (out / ("eval.json" if S == cfg.scale else f"eval-x{S}.json")).write_text(json.dumps(res, indent=1))
    for variant in variants:
        ref = summary[variant]["lanczos3"]["psnr"]
        print(f"--- {S}×, LR {variant} (seam ratios at {'/'.join(map(str, PERIODS))} px, grid ratios at P = "
              f"{'/'.join(map(str, grid_periods))}, fine-detail energy: output over ground truth)")
        for n, v in summary[variant].items():
            print(f"{n:22s} PSNR {v['psnr']:6.2f} dB ({v['psnr'] - ref:+.2f} vs Lanczos3)  Y {v['psnr_y']:6.2f} dB  seams "
                  + " / ".join(f"{v['seam_ratio'][str(p)]:.3f}" for p in PERIODS)
                  + "  grid " + " / ".join(f"{v['grid_ratio'][str(P)]:.3f}" for P in grid_periods)
                  + f"  fine {v['fine_energy']:.3f}"
                  + (f"  {v[cost_key]:.1f} s/Mpx (torch, {dev.type})" if cost_key in v else ""))
        print(f"phase profile at P = {cfg.scale} (phase 0: the lines between LR pixels and between the model's patches): "
              + "; ".join(f"{n} " + "/".join(f"{x:.3f}" for x in v["phase_profile"]) for n, v in summary[variant].items())
              + "; ground truth " + "/".join(f"{x:.3f}" for x in profile(phases[variant]["ground_truth"][grid_periods.index(cfg.scale)])))
    for t in res["targets"]:
        print(f"target {t['what']}: {t['value']} — {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
