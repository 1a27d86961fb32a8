"""The weight average of two checkpoints of the same network ("model soup", Wortsman et al. 2022): their
averaged (EMA) weights mixed as (1 - share)·A + share·B. Both must come from one start (a fine-tune of the
other, or two fine-tunes of one release), where the mixture stays a working model.

    /usr/bin/python3 model/soup.py model/release/infdit-s4.ckpt.pt runs/lrgrid2/last.pt --share 0.3 --out runs/soup0.3.pt

The result is a checkpoint like train.py's (EMA weights only, no optimizer): evaluate.py --ckpt and
export.py --ckpt take it; its "soup" entry records what was mixed.
"""
import argparse, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import load_parts   # noqa: E402


def soup(a, b, share):
    """Checkpoint dicts a, b -> B's checkpoint with EMA weights (1 - share)·A + share·B."""
    if a["config"] != b["config"]:
        diff = {k: (a["config"].get(k), b["config"].get(k)) for k in set(a["config"]) | set(b["config"])
                if a["config"].get(k) != b["config"].get(k)}
        raise ValueError(f"the checkpoints are of different networks: {diff}")
    if a["ema"].keys() != b["ema"].keys():
        raise ValueError(f"the checkpoints' weights differ in names: {sorted(set(a['ema']) ^ set(b['ema']))[:5]}")
    ema = {k: (a["ema"][k].float() * (1 - share) + b["ema"][k].float() * share).to(a["ema"][k].dtype) for k in a["ema"]}
    out = {k: v for k, v in b.items() if k not in ("model", "opt")}
    out["ema"] = ema
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="checkpoint A (whole or in parts, as train.py writes them)")
    ap.add_argument("b", help="checkpoint B")
    ap.add_argument("--share", type=float, required=True, help="B's share of the mixture, from 0 to 1")
    ap.add_argument("--out", required=True, help="the mixed checkpoint (one file)")
    a = ap.parse_args()
    if not 0.0 <= a.share <= 1.0:
        ap.error(f"--share {a.share}: give B's share from 0 to 1")
    try:
        out = soup(load_parts(a.a), load_parts(a.b), a.share)
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    out["soup"] = {"a": a.a, "b": a.b, "b_share": a.share}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, a.out)
    print(f"wrote {a.out}: {1 - a.share:g} × {a.a} + {a.share:g} × {a.b}")


if __name__ == "__main__":
    main()
