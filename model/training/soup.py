"""Weight arithmetic on checkpoints of one network: their averaged (EMA) weights mixed as
A + Σ tᵢ·(Xᵢ − A). With one X and t in [0, 1] it is the weight average (1 − t)·A + t·X ("model soup",
Wortsman et al. 2022); with several, or a negative share, it adds the difference between two fine-tunes
("task arithmetic", Ilharco et al. 2023): A + t·(G − C) moves A along what fine-tune G learnt that the
control C, trained alike without G's loss term, did not. All must come from one start (fine-tunes of A, or
of one release), where the mixture stays a working model.

    /usr/bin/python3 model/training/soup.py model/release/infdit-s4.ckpt.pt runs/lrgrid2/last.pt --share 0.3 --out runs/soup0.3.pt
    /usr/bin/python3 model/training/soup.py model/release/infdit-s4.ckpt.pt runs/lrgrid2/last.pt runs/control0/last.pt \\
        --share 0.3,-0.3 --out runs/ta0.3.pt

The result is a checkpoint like train.py's (EMA weights only, no optimizer): evaluate.py --ckpt and
export.py --ckpt take it; its "soup" entry records what was mixed.
"""
import argparse, math, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from training.train import load_parts   # noqa: E402

SHARE_RANGE = (-2.0, 2.0)   # a guard against a slip (30 for 0.3): every mixture measured so far used shares within ±1


def mix(base, terms):
    """base: a checkpoint dict; terms: [(checkpoint dict, share)]. -> the last term's checkpoint (its step,
    args, degradation) with EMA weights base + Σ share·(X − base), computed in float32."""
    for x, _ in terms:
        if base["config"] != x["config"]:
            diff = {k: (base["config"].get(k), x["config"].get(k)) for k in set(base["config"]) | set(x["config"])
                    if base["config"].get(k) != x["config"].get(k)}
            raise ValueError(f"the checkpoints are of different networks: {diff}")
        if base["ema"].keys() != x["ema"].keys():
            raise ValueError(f"the checkpoints' weights differ in names: {sorted(set(base['ema']) ^ set(x['ema']))[:5]}")
    ema = {}
    for k, v in base["ema"].items():
        b = v.float()
        w = b.clone()
        for x, t in terms:
            w += t * (x["ema"][k].float() - b)
        ema[k] = w.to(v.dtype)
    out = {k: v for k, v in terms[-1][0].items() if k not in ("model", "opt")}
    out["ema"] = ema
    return out


def parse_shares(text, n):
    """'0.3,-0.3' -> [0.3, -0.3], one per checkpoint after the first (ValueError saying what is accepted)."""
    try:
        shares = [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--share {text!r}: give numbers separated by commas, one per checkpoint after the first")
    if len(shares) != n:
        raise ValueError(f"--share {text!r}: {len(shares)} share(s) for {n} checkpoint(s) after the first; give one each")
    lo, hi = SHARE_RANGE
    if not all(math.isfinite(s) and lo <= s <= hi for s in shares):
        raise ValueError(f"--share {text!r}: each share from {lo:g} to {hi:g}")
    return shares


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="checkpoint A, the base (whole or in parts, as train.py writes them)")
    ap.add_argument("x", nargs="+", help="checkpoints X1 … Xn of the same network")
    ap.add_argument("--share", required=True,
                    help="each X's share t, comma-separated in their order (one X: from 0 to 1 is the weight average)")
    ap.add_argument("--out", required=True, help="the mixed checkpoint (one file)")
    a = ap.parse_args()
    try:
        shares = parse_shares(a.share, len(a.x))
        out = mix(load_parts(a.a), [(load_parts(x), t) for x, t in zip(a.x, shares)])
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    out["soup"] = ({"a": a.a, "b": a.x[0], "b_share": shares[0]} if len(a.x) == 1
                   else {"base": a.a, "terms": [[x, t] for x, t in zip(a.x, shares)]})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, a.out)
    print(f"wrote {a.out}: {a.a}" + "".join(f" {'+' if t >= 0 else '−'} {abs(t):g}·({x} − A)" for x, t in zip(a.x, shares)))


if __name__ == "__main__":
    main()
