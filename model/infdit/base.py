"""The base under the residual (DESIGN.md §1, issue 38): a small convolutional super-resolver whose
output is up(LR), the image the diffusion transformer refines.

    /usr/bin/python3 model/infdit/base.py set5 --ckpt TEACHER.pth --set5 DIR        # reproduce a published 4x PSNR
    /usr/bin/python3 model/infdit/base.py halo --ckpt TEACHER.pth --data .data      # tiled vs whole image, per halo
    /usr/bin/python3 model/infdit/base.py distill --teacher TEACHER.pth --data .data --ckpt runs/base --minutes 60
    /usr/bin/python3 model/infdit/base.py attach --ckpt runs/base/best.pt --manifest model/release/infdit-s4.json

The family is SAFMN++ (Sun et al., NTIRE 2024 efficient SR; "spatially-adaptive feature modulation"):
a 3x3 stem, blocks of [feature modulation -> convolutional channel mixer] with a skip, a 3x3 conv to
scale² · 3 channels and a pixel shuffle, plus the bilinear upsample of the input. Feature modulation
splits a 3x3 projection's channels: a share is max-pooled over 8x8 cells, filtered depthwise on that
coarse grid, brought back bilinearly, GELU'd and multiplied into the fine features (a cheap wide
context); the rest passes through.

Locality. The original pools each image to (h/8, w/8) cells, so its output depends on the whole image
and its size. Here the base is *defined* on a canonical grid: LR tiles of TILE px from the image's
top-left corner, each computed from a window of HALO more pixels on every side (edge-replicated outside
the image), with TILE and HALO multiples of 8 so that every window's pooling cells lie on the image's
own 8-px grid. An output pixel therefore always comes from the same call on the same window: the bytes
never depend on which block asked first, batching, caching or the machine's thread count. HALO is
chosen (`halo`) so that the tiled base is within 1/255 of the whole-image computation inside the
image, and no tile border shows.

The engine runs the exported graph (`BaseWindow`, one window per call) in the model thread
(lib/engine/base.ts); `tiled_tensor()` here is its reference.
"""
import argparse, copy, json, math, sys, time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit.network import to_8bit, jpeg_level  # noqa: E402
from infdit import restore  # noqa: E402   (a JPEG upload's LR reaches the base through the restorer)

# LR pixels; lib/engine/base.ts reads them from the manifest. HALO 24: SAFMN++'s tiled output within
# 0.54/255 of the whole image's, the shipped student's 0.08/255 (the first student's 0.15; 16: 1.87, 0.78,
# 0.73; `halo`, model/results/base-halo-*.txt); TILE 128: a window costs (128+48)²/128² = 1.89x its tile (64: 3.06x),
# and a deepest-zoom DZI tile (256 px at 4x) needs one to four windows.
TILE, HALO, CELL = 128, 24, 8
RESTORER = "model/release/infdit-s4.restore.ckpt.pt"   # what a JPEG reaches a base that is not JPEG-aware through


@dataclass
class BaseConfig:
    dim: int = 36
    blocks: int = 6
    ffn: float = 1.5          # channel mixer's hidden width / dim
    pooled: int = 3           # 1/pooled of the projection's channels take the pooled (wide) path
    scale: int = 4
    block_skip: bool = True   # each block adds to its input (SAFMN++); light_SAFMN++ instead has
    body_skip: bool = False   # one skip around the whole body
    bilinear: bool = True     # the output adds the input's bilinear upsample (SAFMN++; not light_SAFMN++)
    jq: bool = False          # JPEG-aware: the stem also reads a 4th channel, the JPEG level of the LR (jpeg_level;
                              # 0 = never a JPEG) everywhere, so a JPEG upload needs no restorer before it


SIZES = {
    # NTIRE 2024 ESR entry "SAFMN++" (team 23): 0.21 M parameters
    "safmnpp": BaseConfig(),
    # AIS 2024 real-time 4K SR of compressed AVIF images, fidelity track winner "light_SAFMN++": 0.066 M
    # parameters, about a third of SAFMN++'s operations per pixel
    "light_safmnpp": BaseConfig(dim=32, blocks=2, ffn=1.5, pooled=2, block_skip=False, body_skip=True, bilinear=False),
}


class FeatureModulation(nn.Module):
    def __init__(self, dim, pooled):
        super().__init__()
        self.wide = dim // pooled
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.coarse = nn.Conv2d(self.wide, self.wide, 3, 1, 1, groups=self.wide, bias=False)
        self.out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x):
        h, w = x.shape[-2:]
        wide, rest = self.proj(x).split([self.wide, x.shape[1] - self.wide], 1)
        # h and w are multiples of CELL (tiled() guarantees it): the original's adaptive pool to
        # (h/8, w/8) is then exactly this max-pool, and exports as one
        ctx = self.coarse(F.max_pool2d(wide, CELL))
        ctx = F.interpolate(ctx, size=(h, w), mode="bilinear", align_corners=False)
        return self.out(F.gelu(torch.cat([rest, F.gelu(ctx) * wide], 1)))


class ChannelMixer(nn.Module):
    def __init__(self, dim, ffn):
        super().__init__()
        hidden = int(dim * ffn)
        self.expand = nn.Conv2d(dim, hidden, 3, 1, 1, bias=False)
        self.reduce = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x):
        return self.reduce(F.gelu(self.expand(x)))


class BaseBlock(nn.Module):
    def __init__(self, cfg: BaseConfig):
        super().__init__()
        self.modulate = FeatureModulation(cfg.dim, cfg.pooled)
        self.mix = ChannelMixer(cfg.dim, cfg.ffn)
        self.skip = cfg.block_skip

    def forward(self, x):
        y = self.mix(self.modulate(x))
        return x + y if self.skip else y


class BaseNet(nn.Module):
    """RGB in [0,1] (n,3,H,W), H and W multiples of CELL -> (n,3,sH,sW), not clamped."""

    def __init__(self, cfg: BaseConfig = BaseConfig()):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Conv2d(4 if cfg.jq else 3, cfg.dim, 3, 1, 1, bias=False)
        self.body = nn.Sequential(*[BaseBlock(cfg) for _ in range(cfg.blocks)])
        self.head = nn.Conv2d(cfg.dim, 3 * cfg.scale ** 2, 3, 1, 1, bias=False)

    def forward(self, x, jq=None):
        """jq: (n,) JPEG levels of a JPEG-aware base's inputs (None: 0, clean); ignored by the others."""
        rgb = x
        if self.cfg.jq:
            level = x.new_zeros(x.shape[0]) if jq is None else jq.to(x).reshape(-1)
            x = torch.cat([x, level[:, None, None, None].expand(-1, 1, *x.shape[2:])], 1)
        f = self.stem(x)
        f = self.body(f) + f if self.cfg.body_skip else self.body(f)
        y = F.pixel_shuffle(self.head(f), self.cfg.scale)
        return y + F.interpolate(rgb, scale_factor=self.cfg.scale, mode="bilinear", align_corners=False) if self.cfg.bilinear else y

    @property
    def receptive_radius(self):
        """LR pixels each side that can reach an output pixel: a block's coarse path sees ±1 cell
        through the depthwise filter and ±1 more through the bilinear return, plus the 3x3s."""
        return 2 + self.cfg.blocks * (2 + 2 * CELL + CELL - 1)


def from_safmnpp(state):
    """Our names for a SAFMN++ checkpoint's (`params_ema`, else `params`) tensors."""
    p = state.get("params_ema", state.get("params", state))
    names = {"to_feat.weight": "stem.weight", "to_img.0.weight": "head.weight"}
    rename = {"conv1.proj": "modulate.proj", "conv1.dwconv": "modulate.coarse", "conv1.out": "modulate.out",
              "conv2.conv1": "mix.expand", "conv2.conv2": "mix.reduce",
              "conv2.conv.0": "mix.expand", "conv2.conv.2": "mix.reduce"}   # light_SAFMN++'s names
    out = {}
    for k, v in p.items():
        if k in names:
            out[names[k]] = v
            continue
        i, rest = k.split(".", 2)[1:]
        part, leaf = rest.rsplit(".", 1)
        out[f"body.{i}.{rename[part]}.{leaf}"] = v
    return out


def load(path, size=None):
    """A BaseNet from a released/distilled checkpoint ({"config", "ema"}) or a SAFMN++ / light_SAFMN++ .pth
    (told apart by their tensors' names unless `size` says)."""
    st = torch.load(path, map_location="cpu")
    if "config" in st:
        return from_state(st)
    p = st.get("params_ema", st.get("params", st))
    net = BaseNet(SIZES[size or ("light_safmnpp" if any(".conv2.conv.0." in k for k in p) else "safmnpp")])
    net.load_state_dict(from_safmnpp(st))
    return net.eval().requires_grad_(False)


def tiled_tensor(net, lr, tile=TILE, halo=HALO, batch=8, jq=0.0):
    """lr (n,3,H,W) in [-1,1] -> (n,3,sH,sW) in [-1,1]: the canonical tiled base, exactly as the engine
    computes it (windows of tile+2·halo, edge-replicated outside the image, one window per call).
    jq: the LR's JPEG level (a JPEG-aware base; 0 = clean)."""
    assert tile % CELL == 0 and halo % CELL == 0, "tile and halo must be multiples of the pooling cell"
    n, _, H, W = lr.shape
    s, ty, tx, S = net.cfg.scale, math.ceil(H / tile), math.ceil(W / tile), tile + 2 * halo
    pad = F.pad(lr, (halo, tx * tile - W + halo, halo, ty * tile - H + halo), mode="replicate")
    out = lr.new_empty(n, 3, ty * tile * s, tx * tile * s)
    win = [(i, r, c) for i in range(n) for r in range(ty) for c in range(tx)]
    graph = BaseWindow(net, tile, halo)
    with torch.no_grad():
        for k in range(0, len(win), batch):
            part = win[k:k + batch]
            y = graph(torch.stack([pad[i, :, r * tile:r * tile + S, c * tile:c * tile + S] for i, r, c in part]),
                      torch.full((len(part),), float(jq)))
            for j, (i, r, c) in enumerate(part):
                out[i, :, r * tile * s:(r + 1) * tile * s, c * tile * s:(c + 1) * tile * s] = y[j]
    return out[:, :, :H * s, :W * s]


def tiled(net, lr_u8, tile=TILE, halo=HALO, batch=8, jq=0.0):
    """HWC uint8 LR -> (3, sH, sW) float32 in [0,1] units (not clamped): tiled_tensor on the engine's pixels."""
    x = torch.from_numpy(np.ascontiguousarray(lr_u8)).permute(2, 0, 1)[None].float() / 127.5 - 1
    return (tiled_tensor(net, x, tile, halo, batch, jq)[0] + 1) * 0.5


def cascade(net, lr, stages, jq=0.0):
    """The base at each stage of a cascade, as the engine runs it: lr (1,3,h,w) in [-1,1] -> the last stage's
    output in [-1,1], each earlier stage's rounded to 8 bits (the next stage's LR is pixels, never a JPEG:
    only stage 1 reads the level jq)."""
    y = tiled_tensor(net, lr, jq=jq)
    for _ in range(stages - 1):
        y = tiled_tensor(net, to_8bit(y))
    return y


def crop_up(net, lr, halo=HALO, jq=0.0):
    """The base of training crops (n,3,h,w) in [-1,1]: each crop one window, edge-replicated by halo, so
    its pixels see what the canonical grid would give them to within the halo's error (`halo`). jq: a float
    or (n,) levels for a JPEG-aware base."""
    s = net.cfg.scale
    ph, pw = -lr.shape[2] % CELL, -lr.shape[3] % CELL
    x = F.pad(lr, (halo, halo + pw, halo, halo + ph), mode="replicate")
    with torch.no_grad():
        y = net((x + 1) * 0.5, torch.as_tensor(jq, dtype=torch.float32).expand(len(lr))) * 2 - 1
    return y[:, :, halo * s:(halo + lr.shape[2]) * s, halo * s:(halo + lr.shape[3]) * s]


def state_of(net):
    """What a transformer checkpoint keeps of the base it was trained over."""
    return {"config": asdict(net.cfg), "ema": net.state_dict()}


def from_state(st):
    net = BaseNet(BaseConfig(**st["config"]))
    net.load_state_dict(st["ema"])
    return net.eval().requires_grad_(False)


def whole(net, lr_u8):
    """The untiled computation (the image edge-padded to a multiple of CELL), for comparison."""
    H, W = lr_u8.shape[:2]
    ph, pw = -H % CELL, -W % CELL
    x = torch.from_numpy(np.ascontiguousarray(np.pad(lr_u8, ((0, ph), (0, pw), (0, 0)), mode="edge")))
    with torch.no_grad():
        y = net(x.permute(2, 0, 1)[None].float() / 255)[0]
    s = net.cfg.scale
    return y[:, :H * s, :W * s]


def to_u8(y):
    """(3,H,W) in [0,1] units -> HWC uint8, the engine's rounding (round half up)."""
    return torch.floor(y.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def y_psnr(a, b, shave):
    """PSNR on the BT.601 luma (16-235), `shave` px from every border: the convention SR papers report."""
    def y(u8):
        return 16 + (65.481 * u8[..., 0] + 128.553 * u8[..., 1] + 24.966 * u8[..., 2]) / 255.0
    d = (y(a.astype(np.float64)) - y(b.astype(np.float64)))[shave:-shave, shave:-shave]
    return float(10 * np.log10(255.0 ** 2 / np.mean(d ** 2)))


def cmd_set5(a):
    net = load(a.ckpt, a.size)
    root = Path(a.set5)
    rows = []
    for hr_path in sorted((root / "Set5").glob("*.bmp")):
        hr = np.asarray(Image.open(hr_path).convert("RGB"))
        lr = np.asarray(Image.open(root / "Set5_LR/x4" / f"{hr_path.stem}x4.bmp").convert("RGB"))
        H, W = lr.shape[0] * 4, lr.shape[1] * 4
        sr = to_u8(whole(net, lr))
        bic = np.asarray(Image.fromarray(lr).resize((W, H), Image.BICUBIC))
        rows.append((hr_path.stem, y_psnr(sr, hr[:H, :W], 4), y_psnr(bic, hr[:H, :W], 4)))
        print(f"{hr_path.stem:10s} base {rows[-1][1]:.3f} dB   bicubic {rows[-1][2]:.3f} dB")
    print(f"Set5 x4 mean (Y, shave 4): base {np.mean([r[1] for r in rows]):.3f} dB, bicubic {np.mean([r[2] for r in rows]):.3f} dB")


def cmd_halo(a):
    """Largest |tiled - whole| (in 1/255) inside the image, per halo, on the validation crops."""
    from training.data import load_split, centre_crop
    net = load(a.ckpt, a.size)
    imgs = [restore.clean_lr(centre_crop(arr, 512, 384)) for _, arr in load_split(a.data, a.split)][: a.n]
    for halo in [int(h) for h in a.halos.split(",")]:
        worst, mean = 0.0, []
        for lr in imgs:
            d = (tiled(net, lr, a.tile, halo) - whole(net, lr)).abs() * 255
            # the image's own edge differs by construction (replicated vs the whole image's zero
            # padding inside the net): compare where the whole image's value is not edge-bound
            m = d[:, 4 * halo:-4 * halo, 4 * halo:-4 * halo] if halo else d
            worst = max(worst, float(m.max())); mean.append(float(m.mean()))
        print(f"tile {a.tile} halo {halo:3d}: max |tiled - whole| {worst:.4f}/255, mean {np.mean(mean):.5f}/255 "
              f"(window cost {(a.tile + 2 * halo) ** 2 / a.tile ** 2:.2f}x)")


def val_set(data, split="val", n=None):
    """(LR, ground truth), both HWC uint8, of the evaluation crops (evaluate.py's centred 512x384)."""
    from training.data import load_split, centre_crop
    return [(restore.clean_lr(gt), gt) for gt in (centre_crop(arr, 512, 384) for _, arr in load_split(data, split)[:n])]


def measure(net, crops, quality=0):
    """Mean PSNR (RGB, after 8-bit rounding as served) of the tiled base over crops; quality > 0: of their LR
    saved as a JPEG at that quality, read as the engine reads a JPEG upload for this base (a JPEG-aware base
    takes it raw with its level, the others through the released restorer)."""
    from measure.evaluate import psnr
    if not quality:
        return float(np.mean([psnr(to_u8(tiled(net, lr)), gt) for lr, gt in crops]))
    level = float(jpeg_level(quality))
    if net.cfg.jq:
        return float(np.mean([psnr(to_u8(tiled(net, restore.jpeg(lr, quality), jq=level)), gt) for lr, gt in crops]))
    rnet = restore.load(RESTORER)[0]
    return float(np.mean([psnr(to_u8(tiled(net, restore.restore_image(rnet, restore.jpeg(lr, quality), quality))), gt)
                          for lr, gt in crops]))


class JpegInputs:
    """What the base sees of a JPEG upload: the LR saved as a JPEG (Pillow, 4:2:0) at a quality drawn from
    30-95, then the released restorer's output, rounded to 8 bits (the engine's chain, lib/engine/restore.ts).
    A share of each batch is replaced so; the target stays the teacher's output on the clean LR."""

    def __init__(self, restorer_ckpt, seed):
        """restorer_ckpt None: the raw JPEG, for a JPEG-aware base (which reads it with its level)."""
        self.net = restore.load(restorer_ckpt)[0].requires_grad_(False) if restorer_ckpt else None
        self.rng = np.random.default_rng(seed)

    def __call__(self, lr01, share):
        """lr01 (n,3,h,w): 8-bit LR in [0,1]; each sample replaced with probability `share`. Returns the LR
        and each sample's JPEG level (0: left clean)."""
        out, levels = lr01.clone(), torch.zeros(len(lr01))
        for i in np.flatnonzero(self.rng.random(len(lr01)) < share):
            q = int(self.rng.integers(30, 96))
            u8 = restore.jpeg(restore.to_u8(lr01[i:i + 1].cpu() * 2 - 1), q)
            levels[i] = jpeg_level(torch.tensor(float(q)))
            if self.net is not None:
                u8 = restore.to_u8(self.net(restore.to_unit(u8), levels[i:i + 1]))
            out[i] = torch.from_numpy(u8).permute(2, 0, 1).to(out) / 255
        return out, levels


def jpeg_aware(state):
    """A base's weights for its JPEG-aware form (BaseConfig.jq): the stem's level channel is added at zero
    weight, so at any level the output is the base's until training gives the level a use."""
    w = dict(state)
    if w["stem.weight"].shape[1] == 3:
        w["stem.weight"] = torch.cat([w["stem.weight"], torch.zeros_like(w["stem.weight"][:, :1])], 1)
    return w


def cmd_distill(a):
    """A student of our own, trained on the CPU to give the teacher's output (and the photo's): its
    weights are the project's, the teacher's never leave the cache they were fetched into."""
    from training.data import load_split, CropSampler, degrade
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    teacher = load(a.teacher).to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    ck = Path(a.ckpt); ck.mkdir(parents=True, exist_ok=True)
    cfg = SIZES[a.size] if not a.init else BaseConfig(**torch.load(a.init, map_location="cpu")["config"])
    cfg = BaseConfig(**(asdict(cfg) | {"jq": a.jq or cfg.jq}))
    net = BaseNet(cfg).to(dev)
    if a.init:     # a trained base; made JPEG-aware, it starts as that base exactly
        w = load(a.init).state_dict()
        net.load_state_dict(jpeg_aware(w) if cfg.jq else w)
    ema = BaseNet(cfg).to(dev); ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=a.lr, betas=(0.9, 0.99))
    step, spent, best = 0, 0.0, -1.0
    if a.resume and (ck / "last.pt").exists():
        st = torch.load(ck / "last.pt", map_location=dev)
        net.load_state_dict(st["net"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, spent, best = st["step"], st["spent"], st["best"]
        print(f"resumed at step {step} ({spent / 60:.1f} min spent, best {best:.3f} dB)")
    sampler = CropSampler(load_split(a.data, "train"), a.crop * 4, dev, seed=a.seed + step,
                          scale_max=a.scale_aug)
    val = val_set(a.val_data or a.data, "val", a.val_n)
    jpeg_in = JpegInputs(None if cfg.jq else a.restorer, a.seed + step) if a.jpeg_share > 0 else None
    total = a.minutes * 60
    m = a.margin

    def save(name, extra=None):
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}
        st = {"config": asdict(net.cfg), "ema": cpu(ema.state_dict()), "step": step, "spent": spent, "best": best,
              "teacher": str(a.teacher), "recipe": vars(a) | (extra or {})}
        if name == "last.pt":
            st |= {"net": net.state_dict(), "opt": opt.state_dict()}
        tmp = ck / (name + ".tmp"); torch.save(st, tmp); tmp.replace(ck / name)

    t_eval = t_save = time.time()
    logged = spent   # the training time at the last log line: its crops/s are since then
    while spent < total:
        t0 = time.time()
        hr = sampler.sample(a.batch)                                   # [-1,1]
        lr = torch.floor((degrade(hr, 4).clamp(-1, 1) + 1) * 127.5 + 0.5) / 255   # 8-bit LR in [0,1]
        gt = (hr + 1) / 2
        levels = None
        with torch.no_grad():
            tgt = teacher(lr)
            if jpeg_in is not None:    # after the teacher: its clean-input output stays the target
                lr, levels = jpeg_in(lr, a.jpeg_share)
        for g in opt.param_groups:   # cosine to 2% over the whole budget
            g["lr"] = a.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(spent / total, 1))))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.cpu_bf16 or dev.type == "cuda"):
            out = net(lr, levels).float()
        # the loss leaves out a margin: the engine only ever keeps a window's centre
        cut = lambda t: t[:, :, 4 * m:-4 * m, 4 * m:-4 * m]
        loss = F.l1_loss(cut(out), cut(tgt)) + a.gt_weight * F.l1_loss(cut(out), cut(gt))
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        with torch.no_grad():
            d = min(a.ema, (1 + step) / (10 + step))
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(pn, alpha=1 - d)
        step += 1; spent += time.time() - t0
        if step % 20 == 0:
            print(f"step {step:6d}  loss {loss.item():.5f}  {a.batch * 20 / max(1e-9, spent - logged):.1f} crops/s  "
                  f"{spent / 60:.1f}/{a.minutes} min", flush=True)
            logged = spent
        if time.time() - t_save > 120:   # a killed run loses two minutes at most
            save("last.pt"); t_save = time.time()
        if time.time() - t_eval > a.eval_every * 60 or spent >= total:
            t_eval = time.time()
            e = copy.deepcopy(ema).cpu()
            clean = score = measure(e, val)
            if cfg.jq:    # a JPEG-aware base is chosen on clean and JPEG q75 LR alike
                jpeg75 = measure(e, val, 75); score = (clean + jpeg75) / 2
            if score > best:
                best = score; save("best.pt", {"val_psnr": score})
            save("last.pt")
            print(f"eval step {step}: val PSNR {score:.3f} dB (best {best:.3f})"
                  + (f", clean {clean:.3f}, JPEG q75 {jpeg75:.3f}" if cfg.jq else ""), flush=True)
    save("last.pt")


class BaseWindow(nn.Module):
    """The engine's graph: a batch of windows (n,3,TILE+2·HALO,·) in [-1,1] -> their tiles' base
    (n,3,s·TILE,s·TILE) in [-1,1], the units the transformer and the pixels use."""

    def __init__(self, net, tile=TILE, halo=HALO):
        super().__init__()
        self.net, self.tile, self.halo = net, tile, halo

    def forward(self, lr, jq=None):
        """jq: (n,) JPEG levels (a JPEG-aware base's second input; the others take none)."""
        s, h, t = self.net.cfg.scale, self.halo, self.tile
        return self.net((lr + 1) * 0.5, jq)[:, :, h * s:(h + t) * s, h * s:(h + t) * s] * 2 - 1


def attach(m, out, ckpt, notes=None, tile=TILE, halo=HALO):
    """Export a base checkpoint (or a BaseNet) as <out>.base.onnx and describe it in manifest `m` ("base";
    at most one). The transformer's up(LR) stays what `m["up"]` says (bicubic unless trained over the base)."""
    from infdit.export import _export
    if isinstance(ckpt, BaseNet):
        net, st = ckpt.eval(), {}
    else:
        net, st = load(ckpt), torch.load(ckpt, map_location="cpu")
        torch.save({k: st[k] for k in ("config", "ema", "step", "spent", "best", "recipe") if k in st}, f"{out}.base.ckpt.pt")
    side, s = tile + 2 * halo, net.cfg.scale
    assert s == m["scale"], f"the base is {s}x, the model {m['scale']}x"
    ins, outs = [("lr", ["b", 3, side, side], "float32")], [("up", ["b", 3, s * tile, s * tile], "float32")]
    args = (torch.rand(2, 3, side, side) * 2 - 1,)
    if net.cfg.jq:
        ins.append(("jq", ["b"], "float32")); args += (torch.tensor([0.0, 0.25]),)
    path = Path(f"{out}.base.onnx")
    _export(BaseWindow(net, tile, halo).eval(), args, ins, outs, path)
    if net.cfg.jq and m.pop("restorer", None) is not None:   # the engine refuses both: a JPEG is read one way
        print(f"{m.get('name')}: the base is JPEG-aware, so the model's JPEG restorer is dropped (a JPEG's LR reaches the base as it is)")
    drop = {"base", "restore"} if net.cfg.jq else {"base"}
    m["graphs"] = [g for g in m["graphs"] if g["name"] not in drop] + [
        {"name": "base", "file": path.name, "inputs": [{"name": n, "shape": sh, "dtype": d} for n, sh, d in ins],
         "outputs": [{"name": n, "shape": sh, "dtype": d} for n, sh, d in outs]}]
    c = net.cfg
    macs = 9 * (4 if c.jq else 3) * c.dim + c.blocks * (9 * c.dim * c.dim + 9 * (c.dim // c.pooled) / CELL ** 2 + c.dim * c.dim
                                       + 9 * c.dim * int(c.dim * c.ffn) + int(c.dim * c.ffn) * c.dim) + 9 * c.dim * 3 * s * s
    m.setdefault("up", "bicubic")
    m["base"] = {
        "enabled": True, "graph": "base", "tile": tile, "halo": halo, "cell": CELL, **({"jq": True} if c.jq else {}),
        "doc": ("the base super-resolver (model/infdit/base.py): the LR is cut into a fixed grid of tile x tile tiles from its "
                "top-left corner, each run from a window of halo more pixels on every side (edge-replicated outside the "
                "image); a tile's output is the base's s*tile x s*tile pixels there, in [-1,1]. The viewer's preview is "
                "the base where it can be had; the transformer's up(LR) is the base only when \"up\" is \"base\""
                + ("; JPEG-aware (jq): it reads a JPEG upload's LR as it is, with jq = jpeg_level(quality) of the file "
                   "(0 for every other LR), and no restorer comes before it" if c.jq else "")),
        "architecture": {"kind": "SAFMN++ family (feature modulation over 8x8 max-pooled cells, convolutional channel mixer)",
                         **asdict(c), "receptive_radius": net.receptive_radius},
        "params": sum(p.numel() for p in net.parameters()),
        "flops_per_lr_pixel": int(2 * macs),
        "provenance": {"steps": st.get("step"), "minutes": round(st.get("spent", 0) / 60, 1), "val_psnr": st.get("best"),
                       **({"recipe": {k: v for k, v in st["recipe"].items() if k not in ("teacher", "ckpt", "data", "cmd", "resume")}}
                          if "recipe" in st else {}), **(notes or {})},
    }
    return m


def cmd_attach(a):
    mp = Path(a.manifest)
    notes = json.loads(Path(a.notes).read_text()) if a.notes else None
    m = attach(json.loads(mp.read_text()), mp.with_suffix(""), a.ckpt, notes)
    mp.write_text(json.dumps(m, indent=1))
    print(f"wrote {mp.with_suffix('')}.base.onnx and updated {mp}")


def cmd_measure(a):
    """The base alone against Lanczos3 on a split, as evaluate.py measures (the same crops, LR, PSNR,
    seams at 32/64/128 px, LR-pixel grid ratio, fine-detail energy): clean and JPEG q75 LR (through the
    released restorer, as the engine reads a JPEG's; a JPEG-aware base reads it raw with its level), at 4x, and at 16x the base applied twice (8-bit
    between, the cascade's rule). Seconds; no transformer. Prints a line per base and variant."""
    import io
    from measure import evaluate as ev
    from training.data import load_split, centre_crop, degrade
    nets = {Path(c).name if len(a.ckpt) == 1 else f"{i}:{Path(c).name}": load(c) for i, c in enumerate(a.ckpt)}
    restorer = restore.load(a.restorer)[0] if a.restorer else None
    S = a.scale
    cw, ch = (768, 512) if S == 16 else (512, 384)
    out = {}
    for variant in a.variants.split(","):
        rows = {}
        for entry, arr in load_split(a.data, a.split)[: a.limit or None]:
            gt = centre_crop(arr, cw, ch, 256 if S == 16 else 64)   # evaluate.py's crop, a smaller photo's too
            gw, gh = gt.shape[1], gt.shape[0]
            clean = ev.to_u8(degrade(torch.from_numpy(gt.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1, S))
            lr = clean
            if variant != "clean":
                q = int(variant[4:])
                buf = io.BytesIO(); Image.fromarray(clean).save(buf, format="JPEG", quality=q)
                lr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            seen = restore.restore_image(restorer, lr, q) if variant != "clean" and restorer is not None else lr
            outs = {"lanczos3": np.asarray(Image.fromarray(lr).resize((gw, gh), Image.LANCZOS))}
            for name, net in nets.items():
                # a JPEG-aware base reads the JPEG as it is, with its level; the others what the restorer gives
                raw = net.cfg.jq and variant != "clean"
                lr_t = torch.from_numpy((lr if raw else seen).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
                outs[name] = ev.to_u8(cascade(net, lr_t, 2 if S == 16 else 1, float(jpeg_level(q)) if raw else 0.0))
            for name, img in list(outs.items()) + [("ground_truth", gt)]:
                r = rows.setdefault(name, {"psnr": [], "seams": 0, "phases": 0, "fine": 0.0})
                if name != "ground_truth":
                    r["psnr"].append(ev.psnr(img, gt))
                r["seams"] = r["seams"] + np.stack([ev.seam_sums(img, p, S) for p in ev.PERIODS])
                r["phases"] = r["phases"] + ev.phase_sums(img, S)
                r["fine"] += ev.fine_power(img, S)
        g = rows["ground_truth"]
        ref = float(np.mean(rows["lanczos3"]["psnr"]))
        res = {}
        for name, r in rows.items():
            if name == "ground_truth":
                continue
            res[name] = {"psnr": float(np.mean(r["psnr"])), "vs_lanczos3": float(np.mean(r["psnr"])) - ref,
                         "seams": [float(ev.ratio(r["seams"][i]) / ev.ratio(g["seams"][i])) for i in range(len(ev.PERIODS))],
                         "grid": ev.grid_ratio(r["phases"]) / ev.grid_ratio(g["phases"]), "fine": r["fine"] / g["fine"],
                         "better_than_lanczos3": int(sum(p > q for p, q in zip(r["psnr"], rows["lanczos3"]["psnr"])))}
            print(f"{S}x {a.split} {variant:7s} {name:26s} PSNR {res[name]['psnr']:6.2f} dB ({res[name]['vs_lanczos3']:+.2f} vs Lanczos3, "
                  f"better on {res[name]['better_than_lanczos3']}/{len(r['psnr'])})  seams " + " / ".join(f"{v:.3f}" for v in res[name]["seams"])
                  + f"  grid {res[name]['grid']:.3f}  fine {res[name]['fine']:.3f}", flush=True)
        out[variant] = res
    if a.out:
        Path(a.out).write_text(json.dumps({"split": a.split, "scale": S, "ckpts": a.ckpt, "restorer": a.restorer, "results": out}, indent=1))


FIXTURE_TILE, FIXTURE_HALO = 32, 16


FIXTURE_JQ = 0.4   # jpegLevel(60): the level tiny-base-jq's reference is made at


def cmd_fixture(a):
    """test/fixtures/tiny-base.*: the tiny fixture's transformer over a tiny random base (up = "base"),
    the LR the tests use, and the base's reference output of it (float32 CHW, [-1,1]). --jq: tiny-base-jq.*,
    the same over a JPEG-aware tiny base, its reference at level FIXTURE_JQ of tiny-base.lr.png (standing in for a
    JPEG's LR)."""
    root = Path(__file__).resolve().parents[2] / "test/fixtures"
    name = "tiny-base-jq" if a.jq else "tiny-base"
    torch.manual_seed(1234)
    net = BaseNet(BaseConfig(dim=8, blocks=2, ffn=1.5, pooled=2, jq=a.jq))
    with torch.no_grad():     # a visible residual: the default init gives an output near the bilinear
        net.head.weight.mul_(4)
        if a.jq:              # and a level that visibly changes it
            net.stem.weight[:, 3].mul_(8)
    m = json.loads((root / "tiny.json").read_text())
    m["name"] = f"{name}-fixture"
    m = attach(m, root / name, net, {"data": "none: random weights (seed 1234)"}, FIXTURE_TILE, FIXTURE_HALO)
    m["up"] = "base"
    (root / f"{name}.json").write_text(json.dumps(m, indent=1))
    yy, xx = np.mgrid[0:44, 0:52]
    lr = np.stack([128 + 90 * np.sin(xx / (3 + c) + yy / 5) for c in range(3)], -1).round().astype(np.uint8)
    if not a.jq:    # tiny-base-jq reads the same LR
        Image.fromarray(lr).save(root / "tiny-base.lr.png")
    ref = tiled(net, lr, FIXTURE_TILE, FIXTURE_HALO, jq=FIXTURE_JQ if a.jq else 0.0) * 2 - 1
    (root / f"{name}.ref.bin").write_bytes(ref.contiguous().numpy().astype("<f4").tobytes())
    print(f"wrote {root}/{name}.* (LR {lr.shape[1]}x{lr.shape[0]}, reference {tuple(ref.shape)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("set5"); p.add_argument("--ckpt", required=True); p.add_argument("--size"); p.add_argument("--set5", required=True)
    p = sub.add_parser("halo"); p.add_argument("--ckpt", required=True); p.add_argument("--size"); p.add_argument("--data", default=".data")
    p.add_argument("--split", default="val"); p.add_argument("--n", type=int, default=6); p.add_argument("--tile", type=int, default=TILE)
    p.add_argument("--halos", default="8,16,24,32,40")
    p = sub.add_parser("distill", help="train a student of our own against a teacher checkpoint")
    p.add_argument("--teacher", required=True); p.add_argument("--data", default=".data"); p.add_argument("--ckpt", required=True)
    p.add_argument("--val-data", help="packed folder whose val split chooses the best checkpoint (default: --data); "
                   "keeps a run's figures comparable when it moves to more training photos")
    p.add_argument("--size", default="safmnpp", choices=sorted(SIZES)); p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--batch", type=int, default=16); p.add_argument("--crop", type=int, default=64, help="LR px a side")
    p.add_argument("--margin", type=int, default=8, help="LR px each side left out of the loss")
    p.add_argument("--lr", type=float, default=2e-3); p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--gt-weight", type=float, default=0.5); p.add_argument("--scale-aug", type=float, default=2.0)
    p.add_argument("--eval-every", type=float, default=6, help="minutes"); p.add_argument("--val-n", type=int, default=6)
    p.add_argument("--seed", type=int, default=0); p.add_argument("--resume", action="store_true")
    p.add_argument("--jpeg-share", type=float, default=0.0,
                   help="share of each batch whose LR is a JPEG (q 30-95) through --restorer, as the engine reads a JPEG upload")
    p.add_argument("--restorer", default=RESTORER)
    p.add_argument("--init", help="start from this base checkpoint (its size; --size is then ignored)")
    p.add_argument("--jq", action="store_true", help="a JPEG-aware student: the JPEG share's LR is the raw JPEG, read with its "
                   "level (no restorer); --init's stem gains a level channel that starts at zero")
    p.add_argument("--cpu-bf16", action="store_true", help="the student's step in bf16 autocast (1.47x per step, AVX-512 bf16 EPYC)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (bf16 autocast there)")
    p = sub.add_parser("attach", help="export a base checkpoint into an exported model (<name>.base.onnx, manifest \"base\")")
    p.add_argument("--ckpt", required=True); p.add_argument("--manifest", required=True)
    p.add_argument("--notes", help="JSON file of provenance notes (teacher, data, figures) for the manifest")
    p = sub.add_parser("fixture", help="test/fixtures/tiny-base.* (--jq: tiny-base-jq.*, a JPEG-aware base)")
    p.add_argument("--jq", action="store_true")
    p = sub.add_parser("measure", help="the base alone against Lanczos3 on a split (evaluate.py's measures), no transformer")
    p.add_argument("--ckpt", action="append", required=True, help="a base checkpoint or SAFMN++ .pth (repeat to compare)")
    p.add_argument("--data", default=".data"); p.add_argument("--split", default="val"); p.add_argument("--limit", type=int, default=0)
    p.add_argument("--scale", type=int, default=4, choices=(4, 16)); p.add_argument("--variants", default="clean,jpeg75")
    p.add_argument("--restorer", default=RESTORER); p.add_argument("--out")
    a = ap.parse_args()
    from training.train import all_cores   # here, not at the top: train imports this module
    torch.set_num_threads(all_cores())   # torch 1.13 here defaults to 1
    {"set5": cmd_set5, "halo": cmd_halo, "distill": cmd_distill, "attach": cmd_attach, "fixture": cmd_fixture, "measure": cmd_measure}[a.cmd](a)


if __name__ == "__main__":
    main()
