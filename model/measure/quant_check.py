"""What int8 MatMuls would cost in quality (issue 33), before any int8 graph is written: evaluate.py with every
linear layer that is a MatMul in the layer graphs (a 3-D input: tokens) computed from int8 weights (per output
channel) and uint8 activations, rounded exactly as onnxruntime's integer MatMuls would round them.

    # 1. calibrate the static activation scales on training photos (max |x| per layer, both presets)
    /usr/bin/python3 model/measure/quant_check.py calibrate runs/int8-amax.json --split train --limit 8 --presets fidelity,detail
    # 2. evaluate with the quantisation (any evaluate.py arguments after the mode and file)
    /usr/bin/python3 model/measure/quant_check.py evaluate runs/int8-amax.json --split val --presets fidelity --variants clean
        [--activations static|token] [--keep-ends]

--activations static: one scale per layer (the calibrated max |x| / 127), what a batch-invariant int8 graph can
use (QuantizeLinear + MatMulIntegerToFloat); token: a scale per token per call (the best int8 can do; in ONNX
it costs more passes over the activations than the integer MatMul saves: results/int8.txt).
--keep-ends: the input stage's patch embeddings and the output layer stay float.
The evaluate.py arguments --ckpt and --manifest default to the release's.
"""
import json, sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "model"))


def weight_key(w):
    """A layer's identity across processes: its shape and first weights (the q/kv slices of one qkv
    weight are different views, so different keys; the same view always the same key)."""
    return f"{tuple(w.shape)}:" + ",".join(f"{v:.9e}" for v in w.detach().flatten()[:6].tolist())


def main():
    usage = "usage: quant_check.py calibrate|evaluate AMAX.json [--activations static|token] [--keep-ends] [evaluate.py arguments]"
    if len(sys.argv) < 3 or sys.argv[1] not in ("calibrate", "evaluate"):
        raise SystemExit(usage)
    mode, path, rest = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    acts, keep_ends = "static", False
    if "--activations" in rest:
        i = rest.index("--activations")
        acts = rest[i + 1] if i + 1 < len(rest) else ""
        if acts not in ("static", "token"):
            raise SystemExit(f"--activations takes static or token, got {acts!r}\n{usage}")
        del rest[i:i + 2]
    if "--keep-ends" in rest:
        keep_ends = True
        rest.remove("--keep-ends")
    if mode == "evaluate" and not path.exists():
        raise SystemExit(f"{path}: no calibration file; make it with: quant_check.py calibrate {path} --split train ...")
    for flag, default in (("--ckpt", "model/release/infdit-s4.ckpt.pt"), ("--manifest", "model/release/infdit-s4.json")):
        if flag not in rest:
            rest += [flag, str(ROOT / default)]
    amax = {} if mode == "calibrate" else json.loads(path.read_text())
    linear = F.linear
    # the ends: the input stage's two patch embeddings (x and up: 48 and 96 inputs) and the output layer (48 outputs)
    ends = {(192, 48), (192, 96), (48, 192)}

    def quantised(x, w, b=None):
        if x.dim() != 3 or (keep_ends and tuple(w.shape) in ends):    # 2-D inputs are Gemm (conditioning), left float
            return linear(x, w, b)
        k = weight_key(w)
        if mode == "calibrate":
            amax[k] = max(amax.get(k, 0.0), float(x.detach().abs().max()))
            return linear(x, w, b)
        if acts == "token":
            s = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
        else:
            if k not in amax:
                raise SystemExit(f"{path} has no scale for a layer of shape {tuple(w.shape)}: calibrated with another model?")
            s = amax[k] / 127.0
        xq = torch.clamp(torch.round(x / s), -127, 127) * s                       # uint8 with zero point 128
        ws = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        return linear(xq, torch.round(w / ws) * ws, b)                              # int8 per output channel

    F.linear = quantised            # nn.Linear and network.py's F.linear both look it up here
    from measure import evaluate
    sys.argv = ["evaluate.py"] + rest
    evaluate.main()
    if mode == "calibrate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(amax, indent=0))
        print(f"{path}: {len(amax)} layers calibrated")


if __name__ == "__main__":
    main()
