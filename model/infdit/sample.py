"""The sampler, exactly as the TypeScript engine runs it (lib/sampler.ts, lib/rng.ts).

EDM Euler or Heun over a Karras σ schedule, starting from up(LR) + σ_max·ε as Inf-DiT does.
ε for block (r,c) comes from a counter-based generator keyed by (seed, stage, r, c, evaluation):
no shared RNG state, so results never depend on the order blocks are computed in.
"""
import math

import numpy as np
import torch

from infdit.network import upsample, to_blocks, from_blocks

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B1


def fmix32(h):
    """MurmurHash3's finaliser on uint32 numpy arrays (JS: Math.imul and >>> 0)."""
    h = h.astype(np.uint64)
    h ^= h >> 16; h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13; h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def block_key(seed, stage, r, c, n):
    k = np.array([seed & M32], dtype=np.uint64)
    for v in (stage, r, c, n):
        k = fmix32(((k ^ np.uint64(v & M32)) + GOLDEN) & M32)
    return int(k[0])


def block_noise(seed, stage, r, c, n, count):
    """count standard normals (float32) for one block: Box–Muller on hashed counters."""
    key = np.uint64(block_key(seed, stage, r, c, n))
    i = np.arange(count, dtype=np.uint64)
    a = fmix32((key + ((2 * i + 1) * GOLDEN & M32)) & M32)
    b = fmix32((key + ((2 * i + 2) * GOLDEN & M32)) & M32)
    u1 = (a.astype(np.float64) + 1.0) / 4294967297.0
    u2 = b.astype(np.float64) / 4294967296.0
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)).astype(np.float32)


def karras_sigmas(steps, sigma_min, sigma_max, rho=7.0):
    """σ_0 = σ_max … σ_{steps-1} = σ_min (one step: σ_max alone), then 0. Computed in float64."""
    if steps == 1:
        return [float(sigma_max), 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((a + i / (steps - 1) * (b - a)) ** rho) for i in range(steps)] + [0.0]


def evaluations(method, steps):
    return steps if method == "euler" else 2 * steps - 1


def initial_noise(R, C, block, seed, stage=1):
    out = torch.empty(R * C, 3, block, block)
    for r in range(R):
        for c in range(C):
            out[r * C + c] = torch.from_numpy(block_noise(seed, stage, r, c, 0, 3 * block * block)).view(3, block, block)
    return from_blocks(out, 1, R, C)


@torch.no_grad()
def sample_image(model, lr, method="euler", steps=1, sigma_min=0.002, sigma_max=4.0, rho=7.0, seed=0, stage=1,
                 denoise=None, jq=None, base_jq=0.0):
    """lr: (1,3,h,w) in [-1,1], h,w multiples of the LR block; jq: (1,) its jpeg_level (a jpeg_cond
    model); base_jq: the level a JPEG-aware base reads. Returns the HR image (1,3,H,W)."""
    cfg = model.cfg
    up = model.up_of(lr, base_jq=base_jq)
    denoise = denoise or (lambda x, s: model.forward_image(x, lr, torch.full((1,), s, device=lr.device), jq=jq, up=up))
    R, C = up.shape[2] // cfg.block, up.shape[3] // cfg.block
    sig = karras_sigmas(steps, sigma_min, sigma_max, rho)
    x = up + sig[0] * initial_noise(R, C, cfg.block, seed, stage).to(up.device)
    for i in range(steps):
        s0, s1 = sig[i], sig[i + 1]
        d = (x - denoise(x, s0)) / s0
        if method == "heun" and s1 > 0:
            x1 = x + (s1 - s0) * d
            d = 0.5 * (d + (x1 - denoise(x1, s1)) / s1)
        x = x + (s1 - s0) * d
    return x
