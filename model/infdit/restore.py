"""The JPEG restorer: a small convolutional network that takes a JPEG-decoded LR image and the
quality its file was saved at, and gives the clean LR the super-resolver was trained on.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/bin/python3 model/infdit/restore.py train \
        --data .data --ckpt runs/restorer --minutes 30          # --resume to continue
    /usr/bin/python3 model/infdit/restore.py eval --ckpt runs/restorer/last.pt --data .data   # LR PSNR per quality
    /usr/bin/python3 model/infdit/restore.py fixture      # test/fixtures/restore-*: the released restorer's reference

Why a separate stage: the diffusion model sharpens what it is given, and an 8×8 JPEG step is, to
it, an edge (issue 15: +0.03 dB over Lanczos on JPEG q75 input, seams 1.35-1.42). Fine-tuning the
5.7 M-parameter model on JPEG input traded clean fidelity for JPEG fidelity on every CPU run
(model/README.md). Restoring the LR first leaves the clean path untouched (a PNG upload never
goes through it) and costs once per LR pixel, not once per block evaluation.

The network is FFDNet's shape (Zhang et al. 2018): pixel-unshuffle by 2, the quality as a constant
extra plane, a plain stack of 3×3 convolutions and ReLUs, pixel-shuffle back, plus the input.
`restore_image` applies it exactly as the engine does: on a fixed grid of TILE×TILE tiles that starts
OFFSET pixels before the image's top-left corner, each read with HALO pixels of context (edge-replicated
outside the image), so every output pixel comes from the same computation whatever the image size or
order, and equals the untiled result up to float rounding (HALO exceeds the receptive field).
"""
import argparse, io, json, math, sys, time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit.network import jpeg_level, grid_loss  # noqa: E402

TILE, HALO = 128, 32   # LR pixels; the engine's grid (lib/engine/restore.ts) uses the same
# The grid is shifted half a tile up and left of the image's corner: the base's windows (128-px tiles from
# the corner, each read with 24 px more each side: base.py) then each read exactly 2×2 restored tiles, not
# 3×3, and a screenful's 5×4 windows 6×5 restored tiles instead of 7×6. The pixels are the same either way
# up to float rounding (HALO covers the receptive field); manifests without "offset" mean 0.
OFFSET = 64


@dataclass
class RestorerConfig:
    width: int = 64
    depth: int = 10       # 3x3 convolutions between the first and the last
    shuffle: int = 2

    @property
    def receptive_radius(self):  # LR pixels each side an output pixel can see
        return (self.depth + 2) * self.shuffle + self.shuffle - 1


class Restorer(nn.Module):
    def __init__(self, cfg: RestorerConfig = RestorerConfig()):
        super().__init__()
        self.cfg = cfg
        c_in = 3 * cfg.shuffle ** 2
        layers = [nn.Conv2d(c_in + 1, cfg.width, 3, padding=1), nn.ReLU()]
        for _ in range(cfg.depth):
            layers += [nn.Conv2d(cfg.width, cfg.width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(cfg.width, c_in, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        for m in self.body:   # He init: with PyTorch's default a plain 12-conv ReLU stack barely trains
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu"); nn.init.zeros_(m.bias)
        nn.init.zeros_(self.body[-1].weight)   # starts as the identity: restored = input
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, lr, jq):
        """lr (n,3,H,W) in [-1,1], H and W even; jq (n,) network.jpeg_level of the file's quality."""
        s = self.cfg.shuffle
        x = F.pixel_unshuffle(lr, s)
        q = jq.view(-1, 1, 1, 1).expand(-1, 1, x.shape[2], x.shape[3]).to(x.dtype)
        return lr + F.pixel_shuffle(self.body(torch.cat([x, q], 1)), s)


def to_unit(u8):     # HWC uint8 -> (1,3,H,W) in [-1,1], as the engine normalises pixels
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_u8(t):        # (1,3,H,W) in [-1,1] -> HWC uint8, the engine's rounding (round half up)
    return torch.floor((t[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).numpy()


def restore_image(net, lr_u8, quality, batch=8, offset=OFFSET):
    """HWC uint8 LR of a JPEG of `quality` -> restored HWC uint8 LR, tile by tile as the engine does."""
    H, W = lr_u8.shape[:2]
    # tile k covers [k·TILE - offset, (k+1)·TILE - offset)
    ty, tx = (H - 1 + offset) // TILE + 1, (W - 1 + offset) // TILE + 1
    # edge-replicated so that every tile, border ones too, reads a full TILE+2·HALO window
    pad = np.pad(lr_u8, ((HALO + offset, ty * TILE - offset - H + HALO), (HALO + offset, tx * TILE - offset - W + HALO), (0, 0)), mode="edge")
    windows = [(r, c) for r in range(ty) for c in range(tx)]
    out = np.empty((ty * TILE, tx * TILE, 3), np.uint8)
    jq = jpeg_level(torch.tensor([float(quality)]))
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            part = windows[i:i + batch]
            x = torch.cat([to_unit(pad[r * TILE:r * TILE + TILE + 2 * HALO, c * TILE:c * TILE + TILE + 2 * HALO]) for r, c in part])
            y = net(x, jq.expand(len(part)))[:, :, HALO:HALO + TILE, HALO:HALO + TILE]
            for j, (r, c) in enumerate(part):
                out[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = to_u8(y[j:j + 1])
    return out[offset:offset + H, offset:offset + W]


def jpeg(u8, quality):
    """Pillow's JPEG (libjpeg standard tables, 4:2:0), the encoder evaluate.py uses for its jpegNN variants."""
    buf = io.BytesIO(); Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))   # writable: torch takes it as is


def clean_lr(arr, scale=4):
    """The clean LR of a ground-truth photo: data.degrade's "bicubic" task, rounded as the engine reads it."""
    from training.data import degrade
    return to_u8(degrade(to_unit(arr), scale))


def psnr(a, b):
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def val_crops(data, crop=(512, 384), scale=4):
    """The clean LR of evaluate.py's centred validation crops."""
    from training.data import load_split, centre_crop
    return [(e["packed"], clean_lr(centre_crop(arr, *crop), scale)) for e, arr in load_split(data, "val")]


def grid_ratio(img, ref, period=8):
    """Mean |step| of the luma across the JPEG grid's lines over that of the other lines, divided by
    the same ratio of `ref` (the clean LR): 1.0 = no block edges left (evaluate.py's seam ratio, in LR px)."""
    def r(a):
        y = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
        on = np.concatenate([dx[:, period - 1::period].ravel(), dy[period - 1::period].ravel()])
        mx, my = np.ones(dx.shape[1], bool), np.ones(dy.shape[0], bool)
        mx[period - 1::period] = False; my[period - 1::period] = False
        return on.mean() / np.concatenate([dx[:, mx].ravel(), dy[my].ravel()]).mean()
    return r(img) / r(ref)


def load(path):
    st = torch.load(path, map_location="cpu")
    net = Restorer(RestorerConfig(**st["config"]))
    net.load_state_dict(st["ema"])
    return net.eval(), st


def train(a):
    from training.data import load_split
    from training.train import all_cores
    torch.set_num_threads(a.threads or all_cores())
    torch.manual_seed(a.seed)
    ck = Path(a.ckpt); ck.mkdir(parents=True, exist_ok=True)
    qlo, qhi = map(int, a.quality.split("-"))
    # every training photo's clean LR once (the photos are the super-resolver's training split)
    lrs = [clean_lr(arr) for _, arr in load_split(a.data, "train")]
    lrs = [l for l in lrs if min(l.shape[:2]) >= a.crop]
    area = np.array([l.shape[0] * l.shape[1] for l in lrs], np.float64)
    net = Restorer(RestorerConfig(width=a.width, depth=a.depth))
    ema = Restorer(net.cfg); ema.load_state_dict(net.state_dict())
    if a.init:   # a new run (fresh optimizer and schedule) from another's weights
        net.load_state_dict(load(a.init)[0].state_dict()); ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=0.0)
    rng, step, log = np.random.default_rng(a.seed), 0, []
    if a.resume and (ck / "last.pt").exists():
        st = torch.load(ck / "last.pt", map_location="cpu")
        net.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, log = st["step"], st["log"]
        rng.bit_generator.state = st["rng"]
        print(f"resumed at step {step}", flush=True)

    def save():
        st = {"config": asdict(net.cfg), "model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
              "step": step, "log": log, "rng": rng.bit_generator.state, "quality": a.quality, "crop": a.crop, "batch": a.batch,
              "grid_weight": a.grid_weight, "init": a.init, "through": a.through, "lr_weight": a.lr_weight}
        torch.save(st, ck / "last.pt.tmp"); (ck / "last.pt.tmp").replace(ck / "last.pt")

    if a.through:
        # end to end: the loss is the super-resolver's (frozen) one-evaluation output against the
        # ground truth, so the restorer learns to remove what the diffusion model would amplify
        from training.train import load_ema
        from training.data import CropSampler, degrade
        from infdit.network import upsample
        dit = load_ema(a.through)[0]
        for p in dit.parameters():
            p.requires_grad_(False)
        hr_crops = CropSampler(load_split(a.data, "train"), a.crop * dit.cfg.scale, "cpu", seed=a.seed)
        sigma_max = json.loads(Path(a.manifest).read_text())["sampling"]["sigma_max"]

    def schedule():   # cosine over --steps
        lr_now = a.lr * 0.5 * (1 + math.cos(math.pi * min(step / a.steps, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr_now
        return lr_now

    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16) if a.cpu_bf16 else torch.autocast("cpu", enabled=False)

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - a.ema)

    t0, last_save = time.time(), time.time()
    while step < a.steps and time.time() - t0 < a.minutes * 60:
        if a.through:
            hr = hr_crops.sample(a.batch)
            clean = [to_u8(degrade(hr[i:i + 1], dit.cfg.scale)) for i in range(a.batch)]
            qs = [int(rng.integers(qlo, qhi + 1)) for _ in clean]
            x = torch.cat([to_unit(jpeg(c, q)) for c, q in zip(clean, qs)])
            y, jq = torch.cat([to_unit(c) for c in clean]), jpeg_level(torch.tensor(qs, dtype=torch.float32))
            lr_now = schedule()
            with amp():
                r = net(x, jq)
                up = upsample(r, dit.cfg.scale)
                sr = dit.forward_image(up + sigma_max * torch.randn_like(up), r, torch.full((a.batch,), sigma_max))
            loss_sr = F.mse_loss(sr.float(), hr)
            loss = loss_sr + a.lr_weight * F.mse_loss(r.float(), y)
            if a.grid_weight:   # the output's steps across the JPEG lines, 8·scale px apart: the seams evaluate.py counts
                loss = loss + a.grid_weight * grid_loss(sr.float(), hr, period=8 * dit.cfg.scale)
            update(loss)
            step += 1
            log.append([step, round(loss_sr.item(), 6), round(F.mse_loss(r.float(), y).item(), 6)])
            print(f"step {step} SR loss {loss_sr.item():.6f} LR loss {log[-1][2]:.6f} lr {lr_now:.2e} {time.time() - t0:.0f}s", flush=True)
            if time.time() - last_save > 120:
                save(); last_save = time.time()
            continue
        xs, ys, qs = [], [], []
        for i in rng.choice(len(lrs), a.batch, p=area / area.sum()):
            l = lrs[i]
            y, x = rng.integers(0, l.shape[0] - a.crop + 1), rng.integers(0, l.shape[1] - a.crop + 1)
            c = l[y:y + a.crop, x:x + a.crop]
            f = rng.integers(0, 8)
            if f & 1: c = c[:, ::-1]
            if f & 2: c = c[::-1]
            if f & 4: c = c.transpose(1, 0, 2)
            c = np.ascontiguousarray(c)
            q = int(rng.integers(qlo, qhi + 1))
            xs.append(to_unit(jpeg(c, q))); ys.append(to_unit(c)); qs.append(q)
        x, y, jq = torch.cat(xs), torch.cat(ys), jpeg_level(torch.tensor(qs, dtype=torch.float32))
        lr_now = schedule()
        with amp():
            out = net(x, jq)
        loss = F.mse_loss(out.float(), y)   # the PSNR the evaluation measures
        if a.grid_weight:
            loss = loss + a.grid_weight * grid_loss(out.float(), y, period=8)
        update(loss)
        step += 1
        base = (F.mse_loss(x, y) + a.grid_weight * grid_loss(x, y, period=8)).item()
        log.append([step, round(loss.item(), 6), round(base, 6)])
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.5f} (input {base:.5f}) lr {lr_now:.2e} {time.time() - t0:.0f}s", flush=True)
        if time.time() - last_save > 120:
            save(); last_save = time.time()
    save()
    print(f"saved {ck / 'last.pt'} at step {step}", flush=True)


def evaluate(a):
    net, st = load(a.ckpt)
    torch.set_num_threads(a.threads or __import__("train").all_cores())
    rows = {}
    for name, lr in val_crops(a.data):
        for q in map(int, a.qualities.split(",")):
            j = jpeg(lr, q)
            r = restore_image(net, j, q)
            rows.setdefault(q, []).append((psnr(j, lr), psnr(r, lr), grid_ratio(j, lr), grid_ratio(r, lr)))
    print(f"restorer {a.ckpt} (step {st['step']}), {len(rows[q])} validation crops' clean LR saved as JPEG:")
    res = {}
    for q, v in rows.items():
        jp, rp, jg, rg = np.mean(v, axis=0)
        res[q] = {"jpeg_psnr": jp, "restored_psnr": rp, "jpeg_grid": jg, "restored_grid": rg}
        print(f"  q{q}: JPEG {jp:.2f} dB, restored {rp:.2f} dB ({rp - jp:+.2f}); 8-px grid ratio {jg:.3f} -> {rg:.3f}")
    return res


def fixture(a):
    """test/fixtures/restore-{in.png,ref.png,ref.json}: a JPEG's decoded pixels and restore_image's answer,
    for test/restore.test.ts (the engine's tiled restoration against this one)."""
    net, st = load(a.ckpt)
    src = Image.open(a.image).convert("RGB")
    lr = np.asarray(src.resize((a.size[0], a.size[1]), Image.LANCZOS))
    dec = jpeg(lr, a.quality)
    out = Path(a.out)
    Image.fromarray(dec).save(out / "restore-in.png")
    Image.fromarray(restore_image(net, dec, a.quality)).save(out / "restore-ref.png")
    (out / "restore-ref.json").write_text(json.dumps({"quality": a.quality, "restorer": str(a.ckpt), "step": st["step"],
                                                       "source": str(a.image), "size": a.size}, indent=1) + "\n")
    print(f"wrote {out}/restore-in.png, restore-ref.png, restore-ref.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", default=".data")
    t.add_argument("--ckpt", required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--init", help="start from this checkpoint's weights (fresh optimizer and schedule)")
    t.add_argument("--grid-weight", type=float, default=0.0, help="weight of grid_loss beside pixel MSE "
                   "(with --through: on the output, across lines 8·scale px apart)")
    t.add_argument("--through", metavar="CKPT", help="train end to end through this super-resolver checkpoint "
                   "(frozen; its one-evaluation output against the ground truth; --crop is then the LR crop)")
    t.add_argument("--manifest", default="model/release/infdit-s4.json", help="with --through: its sampling's sigma_max")
    t.add_argument("--lr-weight", type=float, default=1.0, help="with --through: weight of the LR pixel MSE beside the output's")
    t.add_argument("--minutes", type=float, default=30)
    t.add_argument("--steps", type=int, default=2000, help="cosine schedule length (and the last step)")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--crop", type=int, default=96, help="LR crop side (even)")
    t.add_argument("--quality", default="30-95", help="JPEG qualities drawn uniformly, lo-hi")
    t.add_argument("--width", type=int, default=64)
    t.add_argument("--depth", type=int, default=10)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--ema", type=float, default=0.995)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--cpu-bf16", action="store_true")
    e = sub.add_parser("eval")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--data", default=".data")
    e.add_argument("--qualities", default="30,50,75,90")
    e.add_argument("--threads", type=int, default=0)
    f = sub.add_parser("fixture")
    f.add_argument("--ckpt", default="model/release/infdit-s4.restore.ckpt.pt")
    f.add_argument("--image", default="viewer/demo.jpg")
    f.add_argument("--size", type=int, nargs=2, default=[200, 150], help="LR width height (over a tile each way)")
    f.add_argument("--quality", type=int, default=40)
    f.add_argument("--out", default="test/fixtures")
    a = ap.parse_args()
    if a.cmd == "fixture":
        fixture(a)
    elif a.cmd == "train":
        if a.crop % 2 or a.crop < 16:
            ap.error(f"--crop must be even and at least 16, got {a.crop}")
        if not __import__("re").fullmatch(r"\d+-\d+", a.quality) or not 1 <= int(a.quality.split("-")[0]) <= int(a.quality.split("-")[1]) <= 100:
            ap.error(f"--quality must be lo-hi with 1 <= lo <= hi <= 100, got {a.quality!r}")
        train(a)
    else:
        evaluate(a)


if __name__ == "__main__":
    main()
