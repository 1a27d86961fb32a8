"""A whole-image single forward of the model (all blocks at once, as a non-lazy DiT would run):
seconds and peak RSS, printed as one JSON line.   whole_forward.py CKPT LR_SIZE"""
import json, resource, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from network import InfDiT, InfDiTConfig, upsample

ckpt, n = sys.argv[1], int(sys.argv[2])
st = torch.load(ckpt, map_location="cpu")
m = InfDiT(InfDiTConfig(**st["config"])); m.load_state_dict(st["ema"]); m.eval()
lr = torch.rand(1, 3, n, n) * 2 - 1
x = upsample(lr, 4)
t = time.time()
with torch.no_grad():
    m.forward_image(x, lr, torch.tensor([4.0]))
print(json.dumps({"seconds": time.time() - t, "maxRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
