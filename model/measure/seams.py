"""Where does the two-block (128 px) seam pattern come from? Interventions on the fidelity sampler.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/bin/python3 model/measure/seams.py \\
        --ckpt model/release/infdit-s4.ckpt.pt --data .data [--n 8]

Block boundaries fall in two classes: "even" lines (x or y ≡ 0 mod 128) and "odd" ones (≡ 64 mod
128). For each class: mean |luma gradient| across its lines over the mean across the non-boundary
lines of the same phase mod 4 (the LR pixel grid), output over ground truth, pooled over crops.
The pattern is even/odd ≠ 1. Each condition changes one thing:
  base          as the server renders (absolute token position of block (r,c) = 16·(r,c))
  pos+1         every block's absolute position one block further (16 tokens): the content, the
                block grid and the noise stay; only the rotary position moves
  pos+7         seven blocks further (odd too), to see it is parity, not one position
  seed          another noise seed
  independent   no neighbour attention (each block alone)
  content+1     the crop one block further into the photo: the content moves under the grid
Whichever moves the pattern to the other class of lines is its cause.

--profile instead takes the base condition's output apart: its error by offset in the block, and
across block boundaries vs the other LR-grid lines the steps' error, the two sides' error
correlation and the steps over the ground truth's (whose quotient is the seam ratio).
"""
import argparse, json, sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from training.data import load_split, degrade
from infdit.sample import sample_image
from measure.evaluate import to_u8, luma
from PIL import Image


def class_sums(img, block, scale, interior=False):
    """[even-sum, even-n, odd-sum, odd-n, other-sum, other-n] over both directions; interior: without
    the first and last block's lines (next to the image's edges)."""
    y = luma(img)
    out = np.zeros(6)
    for g, n in ((np.abs(np.diff(y, axis=1)).T, y.shape[1]), (np.abs(np.diff(y, axis=0)), y.shape[0])):
        idx = np.arange(1, n)
        if interior:
            idx = idx[(idx > block) & (idx < n - block)]
        for k, sel in enumerate((idx % (2 * block) == 0, (idx % (2 * block) == block), (idx % scale == 0) & (idx % block != 0))):
            lines = idx[sel] - 1
            out[2 * k] += g[lines].sum(); out[2 * k + 1] += g[lines].size
    return out


def line_sums(img, block, scale):
    """Per block-boundary line k·block (k = 1, 2, …), pooled over both directions: [sum, n] each;
    and the non-boundary lines of phase 0 mod scale: [sum, n]."""
    y = luma(img)
    out, other = {}, np.zeros(2)
    for g, n in ((np.abs(np.diff(y, axis=1)).T, y.shape[1]), (np.abs(np.diff(y, axis=0)), y.shape[0])):
        for k in range(1, (n - 1) // block + 1):
            out.setdefault(k, np.zeros(2))
            out[k] += [g[k * block - 1].sum(), g[k * block - 1].size]
        idx = np.arange(1, n)
        lines = idx[(idx % scale == 0) & (idx % block != 0)] - 1
        other += [g[lines].sum(), g[lines].size]
    return out, other


def crop_and_lr(arr, crop, B, scale, shift=0):
    """The centred crop (moved `shift` px down and right) and its clean LR as the server sees it (uint8)."""
    cw, ch = crop
    H, W = arr.shape[:2]
    y0, x0 = (H - ch) // 2 // B * B + shift, (W - cw) // 2 // B * B + shift
    gt = arr[y0:y0 + ch, x0:x0 + cw]
    hr = torch.from_numpy(gt.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    lr = torch.from_numpy(to_u8(degrade(hr, scale)).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return gt, lr


def error_profile(out, gt, block, scale):
    """Where in a block the output is wrong, as sums to pool over crops: the squared luma error at each
    offset 0..block-1 from the block's left/top edge (columns and rows pooled) [sum, n]; across the
    block-boundary lines and across the other lines of the LR pixel grid: the squared error of the
    steps [on-sum, on-n, other-sum, other-n], the two sides' errors (Σa, Σb, Σab, Σa², Σb², n for
    their correlation; one row each), and mean |step| of output and ground truth [on-out, on-gt,
    other-out, other-gt] (the seam ratio is on-out/on-gt over other-out/other-gt)."""
    yo, yg = luma(out), luma(gt)
    e = (yo - yg) ** 2
    prof = np.zeros((block, 2))
    for j in range(block):
        for part in (e[:, j::block], e[j::block]):
            prof[j] += [part.sum(), part.size]
    steps, pairs, sharp = np.zeros(4), np.zeros((2, 6)), np.zeros(4)
    for o, g in ((yo, yg), (yo.T, yg.T)):            # rows, then columns as rows
        so, sg, r = np.diff(o, axis=0), np.diff(g, axis=0), o - g
        idx = np.arange(1, o.shape[0])               # row i-1 of the diffs: the step between pixel i-1 and i
        sels = (idx % block == 0, (idx % scale == 0) & (idx % block != 0))
        for k, sel in enumerate(sels):
            lines = idx[sel] - 1
            d = (so[lines] - sg[lines]) ** 2
            steps[2 * k:2 * k + 2] += [d.sum(), d.size]
            sharp[2 * k:2 * k + 2] += [np.abs(so[lines]).sum(), np.abs(sg[lines]).sum()]
            a, b = r[lines], r[lines + 1]
            pairs[k] += [a.sum(), b.sum(), (a * b).sum(), (a * a).sum(), (b * b).sum(), a.size]
    return prof, steps, pairs, sharp


def profile(model, val, crop, B):
    """The fidelity output's error by offset in the block, pooled over the crops (--profile)."""
    prof, steps, pairs, sharp = np.zeros((B, 2)), np.zeros(4), np.zeros((2, 6)), np.zeros(4)
    for k, (entry, arr) in enumerate(val):
        gt, lr = crop_and_lr(arr, crop, B, model.cfg.scale)
        out = to_u8(sample_image(model, lr, "euler", 1, 0.002, 4.0, 7.0, seed=k))
        p, s, c, h = error_profile(out, gt, B, model.cfg.scale)
        prof += p; steps += s; pairs += c; sharp += h
    mse = prof[:, 0] / prof[:, 1]
    sc = model.cfg.scale
    # the error has a period of the scale (an HR pixel's phase in its LR pixel): compare each offset
    # with the inner offsets of the same phase
    inner = np.array([mse[[i for i in range(sc, B - sc) if i % sc == j % sc]].mean() for j in range(B)])
    print(f"luma MSE by offset from the block's left/top edge, over the inner offsets' of the same phase mod {sc}:")
    print("  first: " + " ".join(f"{j}:{mse[j] / inner[j]:.3f}" for j in range(sc)) +
          "   last: " + " ".join(f"{j}:{mse[j] / inner[j]:.3f}" for j in range(B - sc, B)))
    ratio = (steps[0] / steps[1]) / (steps[2] / steps[3])
    print(f"squared error of the steps across the block boundaries over that across the other LR-grid lines: {ratio:.3f}")
    def corr(v):
        sa, sb, sab, saa, sbb, n = v
        return (sab / n - sa * sb / n ** 2) / np.sqrt((saa / n - (sa / n) ** 2) * (sbb / n - (sb / n) ** 2))
    c_on, c_other = corr(pairs[0]), corr(pairs[1])
    print(f"correlation of the errors of the two pixels either side: block boundaries {c_on:.3f}, other LR-grid lines {c_other:.3f}")
    on_, other_ = sharp[0] / sharp[1], sharp[2] / sharp[3]
    print(f"mean |step| of the output over the ground truth's: across block boundaries {on_:.3f}, across the other "
          f"LR-grid lines {other_:.3f} (seam ratio {on_ / other_:.3f})")
    return {"mse_by_offset_over_inner_same_phase": (mse / inner).tolist(), "boundary_step_error_ratio": ratio,
            "step_over_gt_at_block_lines": on_, "step_over_gt_at_other_lines": other_,
            "error_correlation_across_block_lines": c_on, "error_correlation_across_other_lines": c_other}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default=".data")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--crop", default="512x384")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--conds", default="", help="comma-separated subset of the conditions (default: all)")
    ap.add_argument("--profile", action="store_true", help="only the base condition's error by offset in the block")
    a = ap.parse_args()
    from training.train import load_ema, all_cores
    torch.set_num_threads(all_cores())
    model, _ = load_ema(a.ckpt)
    cfg = model.cfg
    cw, ch = map(int, a.crop.split("x"))
    B, g = cfg.block, cfg.grid
    conds = {"base": {}, "pos+1": {"pos": 1}, "pos+7": {"pos": 7}, "seed": {"seed": 100}, "independent": {"independent": True},
             "content+1": {"shift": 1}}
    if a.conds:
        conds = {k: v for k, v in conds.items() if k in a.conds.split(",")}
    sums = {k: np.zeros(6) for k in conds}; gts = {k: np.zeros(6) for k in conds}
    isums = {k: np.zeros(6) for k in conds}; igts = {k: np.zeros(6) for k in conds}
    per_line = {}   # (condition, "out"|"gt") -> {k: [sum, n]}, other: [sum, n]
    def add_lines(key, img):
        ls, oth = line_sums(img, B, cfg.scale)
        d = per_line.setdefault(key, [{}, np.zeros(2)])
        for k, v in ls.items(): d[0][k] = d[0].get(k, 0) + v
        d[1] += oth
    val = [v for v in load_split(a.data, "val") if min(v[1].shape[:2]) >= max(cw, ch) + 2 * B][:a.n]
    if a.profile:
        res = profile(model, val, (cw, ch), B)
        if a.out:
            Path(a.out).write_text(json.dumps({"checkpoint": a.ckpt, "n": len(val), "crop": a.crop, "profile": res}, indent=1))
        return
    for k, (entry, arr) in enumerate(val):
        for name, c in conds.items():
            gt, lr = crop_and_lr(arr, (cw, ch), B, cfg.scale, c.get("shift", 0) * B)
            pos0 = torch.full((1, 2), float(c.get("pos", 0) * g))
            den = lambda x, sg: model.forward_image(x, lr, torch.full((1,), sg), pos0=pos0, independent=c.get("independent", False))
            out = to_u8(sample_image(model, lr, "euler", 1, 0.002, 4.0, 7.0, seed=k + c.get("seed", 0), denoise=den))
            sums[name] += class_sums(out, B, cfg.scale); gts[name] += class_sums(gt, B, cfg.scale)
            isums[name] += class_sums(out, B, cfg.scale, True); igts[name] += class_sums(gt, B, cfg.scale, True)
            if name in ("base", "independent"):
                add_lines((name, "out"), out); add_lines((name, "gt"), gt)
                if name == "base":
                    lanczos = np.asarray(Image.fromarray(to_u8(lr)).resize((cw, ch), Image.LANCZOS))
                    add_lines(("lanczos3", "out"), lanczos); add_lines(("lanczos3", "gt"), gt)
        print(f"{k} {entry['packed']}", flush=True)
    res = {}
    print(f"{'condition':12s} {'even (0 mod 128)':>17s} {'odd (64 mod 128)':>17s} {'even/odd':>9s} {'interior lines only: even/odd':>31s}")
    r = lambda v, i: (v[2 * i] / v[2 * i + 1]) / (v[4] / v[5])
    for name in conds:
        o, t, io, it = sums[name], gts[name], isums[name], igts[name]
        even, odd = r(o, 0) / r(t, 0), r(o, 1) / r(t, 1)
        ieven, iodd = r(io, 0) / r(it, 0), r(io, 1) / r(it, 1)
        res[name] = {"even": even, "odd": odd, "even_over_odd": even / odd, "interior_even": ieven, "interior_odd": iodd, "interior_even_over_odd": ieven / iodd}
        print(f"{name:12s} {even:17.3f} {odd:17.3f} {even / odd:9.3f} {ieven:11.3f} / {iodd:.3f} = {ieven / iodd:.3f}")
    # per line: is it every second line, or the lines nearest the image's edges?
    print("seam ratio per block-boundary line (line k at k·64 px from the top/left edge; output over ground truth):")
    per = {}
    for name in [n for n in ("lanczos3", "base", "independent") if (n, "out") in per_line]:   # --conds may leave some out
        (lo, oo), (lg, og) = per_line[(name, "out")], per_line[(name, "gt")]
        ks = sorted(lo)
        per[name] = {k: float((lo[k][0] / lo[k][1]) / (oo[0] / oo[1]) / ((lg[k][0] / lg[k][1]) / (og[0] / og[1]))) for k in ks}
        print(f"{name:12s} " + "  ".join(f"{k}:{per[name][k]:.3f}" for k in ks))
    res["per_line"] = per
    if a.out:
        Path(a.out).write_text(json.dumps({"checkpoint": a.ckpt, "n": len(val), "crop": a.crop, "conditions": res}, indent=1, default=str))


if __name__ == "__main__":
    main()
