"""Real-world degradations for training (after Real-ESRGAN, Wang et al. 2021): what an uploaded
photo went through before it reached us, so the model learns to undo it instead of sharpening it.

All in torch on the training device, batched: per sample, blur widths, noise levels and JPEG
qualities; per batch, the intermediate resize factors (sizes must agree inside a batch). The
JPEG stage is a simulation of baseline JPEG (YCbCr, 4:2:0, 8×8 DCT, the standard tables scaled by
quality as libjpeg does), checked against Pillow's encoder in model/tests. The recipe (ranges and
probabilities) is RECIPE; train.py stores it in the checkpoint and export.py in the manifest.
"""
import math

import torch
import torch.nn.functional as F

RECIPE = {
    "mix": {"bicubic": 0.2, "bicubic+jpeg": 0.2, "second-order": 0.6},
    "bicubic": "4x antialiased bicubic (the clean case; must not get worse)",
    "bicubic+jpeg": {"jpeg_quality": [40, 95]},
    "second-order": {
        "order1": {"blur_p": 0.9, "blur_sigma": [0.2, 3.0], "aniso_p": 0.5, "resize": [0.3, 1.5],
                   "noise_p": 0.8, "noise_sigma_255": [1, 25], "gray_noise_p": 0.4, "jpeg_quality": [30, 95]},
        "order2": {"p": 0.8, "blur_p": 0.8, "blur_sigma": [0.2, 1.5], "aniso_p": 0.5, "resize": [0.3, 1.2],
                   "noise_p": 0.8, "noise_sigma_255": [1, 20], "gray_noise_p": 0.4, "jpeg_quality": [30, 95]},
        "final": "resize to exactly HR/4 (area, bilinear or bicubic at random), then JPEG",
    },
    "resize_modes": ["area", "bilinear", "bicubic"],
}

_LUMA_Q = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=torch.float32).view(8, 8)
_CHROMA_Q = torch.tensor([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=torch.float32).view(8, 8)


def _dct_matrix(device):
    k = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m   # orthonormal: X = M x Mᵀ


def _qtable(base, quality):
    """libjpeg's scaling of a standard table by quality 1..100, per sample: (n, 8, 8)."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    return ((base.to(q.device)[None] * scale[:, None, None] + 50) // 100).clamp(1, 255)


def jpeg(x, quality):
    """x: (n,3,H,W) in [0,1], quality: (n,) → x as a baseline JPEG at that quality would decode.
    H, W are padded to multiples of 16 by edge replication and cropped back."""
    n, _, H, W = x.shape
    ph, pw = (-H) % 16, (-W) % 16
    v = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255
    r, g, b = v[:, 0], v[:, 1], v[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    cb, cr = (F.avg_pool2d(c[:, None], 2)[:, 0] for c in (cb, cr))   # 4:2:0
    M = _dct_matrix(x.device)

    def code(ch, table):
        h, w = ch.shape[1:]
        blocks = (ch - 128).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
        coef = M @ blocks @ M.T
        qt = table[:, None, None]
        coef = torch.round(coef / qt) * qt
        return ((M.T @ coef @ M).permute(0, 1, 3, 2, 4).reshape(n, h, w)) + 128

    y = code(y, _qtable(_LUMA_Q, quality))
    cq = _qtable(_CHROMA_Q, quality)
    cb, cr = (F.interpolate(code(c, cq)[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0] for c in (cb, cr))
    out = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], 1)
    return (out.round().clamp(0, 255) / 255)[:, :, :H, :W]


def _rand(n, gen):
    """Uniform draws where the generator lives (a CUDA generator keeps them on the GPU)."""
    return torch.rand(n, generator=gen, device=gen.device)


def _uniform(n, lo, hi, gen, device):
    return (_rand(n, gen) * (hi - lo) + lo).to(device)


def blur(x, sig_lo, sig_hi, aniso_p, p, gen):
    """Per-sample Gaussian blur, isotropic or anisotropic (rotated); a sample skipped (p) keeps σ≈0."""
    n, dev = x.shape[0], x.device
    sx = _uniform(n, sig_lo, sig_hi, gen, dev)
    aniso = (_rand(n, gen) < aniso_p).to(dev)
    sy = torch.where(aniso, _uniform(n, sig_lo, sig_hi, gen, dev), sx)
    th = _uniform(n, 0, math.pi, gen, dev)
    on = (_rand(n, gen) < p).to(dev)
    sx, sy = torch.where(on, sx, torch.full_like(sx, 0.05)), torch.where(on, sy, torch.full_like(sy, 0.05))
    k = 2 * math.ceil(3 * sig_hi) + 1
    t = torch.arange(k, dtype=torch.float32, device=dev) - k // 2
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    c, s = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
    u, v = c * xx + s * yy, -s * xx + c * yy
    w = torch.exp(-0.5 * ((u / sx[:, None, None]) ** 2 + (v / sy[:, None, None]) ** 2))
    w = w / w.sum((1, 2), keepdim=True)
    xp = F.pad(x, (k // 2,) * 4, mode="reflect" if min(x.shape[2:]) > k // 2 else "replicate")
    out = F.conv2d(xp.reshape(1, n * 3, *xp.shape[2:]), w.repeat_interleave(3, 0)[:, None], groups=n * 3)
    return out.view(n, 3, *x.shape[2:])


def noise(x, lo, hi, gray_p, p, gen):
    n, dev = x.shape[0], x.device
    sig = _uniform(n, lo / 255, hi / 255, gen, dev) * (_rand(n, gen) < p).to(dev)
    gray = (_rand(n, gen) < gray_p).to(dev)
    e = torch.randn(x.shape, generator=gen, device=gen.device).to(dev)
    e = torch.where(gray[:, None, None, None], e[:, :1].expand_as(e), e)
    return (x + e * sig[:, None, None, None]).clamp(0, 1)


def resize(x, size, gen):
    mode = RECIPE["resize_modes"][int(_rand(1, gen) * 3) % 3]
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp(0, 1)


def second_order(hr01, scale, gen, with_quality=False):
    """hr01: (n,3,H,W) in [0,1] → LR (n,3,H/scale,W/scale) in [0,1]; with_quality: also the
    quality (n,) of the last JPEG, the one an uploaded file's quantisation tables would tell."""
    n, _, H, W = hr01.shape
    x = hr01
    for stage in ("order1", "order2"):
        r = RECIPE["second-order"][stage]
        if stage == "order2" and float(_rand(1, gen)) >= r["p"]:
            continue
        x = blur(x, *r["blur_sigma"], r["aniso_p"], r["blur_p"], gen)
        f = float(_uniform(1, *r["resize"], gen, "cpu"))
        # the intermediate size, relative to the HR, stays between the LR and the HR size
        h = max(H // scale, min(H, round(x.shape[2] * f))); w = max(W // scale, min(W, round(h * W / H)))
        x = resize(x, (h, w), gen)
        x = noise(x, *r["noise_sigma_255"], r["gray_noise_p"], r["noise_p"], gen)
        x = jpeg(x, _uniform(n, *r["jpeg_quality"], gen, x.device).round())
    x = resize(x, (H // scale, W // scale), gen)
    q = _uniform(n, *RECIPE["second-order"]["order2"]["jpeg_quality"], gen, x.device).round()
    return (jpeg(x, q), q) if with_quality else jpeg(x, q)


def degrade_mixed(hr, scale, bicubic, gen, with_quality=False):
    """hr in [-1,1]; `bicubic(hr)` the clean LR. Each sample: clean, clean+JPEG, or second-order.
    with_quality: also each sample's last JPEG quality (n,), 0 for the clean ones (no JPEG).
    The draws are the same either way, so a run with and one without see the same LR."""
    n = hr.shape[0]
    u = _rand(n, gen)
    m = RECIPE["mix"]
    clean = bicubic(hr)
    hr01 = (hr + 1) / 2
    q_jp = _uniform(n, *RECIPE["bicubic+jpeg"]["jpeg_quality"], gen, hr.device).round()
    jp = jpeg(((clean + 1) / 2).clamp(0, 1), q_jp) * 2 - 1
    so, q_so = second_order(hr01.clamp(0, 1), scale, gen, with_quality=True)
    so = so * 2 - 1
    pick = lambda t: t.to(hr.device)[:, None, None, None]
    a, b = m["bicubic"], m["bicubic"] + m["bicubic+jpeg"]
    lr = torch.where(pick(u < a), clean, torch.where(pick(u < b), jp, so)).clamp(-1, 1)
    if not with_quality:
        return lr
    u = u.to(hr.device)
    return lr, torch.where(u < a, torch.zeros_like(q_jp), torch.where(u < b, q_jp, q_so.to(hr.device)))
