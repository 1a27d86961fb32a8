"""Inf-DiT: a pixel-space diffusion transformer with Unidirectional Block Attention (UniBA).

Yang et al., "Inf-DiT: Upsampling Any-Resolution Image with Memory-Efficient Diffusion
Transformer", ECCV 2024 (arXiv 2405.04312). Read top to bottom in the order data flows:
embedders, modulate, rotary positions, UniBA attention, nearby-LR cross-attention, the
DiT block, the final layer, EDM preconditioning, the model with its two forward paths,
and the table of named sizes at the bottom.

Three forward paths compute the same function:
- `forward_image`: all blocks of a crop at once (training). UniBA gathers each block's
  upper/left neighbours' K/V by shifting the block grid, so memory is linear in the area.
- `forward_blocks`: a batch of independent blocks plus their neighbours' K/V for every layer
  (one whole evaluation). Returns the denoised blocks and their own K/V for every layer.
- `layer_input` / `layer_step` / `layer_output`: the same evaluation one layer at a time
  (the exported ONNX graphs). UniBA's dependency is per layer: layer l of a block needs only
  its neighbours' layer-l K/V, which they project from their hidden state after layer l-1.
  So a block d steps away is needed only to depth L-d, and the engine's closure of a block
  is a cone, not its upper-left rectangle (DESIGN.md §2).

Border rule ("mask"): a neighbour slot that lies outside the image is masked out of the
softmax (the block attends to fewer keys). The same rule in both paths, in training and
inference, and written in the manifest.
"""
import math
from dataclasses import dataclass, asdict, field

import torch
import torch.nn as nn
import torch.nn.functional as F

SLOTS = ("self", "top", "left", "topleft")
NEG = -1e9  # additive logit for a masked key; exp underflows to exactly 0 in fp32


@dataclass
class InfDiTConfig:
    name: str = "infdit-s/8"
    scale: int = 4            # HR px per LR px
    block: int = 64           # HR block side in px (UniBA unit)
    patch: int = 8            # HR px per token side
    dim: int = 192
    depth: int = 8
    heads: int = 6
    mlp_ratio: float = 4.0
    lr_patch: int = 4         # LR px per token side in the nearby-LR context
    lr_cross_attn: bool = True
    global_cond: bool = False  # small encoder of an LR thumbnail added to the noise embedding
    thumb: int = 32           # thumbnail side for global conditioning
    jpeg_cond: bool = False   # the LR file's JPEG quality (jpeg_level) added to the noise embedding
    target: str = "residual"  # "residual": diffuse x - up(LR); "image": diffuse x itself
    up: str = "bicubic"       # up(LR): "bicubic", or "base" (model/infdit/base.py's super-resolver, kept in model.base)
    sigma_data: float = 0.5
    rope_base: float = 10000.0  # lowest frequency wavelength ≈ 2π·base tokens > 65,536 px / patch
    kv_pool: int = 1          # a neighbour's keys/values averaged over kv_pool² tokens (issue 41): 2 -> 448 keys a query, not 1,024

    @property
    def grid(self):  # tokens per block side
        return self.block // self.patch

    @property
    def tokens(self):
        return self.grid * self.grid

    @property
    def head_dim(self):
        return self.dim // self.heads

    @property
    def slot_tokens(self):
        """Keys each slot gives a query (SLOTS order): the block's own tokens, then each neighbour's, pooled."""
        return (self.tokens,) + (self.tokens // self.kv_pool ** 2,) * (len(SLOTS) - 1)

    @property
    def lr_block(self):
        return self.block // self.scale

    def to_dict(self):
        return asdict(self)


# --------------------------------------------------------------------------- embedders

def timestep_embedding(c_noise, dim, max_period=10000.0):
    """Sinusoidal features of the (continuous) noise level, DiT-style."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
    args = c_noise[:, None].float() * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class NoiseEmbedder(nn.Module):
    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise):
        return self.mlp(timestep_embedding(c_noise, self.freq_dim))


def jpeg_level(quality):
    """The JPEG condition the network sees: 0 for an LR that was never a JPEG (or quality 0 given
    for it), else (100 - quality) / 100 — q 100 is nearly lossless, so the scale starts at clean."""
    q = torch.as_tensor(quality, dtype=torch.float32)
    return torch.where(q > 0, (100 - q.clamp(1, 100)) / 100, torch.zeros_like(q))


class ThumbEncoder(nn.Module):
    """Global semantic conditioning: a small conv encoder of the whole LR image's thumbnail
    (our stand-in for the official CLIP image embedding)."""

    def __init__(self, dim, thumb):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.SiLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.SiLU())
        self.out = nn.Linear(128 * (thumb // 8) ** 2, dim)

    def forward(self, thumb):
        return self.out(self.net(thumb).flatten(1))


class FixedLayerNorm(nn.Module):
    """LayerNorm without learned affine. torch 1.13's ONNX exporter rejects weight=None, so the
    identity affine is passed explicitly as buffers."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.register_buffer("one", torch.ones(dim), persistent=False)
        self.register_buffer("zero", torch.zeros(dim), persistent=False)

    def forward(self, x):
        return layer_norm(x, (self.dim,), self.one, self.zero, self.eps)


def layer_norm(x, shape, weight, bias, eps):
    # torch 1.13's CPU autocast (bf16 training on this CPU, --cpu-bf16) leaves layer_norm out of its
    # float32 list and fails on bf16 input with float32 weights; on CUDA autocast normalises in float32
    # itself. Do the same here. Outside autocast (evaluation, ONNX export) this is plain F.layer_norm.
    if x.device.type == "cpu" and torch.is_autocast_cpu_enabled():
        x = x.float()
    return F.layer_norm(x, shape, weight, bias, eps)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state-dict keys) that normalises in float32 under CPU autocast."""

    def forward(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --------------------------------------------------------------------------- positions

def rope_tables(pos, cfg):
    """cos/sin tables for 2D rotary embedding on absolute token coordinates.

    pos: (n, 2) float, the token coordinate (row, col) of each block's top-left token.
    Returns cos, sin of shape (n, 1, T, head_dim/2): the first half of the rotated pairs
    follows the row coordinate, the second half the column.
    """
    g, dh = cfg.grid, cfg.head_dim
    quarter = dh // 4
    freqs = cfg.rope_base ** (-torch.arange(quarter, dtype=torch.float32, device=pos.device) / quarter)
    local = torch.arange(g, dtype=torch.float32, device=pos.device)
    rows = (pos[:, 0:1] + local[None]).reshape(-1, g, 1).expand(-1, g, g).reshape(-1, g * g)
    cols = (pos[:, 1:2] + local[None]).reshape(-1, 1, g).expand(-1, g, g).reshape(-1, g * g)
    ang = torch.cat([rows[..., None] * freqs, cols[..., None] * freqs], dim=-1)  # (n, T, dh/2)
    return torch.cos(ang).unsqueeze(1), torch.sin(ang).unsqueeze(1)


def apply_rope(x, cos, sin):
    """Rotate consecutive halves: x = [a, b] -> [a cos - b sin, a sin + b cos]."""
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


# --------------------------------------------------------------------------- attention

_SDPA = getattr(F, "scaled_dot_product_attention", None)  # torch 2.x; 1.13 and ONNX export use the plain form

# How the fused path (CUDA training) applies the key bias. "mask": as SDPA's attn_mask (torch 2.11 on an H200
# picks cuDNN's attention for it). "fold": as one more channel of the queries and keys ([q, 1] · [k; bias], as
# the plain path does for onnxruntime), padded to a multiple of 8, so no mask is passed and any kernel, flash
# too, may run. Same function either way (test_network). Measured (model/measure/speed.py, results/speed-h200.log):
# eager, batch 64, mask 190.3 crops/s, fold 178.2; the compiled batch-256 run, 590.7, used fold.
SDPA_BIAS = "mask"


def _sdpa_folded(q, k, v, bias):
    dh = q.shape[-1]
    scale = dh ** -0.5
    pad = (-(dh + 1)) % 8                       # flash wants the head dim a multiple of 8
    q1 = torch.cat([q, torch.ones_like(q[..., :1]), q.new_zeros(*q.shape[:-1], pad)], dim=-1)
    # SDPA scales q·k by `scale`: the bias channel is pre-divided so the logit gets exactly `bias`
    kb = (bias[:, :, 0, :, None] / scale).to(k.dtype).expand(-1, k.shape[1], -1, -1)       # (n,h,S,1)
    k1 = torch.cat([k, kb, k.new_zeros(*k.shape[:-1], pad)], dim=-1)
    v1 = F.pad(v, (0, pad + 1))
    return _SDPA(q1, k1, v1, scale=scale)[..., :dh]


def pool_tokens(t, grid, p):
    """(…, grid², dh) a block's tokens, row-major -> (…, (grid/p)², dh): the mean of each p×p group. A pooled
    neighbour key stands for p² keys; the attention adds ln p² to its logit (InfDiT._bias), so p² equal keys
    pooled give exactly the softmax they gave unpooled."""
    if p == 1:
        return t
    *lead, _, dh = t.shape
    g = grid // p
    return t.reshape(*lead, g, p, g, p, dh).mean(dim=(-4, -2)).reshape(*lead, g * g, dh)


def attend(q, k, v, bias, kt=None, fused=None):
    """Softmax attention with an additive key bias. q (n,h,T,dh), k/v (n,h,S,dh), bias (n,1,1,S), or None
    (no bias: every key open); or kt (n,h,dh,S): the keys already transposed (see UniBAttention.mix).
    fused: torch 2.x's scaled_dot_product_attention (default: on CUDA, where training runs; the test
    compares the two on CPU)."""
    if fused is None:
        fused = _SDPA is not None and q.is_cuda
    if fused:
        k = k if k is not None else kt.transpose(-1, -2)
        if bias is None:
            return _SDPA(q, k, v)
        if SDPA_BIAS == "fold":
            return _sdpa_folded(q, k, v, bias)
        # attn_mask must be q's dtype and, for the memory-efficient kernel, contiguous in its last dimension
        return _SDPA(q, k, v, attn_mask=bias.to(q.dtype))
    q = q * (q.shape[-1] ** -0.5)
    if kt is None:
        logits = torch.matmul(q, k.transpose(-1, -2))
        return torch.matmul(torch.softmax(logits if bias is None else logits + bias, dim=-1), v)
    # The logits (T × S per head) are the largest tensor of a layer; on CPU every pass over them
    # costs memory bandwidth, not arithmetic (bench/graphs.ts --profile: the scale's Mul, then the
    # bias's Add, each a third of a layer graph's time). So q is scaled instead of the logits,
    # and the bias rides in the matmul as one more channel: [q, 1] · [kᵀ; bias].
    q1 = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)
    kt1 = torch.cat([kt, bias.expand(-1, kt.shape[1], -1, -1)], dim=-2)
    # One head at a time: the logits of one head (T × S a block) instead of all at once, so the
    # largest tensor of the graph is a sixth as large (resident memory) and stays nearer the cache.
    return torch.cat([torch.matmul(torch.softmax(torch.matmul(q1[:, i:i + 1], kt1[:, i:i + 1]), dim=-1), v[:, i:i + 1])
                      for i in range(q.shape[1])], dim=1)


class UniBAttention(nn.Module):
    """Unidirectional Block Attention: the queries of block (r,c) attend to the keys/values of
    (r,c), (r-1,c), (r,c-1), (r-1,c-1). Keys are LayerNormed (their own norm, not the query's),
    rotated by their absolute positions, then shifted by a learned per-slot embedding
    ("re-position") when consumed. The cached K is post-norm, post-rotary, pre-slot."""

    def __init__(self, cfg):
        super().__init__()
        self.h, self.dh = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.q_norm = LayerNorm(self.dh, eps=1e-6)
        self.k_norm = LayerNorm(self.dh, eps=1e-6)
        self.slot = nn.Parameter(torch.zeros(len(SLOTS), self.h, 1, self.dh))
        self.grid, self.pool, self.slot_tokens = cfg.grid, cfg.kv_pool, cfg.slot_tokens
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ort_attention = None   # set by model/infdit/export.py only: see mix4

    def q_own(self, x, cos, sin):
        """The queries alone (the layer step gets its own K/V from the step before)."""
        n, t, _ = x.shape
        d = self.h * self.dh
        q = F.linear(x, self.qkv.weight[:d], self.qkv.bias[:d]).reshape(n, t, self.h, self.dh).transpose(1, 2)
        return apply_rope(self.q_norm(q), cos, sin)

    def kv_own(self, x, cos, sin):
        """Keys and values alone, (n, 2, h, T, dh): what the block's neighbours consume."""
        n, t, _ = x.shape
        d = self.h * self.dh
        kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).reshape(n, t, 2, self.h, self.dh).permute(0, 2, 3, 1, 4)
        return torch.stack([apply_rope(self.k_norm(kv[:, 0]), cos, sin), kv[:, 1]], dim=1)

    def qkv_own(self, x, cos, sin):
        n, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        return q, k, v

    def mix(self, q, keys, values, bias):
        """keys/values: lists of 4 tensors (n,h,T,dh) in SLOTS order."""
        return self.mix4(q, torch.cat(keys, dim=2), torch.cat(values, dim=2), bias)

    def pool_neighbours(self, t4):
        """(n,h,4T,dh), the four slots whole -> (n,h,T + 3T/kv_pool²,dh): the own slot whole, the neighbours pooled."""
        n, h, _, dh = t4.shape
        T = self.slot_tokens[0]
        nbs = pool_tokens(t4[:, :, T:].reshape(n, h, len(SLOTS) - 1, T, dh), self.grid, self.pool)
        return torch.cat([t4[:, :, :T], nbs.reshape(n, h, -1, dh)], dim=2)

    def mix4(self, q, k4, v4, bias):
        """k4/v4: (n,h,4T,dh), the four slots' keys/values already side by side (SLOTS order), each whole: with
        kv_pool the neighbours' are pooled here (in the graph: the engine hands every slot whole), T + 3T/kv_pool²
        keys. The layer graphs take them so: splitting and concatenating the slots inside the graph was a fifth of
        a layer's time in onnxruntime (bench/graphs.ts --profile)."""
        if self.pool == 1:   # (release 5's graphs' form)
            t = k4.shape[2] // len(SLOTS)
            slot = self.slot.transpose(0, 1).expand(-1, -1, t, -1).reshape(1, self.h, len(SLOTS) * t, self.dh)
        else:
            k4, v4 = self.pool_neighbours(k4), self.pool_neighbours(v4)
            slot = torch.cat([self.slot[i].expand(-1, t, -1) for i, t in enumerate(self.slot_tokens)], dim=1)[None]   # (1,h,S,dh)
        if self.ort_attention is not None:
            assert self.pool == 1, "the fused op takes a key mask only: a pooled model's ln kv_pool² needs the plain form"
            # The export's form (model/infdit/export.py: onnxruntime's MultiHeadAttention, one kernel for the scores,
            # the softmax and the weighted sum): queries (n, T, h·dh), keys and values as they come, a missing
            # neighbour's keys closed by a mask instead of the bias. bench/layer-forms.ts: a layer 1-10% faster.
            n, h, tq, dh = q.shape
            keep = (bias[:, 0, 0, :] == 0).to(torch.int32)
            return self.proj(self.ort_attention(q.transpose(1, 2).reshape(n, tq, h * dh), k4 + slot, v4, keep))
        # keys transposed before the concatenation inside attend(): onnxruntime fuses a Transpose that
        # feeds a MatMul into a FusedMatMul that ran 20× slower than the plain MatMul of the same size
        o = attend(q, None, v4, bias, kt=(k4 + slot).transpose(-1, -2))
        n, h, tq, dh = o.shape
        return self.proj(o.transpose(1, 2).reshape(n, tq, h * dh))


class NearbyLRCrossAttention(nn.Module):
    """Each block's tokens attend to the tokens of its 3×3 neighbourhood of LR blocks."""

    def __init__(self, cfg):
        super().__init__()
        self.h, self.dh = cfg.heads, cfg.head_dim
        n_ctx = (3 * cfg.lr_block // cfg.lr_patch) ** 2
        self.lr_patch = cfg.lr_patch
        self.embed = nn.Linear(3 * cfg.lr_patch ** 2, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(1, n_ctx, cfg.dim))
        self.norm_x = FixedLayerNorm(cfg.dim)
        self.norm_ctx = FixedLayerNorm(cfg.dim)
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.q_norm = LayerNorm(self.dh, eps=1e-6)
        self.k_norm = LayerNorm(self.dh, eps=1e-6)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ort_attention = None   # set by model/infdit/export.py only, as UniBAttention.ort_attention

    def forward(self, x, lr_ctx):
        n, t, d = x.shape
        c = self.embed(patchify(lr_ctx, self.lr_patch)) + self.pos
        c = self.norm_ctx(c)
        s = c.shape[1]
        q = self.q_norm(self.q(self.norm_x(x)).reshape(n, t, self.h, self.dh).transpose(1, 2))
        k, v = self.kv(c).reshape(n, s, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)
        if self.ort_attention is not None:
            return self.proj(self.ort_attention(q.transpose(1, 2).reshape(n, t, d), self.k_norm(k), v, None))
        o = attend(q, self.k_norm(k), v, None)   # every LR token open (no mask: SDPA may use flash)
        return self.proj(o.transpose(1, 2).reshape(n, t, d))


class DiTBlock(nn.Module):
    def __init__(self, cfg, cross):
        super().__init__()
        d = cfg.dim
        self.norm1, self.norm2 = FixedLayerNorm(d), FixedLayerNorm(d)
        self.attn = UniBAttention(cfg)
        self.cross = NearbyLRCrossAttention(cfg) if cross else None
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))


class FinalLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = FixedLayerNorm(cfg.dim)
        self.linear = nn.Linear(cfg.dim, cfg.patch * cfg.patch * 3)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def patchify(img, p):
    """(n, C, H, W) -> (n, (H/p)(W/p), C·p·p), tokens in raster order."""
    n, ch, hh, ww = img.shape
    x = img.reshape(n, ch, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (hh // p) * (ww // p), ch * p * p)


def unpatchify(x, p, g):
    n = x.shape[0]
    x = x.reshape(n, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, 3, g * p, g * p)


# --------------------------------------------------------------------------- EDM

def edm_scalings(sigma, sigma_data):
    s2, d2 = sigma ** 2, sigma_data ** 2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + d2)
    c_in = 1.0 / torch.sqrt(s2 + d2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


# --------------------------------------------------------------------------- the model

class InfDiT(nn.Module):
    def __init__(self, cfg: InfDiTConfig):
        super().__init__()
        assert cfg.block % cfg.patch == 0 and cfg.block % cfg.scale == 0
        assert cfg.dim % cfg.heads == 0 and cfg.head_dim % 4 == 0
        assert (3 * cfg.lr_block) % cfg.lr_patch == 0
        self.cfg = cfg
        self.x_embedder = nn.Linear(6 * cfg.patch ** 2, cfg.dim)
        self.t_embedder = NoiseEmbedder(cfg.dim)
        self.g_embedder = ThumbEncoder(cfg.dim, cfg.thumb) if cfg.global_cond else None
        self.q_embedder = NoiseEmbedder(cfg.dim) if cfg.jpeg_cond else None
        self.blocks = nn.ModuleList([DiTBlock(cfg, cross=(i == 0 and cfg.lr_cross_attn)) for i in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)
        self.base = None   # attach_base: not a submodule, so never trained, averaged or in state_dict
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's recipe: xavier linears, adaLN-Zero (every residual branch starts closed)."""
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.q_embedder is not None:
            # closed at the start: added to a trained model, it leaves that model's output unchanged
            nn.init.normal_(self.q_embedder.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.q_embedder.mlp[2].weight)
        for b in self.blocks:
            nn.init.zeros_(b.adaLN_modulation[-1].weight)
            nn.init.zeros_(b.adaLN_modulation[-1].bias)
            if b.cross is not None:
                nn.init.normal_(b.cross.pos, std=0.02)
                nn.init.zeros_(b.cross.proj.weight)  # cross-attention also starts closed
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @torch.no_grad()
    def randomize_(self, seed=0, std=0.1):
        """Random weights everywhere (tests and the fixture): a zero-initialised model would
        hide wiring mistakes, since its closed branches pass nothing between blocks."""
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if p.dim() == 1 and p.shape[0] == self.cfg.head_dim else 0.0))
        return self

    # -- shared per-block pieces --------------------------------------------------------
    def _condition(self, sigma, thumb, jq=None):
        """jq: (b,) jpeg_level of the LR (a jpeg_cond model; None: 0, never a JPEG)."""
        cfg = self.cfg
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, cfg.sigma_data)
        c = self.t_embedder(c_noise)
        if self.g_embedder is not None:
            c = c + self.g_embedder(thumb)
        if self.q_embedder is not None:
            c = c + self.q_embedder(jq if jq is not None else torch.zeros_like(sigma))
        return c_skip, c_out, c_in, c

    def _embed(self, x, up, c_in):
        """x, up: (n,3,B,B) per block. Returns tokens and the state the network diffuses."""
        state = x - up if self.cfg.target == "residual" else x
        inp = torch.cat([state * c_in[:, None, None, None], up], dim=1)
        return self.x_embedder(patchify(inp, self.cfg.patch)), state

    def _output(self, h, c, state, up, c_skip, c_out):
        f = unpatchify(self.final_layer(h, c), self.cfg.patch, self.cfg.grid)
        d = c_skip[:, None, None, None] * state + c_out[:, None, None, None] * f
        return up + d if self.cfg.target == "residual" else d

    def _layer(self, blk, h, c, lr_ctx, attn_fn):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = blk.adaLN_modulation(c).chunk(6, dim=1)
        h = h + gate_msa.unsqueeze(1) * attn_fn(modulate(blk.norm1(h), shift_msa, scale_msa))
        if blk.cross is not None:
            h = h + blk.cross(h, lr_ctx)
        h = h + gate_mlp.unsqueeze(1) * blk.mlp(modulate(blk.norm2(h), shift_mlp, scale_mlp))
        return h

    def _bias(self, present):
        """Additive key bias (b,1,1,S): the self slot always open, a missing neighbour masked, a present one's
        pooled keys ln kv_pool² (each stands for that many)."""
        if self.cfg.kv_pool == 1:   # (the released graphs' form)
            bias = torch.cat([torch.zeros_like(present[:, :1]), (1.0 - present) * NEG], dim=1)              # (b,4)
            return bias[:, :, None].expand(-1, -1, self.cfg.tokens).reshape(-1, 1, 1, 4 * self.cfg.tokens)
        open_ = 2 * math.log(self.cfg.kv_pool)
        bias = torch.cat([torch.zeros_like(present[:, :1]), (1.0 - present) * NEG + present * open_], dim=1)   # (b,4)
        return torch.cat([bias[:, i:i + 1].expand(-1, t) for i, t in enumerate(self.cfg.slot_tokens)], dim=1)[:, None, None, :]

    # -- path 2: a batch of blocks with their neighbours' K/V (one whole evaluation) --------
    def forward_blocks(self, x, up, lr_ctx, sigma, pos, kv_nb, present, thumb=None, jq=None):
        """x, up: (b,3,B,B) noisy block and bicubic-upsampled LR block, in [-1,1] units.
        lr_ctx: (b,3,3B/s,3B/s) the 3×3 LR-block neighbourhood, edge-replicated.
        sigma: (b,). pos: (b,2) token coordinate of the block's top-left token (row, col).
        kv_nb: (b,3,L,2,h,T,dh) K/V of the top, left, top-left neighbours (any values where absent).
        present: (b,3) 1.0 where the neighbour exists, 0.0 where masked.
        Returns denoised (b,3,B,B) and the blocks' own K/V (b,L,2,h,T,dh)."""
        cfg = self.cfg
        c_skip, c_out, c_in, c = self._condition(sigma, thumb, jq)
        h, state = self._embed(x, up, c_in)
        cos, sin = rope_tables(pos, cfg)
        bias = self._bias(present)
        own = []
        for li, blk in enumerate(self.blocks):
            def attn_fn(y, blk=blk, li=li):
                q, k, v = blk.attn.qkv_own(y, cos, sin)
                own.append(torch.stack([k, v], dim=1))
                keys = [k] + [kv_nb[:, s, li, 0] for s in range(3)]
                vals = [v] + [kv_nb[:, s, li, 1] for s in range(3)]
                return blk.attn.mix(q, keys, vals, bias)
            h = self._layer(blk, h, c, lr_ctx, attn_fn)
        out = self._output(h, c, state, up, c_skip, c_out)
        return out, torch.stack(own, dim=1)

    # -- path 3: one layer at a time (the exported graphs) -------------------------------
    def _kv_for(self, li, h, c, cos, sin):
        """Layer li's K/V of a block, from its hidden state before layer li."""
        blk, d = self.blocks[li], self.cfg.dim
        lin = blk.adaLN_modulation[-1]   # only shift_msa, scale_msa: the graph then holds 2 of its 6 chunks
        shift, scale = F.linear(F.silu(c), lin.weight[:2 * d], lin.bias[:2 * d]).chunk(2, dim=1)
        return blk.attn.kv_own(modulate(blk.norm1(h), shift, scale), cos, sin)

    def layer_input(self, x, up, sigma, pos, thumb=None, jq=None):
        """Depth 0: tokens h0 (b,T,dim), the conditioning vector c (b,dim), layer 0's K/V."""
        c_skip, c_out, c_in, c = self._condition(sigma, thumb, jq)
        h, _ = self._embed(x, up, c_in)
        cos, sin = rope_tables(pos, self.cfg)
        return h, c, self._kv_for(0, h, c, cos, sin)

    def layer_step(self, li, h, c, pos, k4, v4, present, lr_ctx=None):
        """Layer li: h before it and the layer-li keys and values of the block and its neighbours,
        side by side, (b,h,4T,dh) each (self, top, left, top-left: the block's own K/V (b,2,h,T,dh)
        is [k, v] of slot 0) -> h after it, and layer li+1's own K/V (None after the last layer)."""
        blk = self.blocks[li]
        cos, sin = rope_tables(pos, self.cfg)
        bias = self._bias(present)

        def attn_fn(y):
            return blk.attn.mix4(blk.attn.q_own(y, cos, sin), k4, v4, bias)
        h = self._layer(blk, h, c, lr_ctx, attn_fn)
        nxt = self._kv_for(li + 1, h, c, cos, sin) if li + 1 < self.cfg.depth else None
        return h, nxt

    def layer_output(self, h, c, x, up, sigma):
        """After the last layer: the denoised block."""
        c_skip, c_out, _, _ = edm_scalings(sigma, self.cfg.sigma_data)
        state = x - up if self.cfg.target == "residual" else x
        return self._output(h, c, state, up, c_skip, c_out)

    def attach_base(self, net):
        """The base super-resolver this model refines (cfg.up "base"); frozen, kept outside the parameters."""
        object.__setattr__(self, "base", net.eval().requires_grad_(False))
        return self

    def up_of(self, lr, crops=False, base_jq=0.0):
        """up(LR) in [-1,1]: PyTorch's bicubic, or (cfg.up "base") the base super-resolver, on its canonical
        tile grid as the engine runs it, or (crops=True, training) one edge-padded window per crop.
        base_jq: the LR's JPEG level, which a JPEG-aware base reads (stage 1 of a JPEG upload)."""
        if self.cfg.up == "bicubic":
            return upsample(lr, self.cfg.scale)
        if self.base is None:
            raise RuntimeError("this model was trained over a base super-resolver but none is attached (model.base)")
        from infdit import base
        return base.crop_up(self.base, lr, jq=base_jq) if crops else base.tiled_tensor(self.base, lr, jq=base_jq)

    # -- path 1: all blocks of whole images (training) --------------------------------
    def forward_image(self, x, lr, sigma, pos0=None, thumb=None, independent=False, jq=None, up=None):
        """x: (N,3,H,W) noisy HR, lr: (N,3,H/s,W/s) LR, sigma: (N,), pos0: (N,2) token offset of
        the crop's top-left (default 0). H, W multiples of the block size. Returns D(x;σ).
        independent=True masks every neighbour (the seam ablation: blocks see only their LR context).
        jq: (N,) jpeg_level of each LR (a jpeg_cond model). up: up(LR) when the caller has it (default up_of(lr))."""
        cfg = self.cfg
        n, _, hh, ww = x.shape
        bs, R, C = cfg.block, hh // cfg.block, ww // cfg.block
        # thumb: (N,3,t,t) global-conditioning input; default: thumbnail(lr)
        up = self.up_of(lr) if up is None else up
        xb, ub = to_blocks(x, bs), to_blocks(up, bs)                        # (N·R·C,3,B,B)
        ctx = lr_contexts(lr, cfg.lr_block)                                  # (N·R·C,3,3b,3b)
        nb = n * R * C
        rep = lambda t: t.repeat_interleave(R * C, dim=0)
        sig = rep(sigma)
        if self.g_embedder is not None and thumb is None:
            thumb = thumbnail(lr, cfg.thumb)
        th = rep(thumb) if thumb is not None else None
        if pos0 is None:
            pos0 = torch.zeros(n, 2, device=x.device)
        rr, cc = torch.meshgrid(torch.arange(R, device=x.device), torch.arange(C, device=x.device), indexing="ij")
        grid_pos = torch.stack([rr, cc], -1).reshape(1, R * C, 2).float() * cfg.grid
        pos = (pos0[:, None, :] + grid_pos).reshape(nb, 2)
        c_skip, c_out, c_in, c = self._condition(sig, th, rep(jq) if jq is not None else None)
        h, state = self._embed(xb, ub, c_in)
        cos, sin = rope_tables(pos, cfg)
        pres = torch.stack([(rr > 0), (cc > 0), (rr > 0) & (cc > 0)], -1).float().reshape(1, R * C, 3)
        if independent:
            pres = torch.zeros_like(pres)
        bias = self._bias(pres.expand(n, -1, -1).reshape(nb, 3))

        def neighbours(t):
            """(nb,h,T,dh) -> top, left, topleft, by shifting the block grid (zeros outside)."""
            g = t.reshape(n, R, C, *t.shape[1:])
            g = F.pad(g.reshape(n, R, C, -1).permute(0, 3, 1, 2), (1, 0, 1, 0)).permute(0, 2, 3, 1)
            g = g.reshape(n, R + 1, C + 1, *t.shape[1:])
            top, left, tl = g[:, :-1, 1:], g[:, 1:, :-1], g[:, :-1, :-1]
            return [z.reshape(t.shape) for z in (top, left, tl)]

        for blk in self.blocks:
            def attn_fn(y, blk=blk):
                q, k, v = blk.attn.qkv_own(y, cos, sin)
                return blk.attn.mix(q, [k] + neighbours(k), [v] + neighbours(v), bias)
            h = self._layer(blk, h, c, ctx, attn_fn)
        out = self._output(h, c, state, ub, c_skip, c_out)
        return from_blocks(out, n, R, C)


# --------------------------------------------------------------------------- image <-> blocks

def to_8bit(t):
    """Pixels in [-1,1] rounded to the 256 values the engine's 8-bit pixels take (an LR the engine reads)."""
    return torch.round((t.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def upsample(lr, scale):
    """The bicubic upsample both paths and the engine agree on: PyTorch's bicubic
    (a = -0.75, half-pixel centres, edge-clamped), which lib/ reimplements exactly."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def line_steps(t, dim, lines):
    """The steps between pixel i-1 and i along `dim` for each i in `lines` (a 1-D index tensor)."""
    return t.index_select(dim, lines) - t.index_select(dim, lines - 1)


def grid_loss(out, target, period, per_sample=False):
    """Squared error of the steps across the lines every `period` px from the crop's corner (both
    directions): where an encoder's blocks (JPEG, 8 px) or the model's own blocks meet. The error a
    visible grid is made of, and one that pixel MSE, averaged over the whole crop, weighs little.
    per_sample: one value per image (n,) instead of the batch mean."""
    loss = 0
    for dim in (-1, -2):
        lines = torch.arange(period, out.shape[dim], period, device=out.device)
        loss = loss + ((line_steps(out, dim, lines) - line_steps(target, dim, lines)) ** 2).flatten(1).mean(1)
    return loss if per_sample else loss.mean()


def seam_excess_loss(out, target, period, scale):
    """(log of the seam ratio)²: the batch's mean |step| across the lines every `period` px over that
    across the other lines of phase 0 mod `scale` (the LR pixel grid), output over target — evaluate.py's
    seam ratio, pooled over the batch, both directions. Unlike grid_loss it can be met by sharpening the
    other lines as well as by softening the boundaries."""
    def ratio(t):
        return mean_steps(t, lambda i: i % period == 0) / mean_steps(t, lambda i: (i % scale == 0) & (i % period != 0))
    return torch.log(ratio(out) / ratio(target)) ** 2


def mean_steps(t, which):
    """The mean |step| across the lines i (between pixel i-1 and i, from the crop's corner) for which
    which(i) holds, per direction, summed over the two directions."""
    s = 0
    for dim in (-1, -2):
        idx = torch.arange(1, t.shape[dim], device=t.device)
        s = s + line_steps(t, dim, idx[which(idx)]).abs().mean()
    return s


def phase_profile(t, period):
    """The mean |step| across the lines of each phase i mod `period` (the line between pixel i-1 and i,
    counted from the crop's corner), both directions and every channel pooled over the batch, over
    the mean of all phases: (period,). Flat for a photo; one phase standing out is a staircase."""
    m = torch.stack([mean_steps(t, lambda i, p=p: i % period == p) for p in range(period)]) + 1e-6   # a phase without any step (a perfect staircase) keeps a finite log and gradient
    return m / m.mean()


def phase_loss(out, target, period):
    """Σ over the phases of (log of the output's phase profile over the target's)²: zero when each
    phase of the LR-pixel grid is as sharp, relative to the others, as in the photo. A staircase of
    period-px squares (evaluate.py's grid ratio) costs, and so does its opposite; like the seam
    ratio it can be met by sharpening the other phases as well as by softening the one that stands out."""
    return ((torch.log(phase_profile(out, period)) - torch.log(phase_profile(target, period))) ** 2).sum()


def to_blocks(img, b):
    n, ch, hh, ww = img.shape
    R, C = hh // b, ww // b
    return img.reshape(n, ch, R, b, C, b).permute(0, 2, 4, 1, 3, 5).reshape(n * R * C, ch, b, b)


def from_blocks(blocks, n, R, C):
    ch, b = blocks.shape[1], blocks.shape[2]
    return blocks.reshape(n, R, C, ch, b, b).permute(0, 3, 1, 4, 2, 5).reshape(n, ch, R * b, C * b)


def thumbnail(lr, size):
    """The global-conditioning input: the whole LR image average-pooled to size×size (PyTorch's
    adaptive bins: rows floor(i·H/n) … ceil((i+1)·H/n)); lib/thumb.ts computes the same."""
    return F.adaptive_avg_pool2d(lr, size)


def lr_contexts(lr, lb):
    """The 3×3 LR-block neighbourhood of every block, edge-replicated at the border."""
    n, ch, hh, ww = lr.shape
    p = F.pad(lr, (lb, lb, lb, lb), mode="replicate")
    u = F.unfold(p, kernel_size=3 * lb, stride=lb)                        # (n, ch·9lb², R·C)
    R, C = hh // lb, ww // lb
    return u.transpose(1, 2).reshape(n * R * C, ch, 3 * lb, 3 * lb)


# --------------------------------------------------------------------------- named sizes

def _cfg(name, **kw):
    return InfDiTConfig(name=name, **kw)


CONFIGS = {
    "infdit-tiny/8": _cfg("infdit-tiny/8", block=32, patch=8, dim=32, depth=2, heads=2, lr_patch=4),
    "infdit-xs/8": _cfg("infdit-xs/8", patch=8, dim=128, depth=6, heads=4),
    "infdit-s/8": _cfg("infdit-s/8", patch=8, dim=192, depth=8, heads=6),
    "infdit-s/4": _cfg("infdit-s/4", patch=4, dim=192, depth=8, heads=6),
    "infdit-b/4": _cfg("infdit-b/4", patch=4, dim=384, depth=12, heads=6),
    # The official model, for reference and for a future weight converter (GPU only).
    "infdit-xl/4": _cfg("infdit-xl/4", block=128, patch=4, dim=1280, depth=28, heads=16, target="image"),
}


def make_config(name, **overrides):
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    d = CONFIGS[name].to_dict()
    d.update(overrides)
    return InfDiTConfig(**d)
