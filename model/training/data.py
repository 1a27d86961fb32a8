"""Training data: pack the fetched photos into one carryable folder, and sample degraded crops.

    /usr/bin/python3 model/training/data.py pack [--cache DIR] [--out DIR] [--downscale 2]
    /usr/bin/python3 model/training/data.py crops --packed .data-r4 --out .data-r4-crops [--side 256] [--max-mb 40]

`pack` writes OUT/{train,val}/*.jpg (quality 95) of every photo downscaled by `--downscale`
(antialiased): many photos are JPEG/WebP-compressed or soft at full size, and a 2× reduction
removes most of that, so the ground truth is sharp. OUT/index.json lists the files. The held-out
cache (data_fetch.py --heldout) packs into OUT/heldout/, each photo with its manifest's reduction.

`CropSampler` keeps every image as a uint8 tensor on the training device and draws random
crops (random offset, flip, transpose) so block borders fall everywhere in the photo; the LR is
the antialiased bicubic 4× downscale of the crop ("bicubic" task) or that plus light blur,
noise ("real" task).
"""
import argparse, io, json, os, sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from training.degrade import degrade_mixed

Image.MAX_IMAGE_PIXELS = 80_000_000


def pack(cache, out, downscale=2):
    man = json.loads((Path(cache) / "photos/manifest.json").read_text())
    out = Path(out)
    index = []
    for e in man:
        im = Image.open(Path(cache) / "photos" / e["file"]).convert("RGB")
        ds = e.get("downscale", downscale)   # the held-out set's manifest gives each photo its own (data_fetch.py)
        if ds > 1:   # floor, as w // ds always gave (a source may reduce by 1.5 or 2.5: data_fetch.REPOS)
            im = im.resize((int(im.width // ds), int(im.height // ds)), Image.LANCZOS)
        stem = Path(e["file"]).stem
        if e["package"].startswith("repo:"):   # repo:owner/name, and subfolders whose files share names (dreambooth's 00.jpg)
            stem = "-".join(Path(e["file"]).with_suffix("").parts[1:])
        name = f"{e['split']}/{e['package'].replace('/', '+').replace(':', '-')}--{stem}.jpg"
        (out / e["split"]).mkdir(parents=True, exist_ok=True)
        im.save(out / name, quality=95)
        index.append({**e, "packed": name, "packed_size": [im.width, im.height], "downscale": ds})
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


def crops(packed, out, side=256, max_mb=40, seed=0):
    """A carryable training set for a device run (its files travel within 64 MiB in all): random side×side
    crops of the packed training photos, one per photo in a seeded order until max_mb is reached (then a
    second round), JPEG q95 as `pack` writes; the validation photos whole. OUT/index.json as `pack`'s, each
    crop naming its photo. Training draws its smaller crops inside them."""
    packed, out = Path(packed), Path(out)
    index = json.loads((packed / "index.json").read_text())
    rng = np.random.default_rng(seed)
    train = [e for e in index if e["split"] == "train" and min(e["packed_size"]) >= side]
    order = rng.permutation(len(train))
    res, used, budget = [], 0, max_mb * 2 ** 20
    for e in index:   # the validation photos first, whole: every figure is measured on them
        if e["split"] != "train":
            (out / e["split"]).mkdir(parents=True, exist_ok=True)
            data = (packed / e["packed"]).read_bytes()
            (out / e["packed"]).write_bytes(data); used += len(data); res.append(e)
    for rnd, i in ((rnd, i) for rnd in range(4) for i in order):   # a crop per photo, round after round
        e = train[i]
        im = Image.open(packed / e["packed"])
        x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        buf = io.BytesIO(); im.crop((x, y, x + side, y + side)).save(buf, format="JPEG", quality=95)
        if used + buf.tell() > budget:
            break
        name = f"train/{Path(e['packed']).stem}--{rnd}.jpg"
        (out / "train").mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(buf.getvalue()); used += buf.tell()
        res.append({**e, "packed": name, "packed_size": [side, side], "crop_of": e["packed"], "crop_at": [x, y]})
    (out / "index.json").write_text(json.dumps(res, indent=1))
    return res, used


def load_split(folder, split):
    index = json.loads((Path(folder) / "index.json").read_text())
    return [(e, np.asarray(Image.open(Path(folder) / e["packed"]).convert("RGB"))) for e in index if e["split"] == split]


def degrade(hr, scale, task="bicubic", gen=None, with_quality=False):
    """hr in [-1,1], (n,3,H,W) -> LR (n,3,H/s,W/s). Tasks: "bicubic" (clean), "real" (light blur and
    noise), "real2" (model/training/degrade.py: clean, clean+JPEG or Real-ESRGAN's second-order pipeline)."""
    bicubic = lambda t: F.interpolate(t, scale_factor=1.0 / scale, mode="bicubic", antialias=True, align_corners=False)
    if task == "real2":
        return degrade_mixed(hr, scale, bicubic, gen if gen is not None else torch.Generator(device=hr.device), with_quality)
    lr = bicubic(hr)
    if task == "real":
        n = hr.shape[0]
        # light Gaussian blur of random width, then Gaussian noise of random level
        s = torch.rand(n, 1, 1, 1, device=hr.device, generator=gen) * 0.8 + 0.2
        k = torch.arange(-2, 3, device=hr.device, dtype=hr.dtype).view(1, 1, 1, 5)
        w = torch.exp(-k ** 2 / (2 * s ** 2)); w = w / w.sum(-1, keepdim=True)      # (n,1,1,5)
        pad = F.pad(lr, (2, 2, 2, 2), mode="replicate")
        rows = sum(pad[:, :, :, i:i + lr.shape[3]] * w[..., i:i + 1] for i in range(5))
        lr = sum(rows[:, :, i:i + lr.shape[2], :] * w[..., i:i + 1].transpose(-1, -2) for i in range(5))
        lr = lr + torch.randn(lr.shape, device=hr.device, generator=gen) * (torch.rand(n, 1, 1, 1, device=hr.device, generator=gen) * 0.02)
    lr = lr.clamp(-1, 1)
    return (lr, torch.zeros(hr.shape[0], device=hr.device)) if with_quality else lr


def centre_crop(arr, cw, ch, multiple=16):
    """The evaluation crop (evaluate.py, restore.py, engine_check.py): cw×ch px from the middle of an HWC
    photo, its corner on a multiple of 16 px so it starts on whole LR pixels at every scale used. A photo
    smaller than that (round 4's ImageNet photos, ~400x300) gives the largest crop of `multiple`-px steps
    it holds (evaluate.py: a stage-1 block), so every photo of a mixed split counts."""
    H, W = arr.shape[:2]
    cw, ch = min(cw, W // multiple * multiple), min(ch, H // multiple * multiple)
    y0, x0 = (H - ch) // 2 // 16 * 16, (W - cw) // 2 // 16 * 16
    return arr[y0:y0 + ch, x0:x0 + cw]


class CropSampler:
    """Random crops of the packed photos, flipped and transposed at random. scale_max > 1: each crop is a
    square of crop·s pixels reduced to crop (antialiased bicubic, rounded to 8 bits like a photo), s drawn
    log-uniformly from [1, scale_max] and capped by the photo's short side, so a photo is seen at several
    reductions, not only the packed one (issue 32); scale_max 1 draws exactly what it always drew."""

    def __init__(self, images, crop, device, seed=0, scale_max=1.0):
        if not scale_max >= 1.0:
            raise ValueError(f"scale_max must be at least 1 (1: no scale augmentation), got {scale_max}")
        self.imgs = [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().to(device) for _, a in images
                     if min(a.shape[:2]) >= crop]
        area = torch.tensor([float(t.shape[1] * t.shape[2]) for t in self.imgs])
        self.p = area / area.sum()     # sample by area: big photos hold more distinct crops
        self.crop, self.device, self.scale_max = crop, device, scale_max
        self.g = torch.Generator().manual_seed(seed)

    def sample(self, n):
        idx = torch.multinomial(self.p, n, replacement=True, generator=self.g)
        out = []
        for i in idx.tolist():
            t = self.imgs[i]
            side = self.crop
            if self.scale_max > 1.0:
                top = min(self.scale_max, min(t.shape[1:]) / self.crop)
                side = min(min(t.shape[1:]), round(self.crop * top ** float(torch.rand((), generator=self.g))))
            y = int(torch.randint(0, t.shape[1] - side + 1, (1,), generator=self.g))
            x = int(torch.randint(0, t.shape[2] - side + 1, (1,), generator=self.g))
            c = t[:, y:y + side, x:x + side]
            if side != self.crop:
                c = F.interpolate(c[None].float(), size=(self.crop, self.crop), mode="bicubic", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255)
            f = int(torch.randint(0, 8, (1,), generator=self.g))
            if f & 1: c = c.flip(2)
            if f & 2: c = c.flip(1)
            if f & 4: c = c.transpose(1, 2)
            out.append(c.float())
        return torch.stack(out) / 127.5 - 1.0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["pack", "crops"])
    ap.add_argument("--packed", default=".data-r4", help="crops: the packed folder to cut from")
    ap.add_argument("--side", type=int, default=256, help="crops: px a side (the training crop: every packed photo holds one)")
    ap.add_argument("--max-mb", type=float, default=40, help="crops: the folder's size at most (a device run carries 64 MiB in all)")
    ap.add_argument("--cache", default=os.environ.get("INFDIT_DATA", str(Path.home() / ".cache/infdit-data")))
    ap.add_argument("--out", default=".data")
    ap.add_argument("--downscale", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "crops":
        idx, used = crops(a.packed, a.out, a.side, a.max_mb)
        print(f"{sum(1 for e in idx if e['split'] == 'train')} training crops of {len({e.get('crop_of') for e in idx if e['split'] == 'train'})} "
              f"photos and {sum(1 for e in idx if e['split'] != 'train')} validation photos into {a.out} ({used / 2 ** 20:.1f} MiB)")
    else:
        idx = pack(a.cache, a.out, a.downscale)
        print(f"packed {len(idx)} photos into {a.out}")
