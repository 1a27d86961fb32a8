"""Train Inf-DiT on degraded photo crops with EDM. Resumable; the same script on CPU and GPU.

    /usr/bin/python3 model/training/train.py --config infdit-s/4 --data .data --ckpt runs/s4 [--resume] [--minutes 30]

Prints one line every --log-every steps. Writes --ckpt/last.pt (model, EMA, optimizer, step,
config) every --save-every seconds and at the end; --resume continues from it (the learning
rate schedule is per step, so a resumed run picks up where it stopped).
"""
import argparse, contextlib, io, json, math, os, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit import network
from infdit.network import InfDiT, make_config, InfDiTConfig, upsample, jpeg_level, grid_loss, seam_excess_loss, phase_loss, to_8bit
from infdit.base import state_of as base_state, from_state as base_from_state, load as load_base, crop_up as base_crop_up
from training.data import load_split, CropSampler, degrade
from training.degrade import RECIPE


def sample_sigma(n, a, gen, device):
    """EDM log-normal σ around the data's scale, plus a share exactly at σ_max: there the
    denoiser's output is the regression E[x0 | LR] that the one-evaluation 'fidelity' sampler uses."""
    ln = torch.randn(n, generator=gen) * a.p_std + math.log(a.sigma_data) + a.p_mean_offset
    s = ln.exp().clamp(a.sigma_min, a.sigma_max)
    at_max = torch.rand(n, generator=gen) < a.p_sigma_max
    return torch.where(at_max, torch.full_like(s, a.sigma_max), s).to(device)


def parse_mix(text):
    """'bicubic=0.3,bicubic+jpeg=0.4,second-order=0.3' -> shares (must name all three, sum to 1)."""
    want = set(RECIPE["mix"])
    try:
        mix = {k.strip(): float(v) for k, v in (kv.split("=") for kv in text.split(","))}
    except ValueError:
        raise SystemExit(f"--mix {text!r}: expected name=share pairs separated by commas, names {sorted(want)}")
    if set(mix) != want or any(v < 0 for v in mix.values()) or abs(sum(mix.values()) - 1) > 1e-6:
        raise SystemExit(f"--mix {text!r}: give each of {sorted(want)} a share ≥ 0, the shares summing to 1")
    return mix


def save_parts(obj, path, part_mb=15):
    """torch.save, split into ≤ part_mb files when large (so it can travel back from a device run)."""
    buf = io.BytesIO(); torch.save(obj, buf); b = buf.getvalue()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(path.name + ".part*"):
        old.unlink()
    step = part_mb << 20
    if len(b) <= step:
        tmp = path.with_suffix(".tmp"); tmp.write_bytes(b); os.replace(tmp, path); return
    for i in range(0, len(b), step):
        Path(f"{path}.part{i // step:02d}").write_bytes(b[i:i + step])
    if path.exists():
        path.unlink()


def load_parts(path, map_location="cpu"):
    path = Path(path)
    if path.exists():
        return torch.load(path, map_location=map_location)
    parts = sorted(path.parent.glob(path.name + ".part*"))
    if not parts:
        raise FileNotFoundError(f"no checkpoint at {path} (nor {path}.partNN)")
    return torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location=map_location)


SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")   # --sdpa-backend; auto: torch chooses
ATTN_BIASES = ("mask", "fold")                                     # --attn-bias: network.SDPA_BIAS


def all_cores():
    """Every core this process may use. Debian's torch 1.13 starts with 1 thread on this 2-core machine,
    so every script sets this itself."""
    return len(os.sched_getaffinity(0))


def load_ema(path, device="cpu"):
    """The averaged weights of a checkpoint (whole or in parts) as a model in eval mode (with the base it
    was trained over, if any), and the checkpoint."""
    st = load_parts(path)
    model = InfDiT(InfDiTConfig(**st["config"]))
    model.load_state_dict(st["ema"])
    if "base" in st:
        model.attach_base(base_from_state(st["base"]).to(device))
    return model.eval().to(device), st


def layers_of(weights, keep, depth, ap):
    """The init's weights with its layers `keep` renumbered 0, 1, … (a shallower variant starts from chosen layers
    of a trained model; the stem and the output stage are shared)."""
    if any(not 0 <= i < depth for i in keep):
        ap.error(f"--init-layers {','.join(map(str, keep))}: the init has layers 0-{depth - 1}")
    out = {k: v for k, v in weights.items() if not k.startswith("blocks.")}
    for new, old in enumerate(keep):
        out |= {f"blocks.{new}." + k[len(f"blocks.{old}."):]: v for k, v in weights.items() if k.startswith(f"blocks.{old}.")}
    return out


def main(argv=None):
    """argv: the flags (default sys.argv); model/measure/speed.py calls it once per variant. Returns the
    --profile-steps rate in crops/s (None without a profile)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="infdit-s/4")
    ap.add_argument("--data", default=".data")
    ap.add_argument("--ckpt", default="runs/default")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="start from this checkpoint's EMA weights (fresh optimizer)")
    ap.add_argument("--depth", type=int, help="layers (default: --config's): a shallower variant (issue 41)")
    ap.add_argument("--kv-pool", type=int, help="average each neighbour's keys/values over N×N tokens (network kv_pool; "
                    "issue 41): 2 -> 448 keys a query instead of 1,024; the weights are the same shapes, so --init fits "
                    "(default: --init's, else 1)")
    ap.add_argument("--init-layers", metavar="I,J,…", help="with --init: the init's layers, in order, that become this "
                    "model's (as many as --depth; e.g. 0,2,5,7 of release 5's 8 for a 4-layer variant; default: all)")
    ap.add_argument("--base", metavar="CKPT", help="train over this base super-resolver (model/infdit/base.py checkpoint): "
                    "up(LR) is its output, kept in the checkpoint; the manifest's \"up\" becomes \"base\"")
    ap.add_argument("--zero-output", action="store_true", help="zero the final layer's projection first (with --init and --base: "
                    "the model starts as the base alone)")
    ap.add_argument("--teacher", metavar="CKPT", help="with --base: at σ_max (the fidelity output) the target is this stronger "
                    "super-resolver's output on the same 8-bit LR (model/infdit/base.py checkpoint, e.g. SAFMN++; never "
                    "saved in the run) instead of the photo: the regression the transformer must learn over the base, "
                    "without the photo's unpredictable part, so a CPU's few steps are not spent averaging it out")
    ap.add_argument("--teacher-share", type=float, default=1.0, metavar="W",
                    help="with --teacher: the σ_max target is W·teacher + (1 − W)·photo")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--max-steps", type=int, default=10 ** 9)
    ap.add_argument("--total-steps", type=int, default=20000,
                    help="length of the cosine schedule in steps; 0: the schedule follows --minutes of wall time")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--mix", default="",
                    help="real2's shares, e.g. bicubic=0.3,bicubic+jpeg=0.4,second-order=0.3 (default: degrade.RECIPE's)")
    ap.add_argument("--task", choices=["bicubic", "real", "real2"], default="bicubic",
                    help="LR degradations: bicubic (clean), real (light blur+noise), real2 (model/training/degrade.py: clean, JPEG, second-order)")
    ap.add_argument("--jpeg-cond", action="store_true",
                    help="condition on the LR's JPEG quality (network.jpeg_level; real2 only): a server reads it from an "
                         "uploaded JPEG's quantisation tables, so the model need not guess whether an edge is JPEG's")
    ap.add_argument("--q-lr-mult", type=float, default=1.0,
                    help="learning-rate multiplier of the JPEG-condition embedder: it starts closed (zero), and at the "
                         "model's rate it had opened to 1.5%% of the noise embedding after 192 batch-16 steps")
    ap.add_argument("--sigma-data", type=float, default=0.1)
    ap.add_argument("--sigma-min", type=float, default=0.002)
    ap.add_argument("--sigma-max", type=float, default=4.0)
    ap.add_argument("--p-mean-offset", type=float, default=-0.4)
    ap.add_argument("--p-std", type=float, default=1.2)
    ap.add_argument("--p-sigma-max", type=float, default=0.3)
    ap.add_argument("--seam-weight", type=float, default=0.0,
                    help="weight of the error of the steps across the model's block boundaries (grid_loss at the block "
                         "period) beside pixel MSE, under the same EDM weight: the fidelity output's seams")
    ap.add_argument("--seam-loss", choices=["steps", "ratio"], default="steps",
                    help="what --seam-weight weighs: steps = grid_loss (the steps' error; release 2), ratio = "
                         "seam_excess_loss (the batch's seam ratio's log², beside the EDM-weighted MSE; release 3)")
    ap.add_argument("--lr-grid-weight", type=float, default=0.0,
                    help="weight of the LR-pixel grid loss beside the EDM-weighted MSE (network.phase_loss at the scale's "
                         "period, the batch's phase profile against the photo's): the staircase of scale-px squares")
    ap.add_argument("--cascade", type=float, default=0.0, metavar="SHARE",
                    help="this share of each batch gets, instead of its LR, what a 16× render's second stage reads: the "
                         "model's own fidelity output (its weight average, one evaluation at σ_max, rounded to uint8) of "
                         "the crop reduced scale² times (issue 31: stage 2 sharpened stage 1's staircase into a mosaic)")
    ap.add_argument("--scale-aug", type=float, default=1.0, metavar="MAX",
                    help="each crop a square of crop·s px of the packed photo reduced to --crop, s log-uniform in [1, MAX] "
                         "(data.CropSampler): every photo at several reductions, not one (issue 32); 1: off")
    ap.add_argument("--tune", default="all", metavar="PART",
                    help="which weights train: all, or final (the final layer: the per-token linear output that makes each "
                         "patch, and its modulation), or lastN (the last N transformer layers and the final layer); the rest "
                         "stay as --init has them and the forward runs without gradients through them (issue 31: a "
                         "fine-tune that moves only the output stage keeps the features it reads; a batch-8 step 2.9x (last1) to 3.6x (final) faster on a 2-core CPU)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--save-every", type=float, default=300.0, help="seconds")
    ap.add_argument("--no-optimizer-in-ckpt", action="store_true", help="smaller checkpoint (device runs)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="bf16 autocast on the CPU too (on CUDA it is always on): 1.8-2.3x per step measured on a CPU "
                         "with AVX512_BF16 (Zen 4); not measured on one without it")
    ap.add_argument("--threads", type=int, default=all_cores(),
                    help="CPU threads (default: every core this process may use; torch 1.13 here defaults to 1)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (torch 2.x)")
    ap.add_argument("--attn-bias", choices=ATTN_BIASES, default="mask",
                    help="how CUDA's fused attention gets the key bias (network.SDPA_BIAS): mask = attn_mask, fold = one "
                         "more query/key channel, no mask, so the flash kernel may run")
    ap.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto",
                    help="restrict torch 2.x's fused attention to one kernel (auto: torch chooses); for model/measure/speed.py")
    ap.add_argument("--torch-profile", action="store_true",
                    help="with --profile-steps: also torch.profiler over those steps, the top kernels by device time")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="time N steps by phase (data, degrade, forward+backward, optimizer, EMA), synchronising the device")
    ap.add_argument("--profile-skip", type=int, default=5, help="steps before the profiled ones (warm-up, compilation)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    dev = torch.device(a.device)
    for flag, v in (("--seam-weight", a.seam_weight), ("--lr-grid-weight", a.lr_grid_weight)):
        if v < 0:
            ap.error(f"{flag} {v}: give a weight of 0 (off) or more")
    if a.threads < 1:
        ap.error(f"--threads {a.threads}: give a count of 1 or more")
    if not 1.0 <= a.scale_aug <= 8.0:
        ap.error(f"--scale-aug {a.scale_aug}: give the largest reduction, from 1 (off) to 8")
    if a.sdpa_backend != "auto" and network._SDPA is None:
        ap.error(f"--sdpa-backend {a.sdpa_backend}: this torch ({torch.__version__}) has no fused attention; leave it at auto")
    network.SDPA_BIAS = a.attn_bias
    # Debian's torch 1.13 starts with 1 thread on this 2-core machine: every CPU run before this flag
    # used half of it (a batch-4 256² step: 15.0 s on 1 thread, 9.9 s on 2; with --cpu-bf16 8.5 / 4.4 s)
    torch.set_num_threads(a.threads)
    amp = dev.type == "cuda" or a.cpu_bf16
    torch.manual_seed(a.seed)
    ck = Path(a.ckpt) / "last.pt"
    state = load_parts(ck) if a.resume else None
    a.mix = a.mix or (state["args"].get("mix", "") if state else "")   # a resumed run keeps its mix
    if a.mix:
        RECIPE["mix"] = parse_mix(a.mix)   # the recipe saved in the checkpoint is the one trained with
    if a.jpeg_cond and a.task != "real2":
        ap.error("--jpeg-cond needs --task real2 (the other tasks make no JPEG)")
    if a.depth is not None and not a.depth >= 1:
        ap.error(f"--depth {a.depth}: give a number of layers of at least 1")
    init = load_parts(a.init) if a.init and not state else None   # read once: its config here, its weights below
    if a.kv_pool is None and init is not None:   # a fine-tune keeps its init's pooling unless told otherwise
        a.kv_pool = init["config"].get("kv_pool", 1)
    cfg = InfDiTConfig(**state["config"]) if state else make_config(a.config, sigma_data=a.sigma_data, jpeg_cond=a.jpeg_cond,
                                                                     **({"depth": a.depth} if a.depth else {}),
                                                                     **({"kv_pool": a.kv_pool} if a.kv_pool else {}))
    if a.kv_pool is not None and (a.kv_pool < 1 or cfg.grid % a.kv_pool):
        ap.error(f"--kv-pool {a.kv_pool}: give a divisor of the block's {cfg.grid} tokens a side (1: off)")
    try:
        keep = [int(i) for i in a.init_layers.split(",")] if a.init_layers else None
    except ValueError:
        ap.error(f"--init-layers {a.init_layers!r}: give the init's layer numbers, comma-separated (e.g. 0,2,5,7)")
    if keep is not None and (not a.init or len(keep) != cfg.depth):
        ap.error(f"--init-layers names {len(keep)} layers: it needs --init and as many as the model's depth ({cfg.depth})")
    if a.base and state:
        ap.error("--base: a resumed run keeps the base it was trained over (leave --base out with --resume)")
    if a.base:
        cfg.up = "base"
    base_net = base_from_state(state["base"]) if state and "base" in state else load_base(a.base) if a.base else None
    a.teacher = a.teacher or (state["args"].get("teacher") if state else None)   # a resumed run keeps its teacher
    if a.teacher and cfg.up != "base":
        ap.error("--teacher needs a model over a base (--base): over bicubic the fidelity target stays the photo")
    if not 0 <= a.teacher_share <= 1:
        ap.error(f"--teacher-share {a.teacher_share}: give a share from 0 to 1")
    try:
        teacher = load_base(a.teacher).to(dev).eval().requires_grad_(False) if a.teacher else None
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        ap.error(f"--teacher {a.teacher}: not a base super-resolver checkpoint ({e})")
    if not 0 <= a.cascade <= 1:
        ap.error(f"--cascade {a.cascade}: give a share of the batch from 0 to 1")
    if a.cascade and a.crop % (cfg.block * cfg.scale):
        ap.error(f"--cascade needs crops whose stage-1 LR is whole LR blocks: --crop {a.crop} is not a multiple of {cfg.block * cfg.scale} px")
    if a.seam_weight and a.crop < 2 * cfg.block:
        ap.error(f"--seam-weight needs crops with a block boundary inside: --crop {a.crop} is under 2 blocks ({2 * cfg.block} px)")
    model = InfDiT(cfg).to(dev)
    ema = InfDiT(cfg).to(dev).requires_grad_(False)
    if base_net is not None:
        model.attach_base(base_net.to(dev)); ema.attach_base(base_net.to(dev))
    if state and state["args"].get("tune", "all") != a.tune:
        ap.error(f"--tune {a.tune}: the run in {a.ckpt} trained with --tune {state['args'].get('tune', 'all')}; resume it with that")
    try:
        tuned = tuned_names(model, a.tune)
    except ValueError as e:
        ap.error(str(e))
    for n, p in model.named_parameters():
        p.requires_grad_(n in tuned)
    # the JPEG-condition embedder in a group of its own, at --q-lr-mult times the rate
    new = lambda n: n.startswith("q_embedder.")
    groups = [[p for n, p in model.named_parameters() if not new(n) and n in tuned],
              [p for n, p in model.named_parameters() if new(n) and n in tuned]]
    groups = [{"params": g} for g in groups if g]
    mults = [1.0, a.q_lr_mult][:len(groups)]
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, crops, history = 0, 0, []
    if state:
        model.load_state_dict(state["model"]); ema.load_state_dict(state["ema"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        step, crops, history = state["step"], state["crops"], state.get("history", [])
    elif init is not None:
        weights = init["ema"] if keep is None else layers_of(init["ema"], keep, init["config"]["depth"], ap)
        # a jpeg_cond model may start from one without the condition: its q_embedder starts closed
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or any(not k.startswith("q_embedder.") for k in missing):
            raise SystemExit(f"--init {a.init}: its weights do not fit {cfg.name} (missing {missing}, unexpected {unexpected})")
    if a.zero_output and not state:
        # the transformer starts adding nothing to up(LR) but c_skip·σ_max·ε (σ_data²/σ_max: 0.3/255 rms at
        # release 5's σ_max 4, σ_data 0.1), so a fine-tune over a new base starts at the base's own fidelity
        with torch.no_grad():
            model.final_layer.linear.weight.zero_(); model.final_layer.linear.bias.zero_()
    if not state:
        ema.load_state_dict(model.state_dict())
    # The EMA's warm-up (decay (1+step)/(10+step)) lets a fresh model's average forget its random
    # start. Continuing from trained weights it must not: the average would track the raw weights'
    # first, noisiest steps (fresh AdamW moments) and undo the weights we started from. Measured: after
    # a 155-step CPU fine-tune with the warm-up (decay 0.945 by then) the average had moved 99% as far
    # from the start as the raw weights.
    fine_tune = bool(state["args"].get("init") if state else a.init)
    nparams = sum(p.numel() for p in model.parameters())
    ntuned = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{cfg.name}: {nparams / 1e6:.2f}M params ({'all' if ntuned == nparams else f'{ntuned / 1e6:.3f}M'} trained), sigma_data {cfg.sigma_data}, target {cfg.target}, device {dev} "
          f"({torch.get_num_threads()} CPU threads{', bf16' if amp else ''}), "
          f"resume step {step}", flush=True)

    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    if a.compile and not hasattr(torch, "compile"):   # refused, not run eager: a profile must measure what it names
        raise RuntimeError(f"--compile needs torch 2.x; this is torch {torch.__version__} (leave --compile out to train eager)")
    fwd = torch.compile(model.forward_image) if a.compile else model.forward_image
    sampler = CropSampler(load_split(a.data, "train"), a.crop, dev, seed=a.seed + step, scale_max=a.scale_aug)
    gen = torch.Generator().manual_seed(a.seed * 7919 + step)
    gen_dev = torch.Generator(device=dev).manual_seed(a.seed * 7919 + step)  # noise drawn where it is used
    t0 = last_save = time.time()
    run_start_step, n_acc = step, 0
    loss_acc = torch.zeros((), device=dev)   # summed on the device: no host sync per step
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    phases, profiled, prof = {}, None, None
    def mark(name, t):
        if a.profile_skip <= step - run_start_step < a.profile_skip + a.profile_steps:
            sync(); now = time.time(); phases[name] = phases.get(name, 0.0) + now - t; return now
        return t
    while step < a.max_steps and time.time() - t0 < a.minutes * 60:
        progress = (time.time() - t0) / (a.minutes * 60) if a.total_steps == 0 else step / a.total_steps
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        for g, k in zip(opt.param_groups, mults):
            g["lr"] = lr * k
        if a.torch_profile and a.profile_steps and step - run_start_step == a.profile_skip:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                          + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else []))
            prof.__enter__()
        tp = time.time()
        hr = sampler.sample(a.batch)
        tp = mark("data", tp)
        lr_img = degrade(hr, cfg.scale, a.task, gen_dev if a.task == "real2" else None, with_quality=cfg.jpeg_cond)
        jq = None
        if cfg.jpeg_cond:
            lr_img, quality = lr_img
            jq = jpeg_level(quality).to(dev)
        n2 = round(a.cascade * a.batch)
        if n2:
            lr_img = lr_img.clone()
            lr_img[:n2] = stage1_output(ema, hr[:n2], cfg, a.sigma_max, gen_dev, amp)
            if jq is not None:
                jq = jq.clone(); jq[:n2] = 0   # a stage-2 LR is the model's own output, never a JPEG
        tp = mark("degrade", tp)
        sigma = sample_sigma(a.batch, a, gen, dev)
        noise = torch.randn(hr.shape, generator=gen_dev, device=dev)
        if cfg.up == "base":   # the base reads 8-bit pixels, as the engine hands it the photo
            lr_img = to_8bit(lr_img)
        up = model.up_of(lr_img, crops=True)
        x = up + (hr - up) + sigma[:, None, None, None] * noise if cfg.target == "residual" else hr + sigma[:, None, None, None] * noise
        # random absolute position: the rotary embedding must work anywhere in a huge image
        pos0 = (torch.randint(0, 4096, (a.batch, 2), generator=gen) * cfg.grid).float().to(dev)
        with (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()), \
                sdpa_backend(a.sdpa_backend):   # the backward runs the kernel the forward chose
            d = fwd(x, lr_img, sigma, pos0, jq=jq, up=up)
        weight = (sigma ** 2 + cfg.sigma_data ** 2) / (sigma * cfg.sigma_data) ** 2
        d = d.float()
        target = hr
        if teacher is not None:
            t_out = base_crop_up(teacher, lr_img)   # one window per crop, as up(LR) is made here
            w = a.teacher_share * (sigma >= a.sigma_max).float()[:, None, None, None]
            target = hr + w * (t_out - hr)
        err = ((d - target) ** 2).flatten(1).mean(1)
        # the crop's blocks start at its corner, so its block boundaries are the lines every cfg.block px
        if a.seam_weight and a.seam_loss == "steps":
            err = err + a.seam_weight * grid_loss(d, hr, cfg.block, per_sample=True)
        loss = (weight * err).mean()
        if a.seam_weight and a.seam_loss == "ratio":
            loss = loss + a.seam_weight * seam_excess_loss(d, hr, cfg.block, cfg.scale)
        if a.lr_grid_weight:
            loss = loss + a.lr_grid_weight * phase_loss(d, hr, cfg.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tp = mark("forward+backward", tp)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        tp = mark("optimizer", tp)
        decay = a.ema if fine_tune else min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():   # one fused call per list, not two kernels per parameter
            ep, mp = list(ema.parameters()), [p.detach() for p in model.parameters()]
            torch._foreach_mul_(ep, decay); torch._foreach_add_(ep, mp, alpha=1 - decay)
        tp = mark("ema", tp)
        step += 1; crops += a.batch
        loss_acc += loss.detach(); n_acc += 1
        if a.profile_steps and step - run_start_step == a.profile_skip + a.profile_steps:
            tot = sum(phases.values())
            profiled = a.profile_steps * a.batch / tot
            print("profile over %d steps: " % a.profile_steps + ", ".join(f"{k} {v / a.profile_steps * 1000:.1f} ms ({100 * v / tot:.0f}%)" for k, v in phases.items())
                  + f"; {profiled:.1f} crops/s", flush=True)
            if prof is not None:
                prof.__exit__(None, None, None)
                print(kernel_table(prof, dev, a.profile_steps), flush=True)
                prof = None
        if step % a.log_every == 0:
            el = time.time() - t0
            rate = (step - run_start_step) * a.batch / el
            mean_loss = loss_acc.item() / n_acc
            print(f"step {step:7d}  crops {crops:9d}  loss {mean_loss:.4f}  lr {lr:.2e}  {rate:6.1f} crops/s  {el / 60:6.1f} min", flush=True)
            history.append({"step": step, "crops": crops, "loss": mean_loss})
            loss_acc.zero_(); n_acc = 0
        if time.time() - last_save > a.save_every:
            save(ck, model, ema, opt, cfg, step, crops, history, a)
            last_save = time.time()
    save(ck, model, ema, opt, cfg, step, crops, history, a)
    print(f"saved {ck} at step {step} ({crops} crops)", flush=True)
    return profiled


def tuned_names(model, tune):
    """--tune PART -> the names of the parameters that train (ValueError naming what is accepted)."""
    names = [n for n, _ in model.named_parameters()]
    if tune == "all":
        return set(names)
    depth = len(model.blocks)
    if tune == "final":
        k = 0
    elif tune.startswith("last") and tune[4:].isdigit() and 1 <= int(tune[4:]) <= depth:
        k = int(tune[4:])
    else:
        raise ValueError(f"--tune {tune!r}: give all, final, or lastN with N from 1 to {depth} (the model's layers)")
    keep = ("final_layer.",) + tuple(f"blocks.{i}." for i in range(depth - k, depth))
    return {n for n in names if n.startswith(keep)}


@torch.no_grad()
def stage1_output(model, hr, cfg, sigma_max, gen, amp):
    """What the engine's 16× cascade hands its second stage for these crops: the crop reduced scale² times
    (data.degrade's clean bicubic), through the model's fidelity preset (one evaluation from up(LR) +
    σ_max·ε, which is the denoiser's output), rounded to uint8 as the engine's pixels are."""
    lr1 = degrade(hr, cfg.scale ** 2)
    lr1 = to_8bit(lr1) if cfg.up == "base" else lr1   # the base sees 8-bit LR
    up = model.up_of(lr1, crops=True)
    x = up + sigma_max * torch.randn(up.shape, generator=gen, device=up.device)
    with torch.autocast(device_type=hr.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext():
        out = model.forward_image(x, lr1, torch.full((hr.shape[0],), sigma_max, device=hr.device), up=up)
    return to_8bit(out.float())


def sdpa_backend(name):
    """A context that restricts torch 2.x's fused attention to one kernel (auto: no restriction)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel, SDPBackend
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name])


def kernel_table(prof, dev, steps, rows=22):
    """The profiled steps' operators by their own device time (CPU time without a GPU), summed over the steps."""
    ev = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if dev.type == "cuda" else ("self_cpu_time_total",)):
        try:
            return f"torch.profiler, {steps} steps, by {key}:\n" + ev.table(sort_by=key, row_limit=rows, max_name_column_width=60)
        except (AttributeError, KeyError):
            continue
    return "torch.profiler: no device-time column in this torch"


def save(path, model, ema, opt, cfg, step, crops, history, a):
    sd = lambda m: {k: v.detach().float().cpu() for k, v in m.state_dict().items()}
    obj = {"config": cfg.to_dict(), "model": sd(model), "ema": sd(ema), "step": step, "crops": crops,
           **({"base": base_state(model.base)} if model.base is not None else {}),
           "history": history[-2000:], "args": vars(a),
           # what the LR went through in training: export.py copies it into the manifest
           "degradation": {"task": a.task, **({"recipe": RECIPE} if a.task == "real2" else {})}}
    if not a.no_optimizer_in_ckpt:
        obj["opt"] = opt.state_dict()
    save_parts(obj, path)


if __name__ == "__main__":
    main()
