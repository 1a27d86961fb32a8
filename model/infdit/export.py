"""Export the block-step graph to ONNX with its manifest; make the test fixture.

    /usr/bin/python3 model/infdit/export.py --ckpt runs/gpu2/last.pt --out model/release/infdit-s4 [--kv-dtype float16]
    /usr/bin/python3 model/infdit/export.py --fixture            # test/fixtures/tiny.*.onnx, tiny.json + reference
    /usr/bin/python3 model/infdit/export.py --random infdit-s/8 --out /tmp/s8 --kv-dtype float16 [--whole]   # cost benchmarks
    /usr/bin/python3 model/infdit/export.py --restorer runs/restorer/last.pt --attach model/release/infdit-s4.json
        # adds the JPEG restorer (model/infdit/restore.py) to an exported model: <name>.restore.onnx and the
        # manifest's "restorer"; its other graphs are left as they are. --restorer with --ckpt/--out: the same at export

The graphs evaluate a batch of blocks at one σ each, one layer at a time (network.InfDiT.layer_*:
an input stage, one graph per layer, the last with the output stage fused in), so the engine's
node is (block, evaluation, layer) and a block's closure is a cone (DESIGN.md §2, §3). The
manifest says everything the engine must not guess, the graphs' inputs and outputs included.
"""
import argparse, json, math, os, sys, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit.network import InfDiT, make_config, upsample, to_blocks, lr_contexts, thumbnail, jpeg_level
from infdit.sample import sample_image, karras_sigmas, block_noise

ROOT = Path(__file__).resolve().parents[2]
OPSET = 14


class BlockStep(torch.nn.Module):
    """One whole evaluation in one graph (release 1's export). Kept as a reference for
    benchmarks (`--whole`); the engine runs the layer graphs below."""

    def __init__(self, model, kv_dtype):
        super().__init__()
        self.m, self.half = model, kv_dtype == "float16"
        self.names = [n for n, _, _ in io_spec(model.cfg, kv_dtype)[0]]

    def forward(self, *args):
        a = dict(zip(self.names, args))
        kv_nb = a["kv_nb"].float() if self.half else a["kv_nb"]
        out, kv = self.m.forward_blocks(a["x"], a["up"], a["lr_ctx"], a["sigma"], a["pos"], kv_nb, a["present"],
                                        a.get("thumb"), a.get("jq"))
        return out, (kv.half() if self.half else kv)


class InputStage(torch.nn.Module):
    """Graph `input`: (x, up, sigma, pos[, thumb][, jq]) -> h, cond, kv (layer 0's K/V)."""

    def __init__(self, model, kv_dtype, names):
        super().__init__()
        self.m, self.half, self.names = model, kv_dtype == "float16", names

    def forward(self, *args):
        a = dict(zip(self.names, args))
        h, c, kv = self.m.layer_input(a["x"], a["up"], a["sigma"], a["pos"], a.get("thumb"), a.get("jq"))
        return h, c, (kv.half() if self.half else kv)


class LayerStage(torch.nn.Module):
    """Graph `layer<l>`: (h, cond, pos, kv, kv_nb, present[, lr_ctx][, x, up, sigma]) ->
    (h_next, kv_next), or `denoised` for the last layer (the output stage fused in: it is a
    single linear, not worth a call of its own)."""

    def __init__(self, model, li, kv_dtype, names):
        super().__init__()
        self.m, self.li, self.half, self.names = model, li, kv_dtype == "float16", names

    def forward(self, *args):
        a = dict(zip(self.names, args))
        k4, v4 = a["k4"], a["v4"]
        if self.half:
            k4, v4 = k4.float(), v4.float()
        h, nxt = self.m.layer_step(self.li, a["h"], a["cond"], a["pos"], k4, v4, a["present"], a.get("lr_ctx"))
        if nxt is None:
            return self.m.layer_output(h, a["cond"], a["x"], a["up"], a["sigma"])
        return h, (nxt.half() if self.half else nxt)


def io_spec(cfg, kv_dtype):
    """The whole-evaluation graph's inputs and outputs."""
    B, lb, L, h, T, dh = cfg.block, cfg.lr_block, cfg.depth, cfg.heads, cfg.tokens, cfg.head_dim
    ins = [("x", ["b", 3, B, B], "float32"), ("up", ["b", 3, B, B], "float32"),
           ("lr_ctx", ["b", 3, 3 * lb, 3 * lb], "float32"), ("sigma", ["b"], "float32"),
           ("pos", ["b", 2], "float32"), ("kv_nb", ["b", 3, L, 2, h, T, dh], kv_dtype),
           ("present", ["b", 3], "float32")]
    if cfg.global_cond:
        ins.append(("thumb", ["b", 3, cfg.thumb, cfg.thumb], "float32"))
    if cfg.jpeg_cond:
        ins.append(("jq", ["b"], "float32"))
    outs = [("denoised", ["b", 3, B, B], "float32"), ("kv", ["b", L, 2, h, T, dh], kv_dtype)]
    return ins, outs


def layer_specs(cfg, kv_dtype):
    """Inputs and outputs of every layer-granular graph, in run order: input, layer0 … layer{L-1}."""
    B, lb, L, h, T, dh, D = cfg.block, cfg.lr_block, cfg.depth, cfg.heads, cfg.tokens, cfg.head_dim, cfg.dim
    kv1, slots = ["b", 2, h, T, dh], ["b", h, 4 * T, dh]
    ins = [("x", ["b", 3, B, B], "float32"), ("up", ["b", 3, B, B], "float32"),
           ("sigma", ["b"], "float32"), ("pos", ["b", 2], "float32")]
    if cfg.global_cond:
        ins.append(("thumb", ["b", 3, cfg.thumb, cfg.thumb], "float32"))
    if cfg.jpeg_cond:   # the LR's network.jpeg_level, the same for every block of a stage
        ins.append(("jq", ["b"], "float32"))
    specs = [("input", ins, [("h", ["b", T, D], "float32"), ("cond", ["b", D], "float32"), ("kv", kv1, kv_dtype)])]
    for li in range(L):
        ins = [("h", ["b", T, D], "float32"), ("cond", ["b", D], "float32"), ("pos", ["b", 2], "float32"),
               ("k4", slots, kv_dtype), ("v4", slots, kv_dtype), ("present", ["b", 3], "float32")]
        if li == 0 and cfg.lr_cross_attn:
            ins.append(("lr_ctx", ["b", 3, 3 * lb, 3 * lb], "float32"))
        if li == L - 1:
            ins += [("x", ["b", 3, B, B], "float32"), ("up", ["b", 3, B, B], "float32"), ("sigma", ["b"], "float32")]
            outs = [("denoised", ["b", 3, B, B], "float32")]
        else:
            outs = [("h_next", ["b", T, D], "float32"), ("kv_next", kv1, kv_dtype)]
        specs.append((f"layer{li}", ins, outs))
    return specs


def dummy(spec, b, gen):
    out = []
    for name, shape, dt in spec:
        shape = [b if s == "b" else s for s in shape]
        t = torch.randn(*shape, generator=gen)
        if name == "sigma":
            t = t.abs() + 0.1
        if name == "pos":
            t = torch.randint(0, 1000, shape, generator=gen).float()
        if name == "present":
            t = (torch.rand(*shape, generator=gen) > 0.3).float()
        if name == "jq":
            t = torch.rand(*shape, generator=gen) * 0.7
        out.append(t.half() if dt == "float16" else t)
    return out


def dummy_inputs(cfg, b, kv_dtype, gen):
    return dummy(io_spec(cfg, kv_dtype)[0], b, gen)


def layer_flops(cfg):
    """Multiply-adds ×2 of one layer step of one block (matmuls only), cross-attention excluded."""
    d, T = cfg.dim, cfg.tokens
    hid = int(d * cfg.mlp_ratio)
    return 2 * (T * (3 * d * d + d * d + 2 * d * hid) + 2 * T * sum(cfg.slot_tokens) * d + 6 * d * d)


def block_flops(cfg):
    """Multiply-adds ×2 of one block-evaluation (matmuls only; norms and elementwise ignored)."""
    d, T, L = cfg.dim, cfg.tokens, cfg.depth
    hid = int(d * cfg.mlp_ratio)
    per_layer = T * (3 * d * d + d * d + 2 * d * hid) + 2 * T * sum(cfg.slot_tokens) * d + 6 * d * d   # keys: 4T, or pooled
    f = L * per_layer + T * 6 * cfg.patch ** 2 * d + T * d * cfg.patch ** 2 * 3 + 2 * d * d
    if cfg.lr_cross_attn:
        S = (3 * cfg.lr_block // cfg.lr_patch) ** 2
        f += S * 3 * cfg.lr_patch ** 2 * d + T * d * d + S * 2 * d * d + 2 * T * S * d + T * d * d
    return 2 * f


def _export(module, args, ins, outs, path):
    dyn = {n: {0: "b"} for n, _, _ in ins + outs}
    with torch.no_grad():
        torch.onnx.export(module, tuple(args), str(path), input_names=[n for n, _, _ in ins],
                          output_names=[n for n, _, _ in outs], dynamic_axes=dyn, opset_version=OPSET,
                          do_constant_folding=True)


def export_whole(model, path, kv_dtype="float32"):
    """One graph per evaluation (reference for benchmarks)."""
    ins, outs = io_spec(model.cfg, kv_dtype)
    _export(BlockStep(model.eval(), kv_dtype).eval(), dummy(ins, 2, torch.Generator().manual_seed(0)), ins, outs, path)


_MHA_LIB = []   # the torch.library defining infdit::mha, kept alive once registered


def ort_attention(heads):
    """torch.ops.infdit.mha, exported as onnxruntime's com.microsoft.MultiHeadAttention: the block attention's
    scores, softmax and weighted sum in one kernel (bench/layer-forms.ts, this 2-core EPYC: a layer 1-10% faster
    than the plain MatMul/Softmax/MatMul graph, which also splits per head). Queries (n, T, h·dh); keys and
    values (n, h, S, dh); keep (n, S) int32, 0 = a masked key (its logit NEG, as network.attend's bias), or None.
    Registered once per process; its body is the reference the symbolic stands for (test_network checks them).
    Returns the hook for `heads` heads that network's attention modules call when set (export_layers)."""
    if not _MHA_LIB:
        from infdit.network import NEG
        lib = torch.library.Library("infdit", "DEF")
        lib.define("mha(Tensor q, Tensor k, Tensor v, Tensor? keep, int heads) -> Tensor")

        def mha(q, k, v, keep, heads):
            n, t, _ = q.shape
            qh = q.reshape(n, t, heads, -1).transpose(1, 2)
            logits = torch.matmul(qh, k.transpose(-1, -2)) * qh.shape[-1] ** -0.5
            if keep is not None:
                logits = logits.masked_fill(keep[:, None, None, :] == 0, NEG)
            return torch.matmul(torch.softmax(logits, dim=-1), v).transpose(1, 2).reshape(n, t, -1)
        lib.impl("mha", mha, "CPU")

        def symbolic(g, q, k, v, keep, heads):
            from torch.onnx import symbolic_helper as sh
            h = sh._get_const(heads, "i", "heads")
            if sh._is_none(keep):
                return g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=h)
            # inputs: query, key, value, bias (the projection bias: none here), key_padding_mask. The exporter
            # cannot leave an input out, so a placeholder stands for the bias; mend_attention() removes it.
            return g.op("com.microsoft::MultiHeadAttention", q, k, v, g.op("Constant", value_t=torch.zeros(0)), keep,
                        num_heads_i=h, mask_filter_value_f=NEG)
        torch.onnx.register_custom_op_symbolic("infdit::mha", symbolic, OPSET)
        _MHA_LIB.append(lib)
    return lambda q, k, v, keep: torch.ops.infdit.mha(q, k, v, keep, heads)


def mend_attention(path):
    """The exported MultiHeadAttention's placeholder for its absent 4th input becomes the ONNX empty name; the
    placeholder's node, now unused, goes; the contrib domain is declared."""
    import onnx
    m = onnx.load(str(path))
    if not any(n.op_type == "MultiHeadAttention" for n in m.graph.node):
        return          # the input stage: no attention in it
    for n in m.graph.node:
        if n.op_type == "MultiHeadAttention" and len(n.input) == 5:
            n.input[3] = ""
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    keep = [n for n in m.graph.node if any(o in used for o in n.output)]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(m, str(path))


def export_layers(model, out, kv_dtype="float32", attention="fused"):
    """<out>.input.onnx, <out>.layer0.onnx, …: one graph per layer. Returns the manifest's `graphs`.
    attention "fused": the layers' attention as onnxruntime's MultiHeadAttention (ort_attention); "plain":
    MatMul, Softmax, MatMul per head (the released graphs until 2026-12-05)."""
    model = model.eval()
    hook = ort_attention(model.cfg.heads) if attention == "fused" else None

    def use(h):
        for blk in model.blocks:
            # a pooled model's block attention adds ln kv_pool² to its neighbours' logits, which the op's key mask
            # cannot say: it stays MatMul, Softmax, MatMul (its LR cross-attention is fused still)
            blk.attn.ort_attention = h if model.cfg.kv_pool == 1 else None
            if blk.cross is not None:
                blk.cross.ort_attention = h
    use(hook)
    graphs = []
    try:
        for name, ins, outs in layer_specs(model.cfg, kv_dtype):
            if name == "input":
                mod = InputStage(model, kv_dtype, [n for n, _, _ in ins])
            else:
                mod = LayerStage(model, int(name[5:]), kv_dtype, [n for n, _, _ in ins])
            path = Path(f"{out}.{name}.onnx")
            _export(mod.eval(), dummy(ins, 2, torch.Generator().manual_seed(0)), ins, outs, path)
            if hook is not None:
                mend_attention(path)
            graphs.append({"name": name, "file": path.name,
                           "inputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in ins],
                           "outputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in outs]})
    finally:
        use(None)    # the model is the caller's: left as it came
    return graphs


RESTORER_DOC = ("stage 1 of an image whose file is a JPEG (quality > 0; jq = jpeg.level's formula) reads its LR through the "
                "restorer: the LR is cut into a fixed grid of tile×tile tiles that starts offset pixels above and left of "
                "its top-left corner (tile (r, c) covers x from c·tile − offset, y from r·tile − offset), each run with halo "
                "pixels of context on every side (edge-replicated outside the image), the tile's pixels rounded as "
                "pixels.to_uint8; later stages and non-JPEG files are not restored")


class RestoreTile(torch.nn.Module):
    """The restorer on a batch of halo-padded tiles; gives the tiles' inner TILE×TILE only."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, lr, jq):
        from infdit.restore import TILE, HALO
        return self.net(lr, jq)[:, :, HALO:HALO + TILE, HALO:HALO + TILE]


def attach_restorer(m, out, ckpt):
    """Export model/infdit/restore.py's checkpoint as <out>.restore.onnx and describe it in manifest `m`
    (a model has at most one restorer: an earlier one is replaced)."""
    from infdit.restore import load, TILE, HALO, OFFSET
    net, st = load(ckpt)
    assert net.cfg.receptive_radius <= HALO, "the halo must cover the restorer's receptive field"
    side = TILE + 2 * HALO
    ins, outs = [("lr", ["b", 3, side, side], "float32"), ("jq", ["b"], "float32")], [("restored", ["b", 3, TILE, TILE], "float32")]
    path = Path(f"{out}.restore.onnx")
    # the weights beside the graph, as <name>.ckpt.pt beside the model's (evaluate.py --restorer reads them)
    torch.save({k: st[k] for k in ("config", "ema", "step", "quality", "crop", "batch", "log", "grid_weight", "init", "through", "lr_weight") if k in st}, f"{out}.restore.ckpt.pt")
    _export(RestoreTile(net).eval(), (torch.rand(2, 3, side, side) * 2 - 1, torch.tensor([0.25, 0.5])), ins, outs, path)
    m["graphs"] = [g for g in m["graphs"] if g["name"] != "restore"] + [
        {"name": "restore", "file": path.name, "inputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in ins],
         "outputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in outs]}]
    c = net.cfg
    m["restorer"] = {
        "enabled": True, "graph": "restore", "tile": TILE, "halo": HALO, "offset": OFFSET,
        "doc": RESTORER_DOC,
        "architecture": {"kind": "FFDNet-style: pixel-unshuffle, quality plane, 3x3 conv + ReLU stack, pixel-shuffle, plus input",
                         **{k: getattr(c, k) for k in ("width", "depth", "shuffle")}, "receptive_radius": c.receptive_radius},
        "params": sum(p.numel() for p in net.parameters()),
        "flops_per_lr_pixel": 2 * 9 * (c.width * (3 * c.shuffle ** 2 + 1) + c.depth * c.width ** 2 + c.width * 3 * c.shuffle ** 2) // c.shuffle ** 2,
        "provenance": {"steps": st["step"], "batch": st["batch"], "crop": st["crop"], "quality": st["quality"],
                       "grid_weight": st.get("grid_weight", 0.0), "init": st.get("init"),
                       "data": "the clean LR (antialiased bicubic 4x) of the super-resolver's training photos, random crops, "
                               "saved as JPEG (Pillow, 4:2:0) at a quality drawn uniformly from the range above",
                       **({"through": st["through"], "lr_weight": st.get("lr_weight"),
                           "loss": "end to end: the frozen super-resolver's one-evaluation output on the restored LR against the "
                                   "ground truth (MSE + grid_weight x the steps across the 8*scale-px lines) + lr_weight x the LR MSE"}
                          if st.get("through") else
                          {"loss": "against the clean LR: MSE + grid_weight x the steps across the 8-px JPEG lines"})},
    }
    return m


def write_model(model, out, name, kv_dtype, sampling, provenance, whole=False, attention="fused"):
    """The layer graphs <out>.<graph>.onnx and the manifest <out>.json (with --whole also
    <out>.onnx, the single whole-evaluation graph, for benchmarks)."""
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    graphs = export_layers(model, out, kv_dtype, attention)
    if whole:
        export_whole(model, out.with_suffix(".onnx"), kv_dtype)
    # an existing <out>.onnx beside the layer graphs (release 1's file) stays the benchmark reference
    ref = out.with_suffix(".onnx")
    m = manifest(model.cfg, name, kv_dtype, sampling, provenance, graphs, ref.name if ref.exists() else None, attention)
    out.with_suffix(".json").write_text(json.dumps(m, indent=1))
    return out


ATTENTION_DOC = {
    "fused": "the layers' block and LR attention are onnxruntime's com.microsoft MultiHeadAttention (CPU kernel; "
             "a missing neighbour's keys closed by key_padding_mask with mask_filter_value -1e9)",
    "plain": "MatMul, Softmax, MatMul per head (standard ONNX operators)",
}


def manifest(cfg, name, kv_dtype, sampling, provenance, graphs, whole=None, attention="fused"):
    bpe = 2 if kv_dtype == "float16" else 4
    m = {
        "format": "infdit-layerstep", "version": 2, "name": name, "config": cfg.to_dict(),
        "scale": cfg.scale, "block": cfg.block, "patch": cfg.patch, "layers": cfg.depth, "heads": cfg.heads,
        "head_dim": cfg.head_dim, "tokens_per_block": cfg.tokens, "grid": cfg.grid, "lr_block": cfg.lr_block,
        "params": sum(p.numel() for p in InfDiT(cfg).parameters()), "flops_per_block_eval": block_flops(cfg),
        "flops_per_layer_step": layer_flops(cfg),
        "kv": {"layout": ["k|v", "head", "token", "head_dim"], "per": "block and layer", "dtype": kv_dtype,
               "bytes_per_layer": 2 * cfg.tokens * cfg.dim * bpe,
               "neighbour_slots": ["top", "left", "topleft"]},
        "graphs": graphs,
        "attention": {"form": attention, "doc": ATTENTION_DOC[attention],
                      **({"kv_pool": cfg.kv_pool, "block_attention": "plain",
                          "pool_doc": (f"each neighbour slot's keys and values are averaged over {cfg.kv_pool}x{cfg.kv_pool} "
                                       f"tokens inside the layer graph (k4/v4 come in whole), and its logits get "
                                       f"+ln {cfg.kv_pool ** 2}: the block attention reads {sum(cfg.slot_tokens)} keys, "
                                       f"not {4 * cfg.tokens}")} if cfg.kv_pool > 1 else {})},
        "graphs_doc": ("run in order: input (depth 0: h, cond and layer 0's K/V), then layer l for l = 0 … L-1. "
                       "layer l takes the block's h and the layer-l keys k4 and values v4 of the block and its "
                       "neighbours side by side, (b, heads, 4·tokens, head_dim) in slot order self, top, left, "
                       "top-left (a missing neighbour's slot: zeros, masked by present), and gives h and the "
                       "block's own layer l+1 K/V (b, 2, heads, tokens, head_dim) = [k, v]; the last layer gives "
                       "the denoised block. cond is the input stage's, passed unchanged to every layer."),
        "pixels": {"range": [-1, 1], "from_uint8": "v / 127.5 - 1", "to_uint8": "round(clamp((v + 1) * 127.5, 0, 255))"},
        "upsample": {"method": "bicubic", "a": -0.75, "align_corners": False, "border": "clamp",
                     "note": "PyTorch F.interpolate(mode='bicubic'); lib/bicubic.ts reproduces it"},
        "lr_context": {"blocks": 3, "border": "replicate"},
        "lr_padding": "the LR image is edge-replicated right/bottom to a multiple of lr_block; output cropped back",
        "position": {"unit": "token", "pos": "[row * grid, col * grid] of the block in the padded image"},
        "border_rule": "mask",
        "border_rule_doc": "a missing top/left/top-left neighbour is masked out of the softmax; its kv_nb values are ignored",
        "target": cfg.target, "sigma_data": cfg.sigma_data,
        "sampling": sampling,
        "rng": {"name": "fmix32-boxmuller", "doc": "model/infdit/sample.py block_noise: key=fmix32 chain of (seed,stage,r,c,n); "
                "element i: u1=(fmix32(key+(2i+1)·0x9E3779B1)+1)/(2^32+1), u2=fmix32(key+(2i+2)·0x9E3779B1)/2^32, "
                "z=sqrt(-2 ln u1)·cos(2π u2)"},
        "global": {"enabled": cfg.global_cond, "input": "thumb" if cfg.global_cond else None,
                   "thumb": cfg.thumb if cfg.global_cond else None,
                   "recipe": (f"the user's whole input image in [-1,1], adaptive-average-pooled to {cfg.thumb}x{cfg.thumb} "
                              "(bins floor(i*H/n)..ceil((i+1)*H/n)); the same vector for every block and every stage")
                   if cfg.global_cond else None},
        "jpeg": {"enabled": cfg.jpeg_cond, "input": "jq" if cfg.jpeg_cond else None,
                 "level": ("0 when stage 1's LR file is not a JPEG, else (100 - q) / 100 with q its quality (1-100), "
                           "read from the luma quantisation table as libjpeg scales the standard one; 0 for every later "
                           "stage (its LR is the model's output)") if cfg.jpeg_cond else None},
        "provenance": provenance,
    }
    if whole:
        m["reference_whole_graph"] = {"file": whole, "inputs": [{"name": n, "shape": s, "dtype": d} for n, s, d in io_spec(cfg, kv_dtype)[0]],
                                      "doc": "one whole evaluation per call (release 1's graph): for benchmarks only; the engine never runs it"}
    return m


DEFAULT_SAMPLING = {
    "sigma_min": 0.002, "sigma_max": 4.0, "rho": 7.0, "default_preset": "fidelity",
    # Chosen on the validation split (model/release/MODEL_CARD.md): one evaluation at σ_max is the
    # regression E[x0|LR] (best PSNR); 4 Euler steps add texture and stay above Lanczos (8 fall below it).
    "presets": {"fidelity": {"method": "euler", "steps": 1}, "detail": {"method": "euler", "steps": 4}},
}


def regraph(mp, ckpt, attention):
    """Export again the input and layer graphs of the model whose manifest is mp, from its checkpoint, in the
    given attention form; every other part of the manifest (sampling, provenance, the restorer's graph, the
    benchmark's whole graph) stays as it is. The graphs' inputs and outputs do not change; their bytes, and so
    the model's identity and every cache keyed by it, do."""
    from training.train import load_ema
    m = json.loads(mp.read_text())
    model, _ = load_ema(ckpt)
    if model.cfg.to_dict() != m["config"]:
        raise SystemExit(f"--ckpt {ckpt}'s config is not {mp}'s: {model.cfg.to_dict()} vs {m['config']}")
    names = {name for name, _, _ in layer_specs(model.cfg, m["kv"]["dtype"])}
    if any(g["file"] != f"{mp.stem}.{g['name']}.onnx" for g in m["graphs"] if g["name"] in names):
        raise SystemExit(f"{mp}'s graph files are not named <name>.<graph>.onnx: not re-exported in place")
    graphs = export_layers(model, mp.with_suffix(""), m["kv"]["dtype"], attention)
    new = {g["name"]: g for g in graphs}
    m["graphs"] = [new.get(g["name"], g) for g in m["graphs"]]
    keys = list(m)   # the attention entry sits after the graphs, as manifest() writes it
    m["attention"] = {"form": attention, "doc": ATTENTION_DOC[attention]}
    if "attention" not in keys:
        keys.insert(keys.index("graphs") + 1, "attention")
    mp.write_text(json.dumps({k: m[k] for k in keys}, indent=1))
    return [g["file"] for g in graphs]


def write_bin(path, arrays):
    """Arrays concatenated as little-endian float32 (int-like arrays too); index in the JSON."""
    index, off = {}, 0
    with open(path, "wb") as f:
        for k, a in arrays.items():
            a = np.ascontiguousarray(a, dtype=np.float32)
            f.write(a.tobytes())
            index[k] = {"shape": list(a.shape), "offset": off, "length": int(a.size)}
            off += a.nbytes
    return index


def make_fixture(out_dir):
    """A tiny random-weights model and PyTorch reference outputs for the TypeScript tests."""
    # depth 3 (not the size table's 2): a cone test needs partial depths 1 and 2 to mean something
    cfg = make_config("infdit-tiny/8", sigma_data=0.1, depth=3)
    model = InfDiT(cfg).randomize_(1234, std=0.1).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    sampling = {**DEFAULT_SAMPLING, "sigma_max": 1.0,
                "presets": {"fidelity": {"method": "euler", "steps": 1}, "detail": {"method": "heun", "steps": 3}}}
    write_model(model, out_dir / "tiny", "tiny-fixture", "float32", sampling, {"data": "none: random weights (seed 1234)", "steps": 0})
    torch.save({"config": cfg.to_dict(), "ema": model.state_dict()}, out_dir / "tiny.pt")
    g = torch.Generator().manual_seed(99)
    arrays = {}
    # 1. one batched block-step call
    ins = dummy_inputs(cfg, 3, "float32", g)
    with torch.no_grad():
        d, kv = BlockStep(model, "float32")(*ins)
    for (n, _, _), t in zip(io_spec(cfg, "float32")[0], ins):
        arrays["step." + n] = t.numpy()
    arrays["step.denoised"], arrays["step.kv"] = d.numpy(), kv.numpy()
    # 2. a whole sampled image: 3×5 blocks, both presets, from a uint8 LR image
    R, C, lb = 3, 5, cfg.lr_block
    lr8 = torch.randint(0, 256, (1, 3, R * lb, C * lb), generator=g).float()
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(lr8, (1, 1, 1, 1), mode="replicate"), 3, 1)
    lr8 = smooth.round()
    lr = lr8 / 127.5 - 1
    arrays["image.lr_uint8"] = lr8[0].permute(1, 2, 0).numpy()          # HWC, as sharp gives it
    arrays["image.up"] = upsample(lr, cfg.scale)[0].numpy()
    def sampled(m, prefix, jq=None):
        for preset, p in sampling["presets"].items():
            out = sample_image(m, lr, p["method"], p["steps"], sampling["sigma_min"], sampling["sigma_max"],
                               sampling["rho"], seed=42, jq=jq)
            arrays[f"{prefix}image.{preset}"] = out[0].numpy()
    sampled(model, "")
    arrays["noise.7.1.2.3.0"] = block_noise(7, 1, 2, 3, 0, 16)
    # 3. the same with global conditioning (a second tiny model)
    gcfg = make_config("infdit-tiny/8", sigma_data=0.1, depth=3, global_cond=True, thumb=8)
    gmodel = InfDiT(gcfg).randomize_(4321, std=0.1).eval()
    write_model(gmodel, out_dir / "tiny-global", "tiny-global-fixture", "float32", sampling,
                {"data": "none: random weights (seed 4321)", "steps": 0})
    arrays["global.thumb"] = thumbnail(lr, gcfg.thumb)[0].numpy()
    sampled(gmodel, "global.")
    # 4. the same with the JPEG condition, told quality 75 (a third tiny model)
    jcfg = make_config("infdit-tiny/8", sigma_data=0.1, depth=3, jpeg_cond=True)
    jmodel = InfDiT(jcfg).randomize_(5678, std=0.1).eval()
    write_model(jmodel, out_dir / "tiny-jpeg", "tiny-jpeg-fixture", "float32", sampling,
                {"data": "none: random weights (seed 5678)", "steps": 0})
    arrays["jpeg.jq"] = jpeg_level(torch.tensor([75.0])).numpy()
    sampled(jmodel, "jpeg.", jpeg_level(torch.tensor([75.0])))
    # 5. the same with the neighbours' keys and values pooled 2×2 (issue 41; a fourth tiny model)
    pcfg = make_config("infdit-tiny/8", sigma_data=0.1, depth=3, kv_pool=2)
    pmodel = InfDiT(pcfg).randomize_(8765, std=0.1).eval()
    write_model(pmodel, out_dir / "tiny-pool", "tiny-pool-fixture", "float32", sampling,
                {"data": "none: random weights (seed 8765)", "steps": 0})
    sampled(pmodel, "pool.")
    twin = InfDiT(make_config("infdit-tiny/8", sigma_data=0.1, depth=3)).eval()   # the same weights, unpooled
    twin.load_state_dict(pmodel.state_dict())
    arrays["pool.unpooled.fidelity"] = sample_image(twin, lr, "euler", 1, sampling["sigma_min"], sampling["sigma_max"],
                                                    sampling["rho"], seed=42)[0].numpy()
    index = write_bin(out_dir / "tiny.ref.bin", arrays)
    (out_dir / "tiny.ref.json").write_text(json.dumps({"seed": 42, "grid": [R, C], "arrays": index}, indent=1))
    return out_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", help="training checkpoint (its EMA weights are exported)")
    ap.add_argument("--out", help="output path without extension")
    ap.add_argument("--kv-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--provenance", help="JSON file merged into the manifest's provenance")
    ap.add_argument("--sampling", help="JSON file replacing the default sampling section")
    ap.add_argument("--fixture", action="store_true")
    ap.add_argument("--whole", action="store_true", help="also <out>.onnx: one whole evaluation per call (benchmark reference)")
    ap.add_argument("--random", metavar="CONFIG", help="export a named size with random weights (for cost benchmarks)")
    ap.add_argument("--restorer", metavar="CKPT", help="model/infdit/restore.py checkpoint: export it as <out>.restore.onnx into the manifest")
    ap.add_argument("--attach", metavar="MANIFEST", help="with --restorer: add it to this exported model, its other graphs untouched")
    ap.add_argument("--attention", choices=["fused", "plain"], default="fused",
                    help="the layers' attention: onnxruntime's MultiHeadAttention (default) or plain ONNX operators")
    ap.add_argument("--regraph", metavar="MANIFEST", help="with --ckpt: export that model's input and layer graphs again "
                    "(--attention's form), the rest of its manifest and files untouched")
    a = ap.parse_args()
    if a.regraph:
        mp = Path(a.regraph)
        if mp.suffix != ".json" or not mp.exists():
            ap.error(f"--regraph must name an exported model's manifest (<name>.json), got {a.regraph!r}")
        if not a.ckpt:
            ap.error("--regraph needs --ckpt (the checkpoint the model was exported from)")
        files = regraph(mp, a.ckpt, a.attention)
        print(f"wrote {', '.join(files)} and updated {mp}")
        return
    if a.attach:
        if not a.restorer:
            ap.error("--attach needs --restorer CKPT")
        mp = Path(a.attach)
        if mp.suffix != ".json" or not mp.exists():
            ap.error(f"--attach must name an exported model's manifest (<name>.json), got {a.attach!r}")
        m = attach_restorer(json.loads(mp.read_text()), mp.with_suffix(""), a.restorer)
        mp.write_text(json.dumps(m, indent=1))
        print(f"wrote {mp.with_suffix('')}.restore.onnx and updated {mp}")
        return
    if a.fixture:
        print("fixture written to", make_fixture(ROOT / "test/fixtures"))
        return
    if a.random and a.out:
        model = InfDiT(make_config(a.random, sigma_data=0.1)).randomize_(0, std=0.02)
        out = write_model(model, a.out, a.random, a.kv_dtype, DEFAULT_SAMPLING, {"data": "random weights: for cost benchmarks only"}, whole=a.whole, attention=a.attention)
        print(f"wrote {out}.onnx ({a.random}, random weights)")
        return
    if not (a.ckpt and a.out):
        ap.error("--ckpt and --out are required (or --fixture, or --random CONFIG --out)")
    from training.train import load_ema
    model, st = load_ema(a.ckpt)
    prov = {"steps": st.get("step"), "crops": st.get("crops")}
    if "degradation" in st:   # the recipe the checkpoint was trained with (train.py)
        prov["degradation"] = st["degradation"]
    if a.provenance:
        prov.update(json.loads(Path(a.provenance).read_text()))
    sampling = json.loads(Path(a.sampling).read_text()) if a.sampling else DEFAULT_SAMPLING
    out = write_model(model, a.out, Path(a.out).name, a.kv_dtype, sampling, prov, whole=a.whole, attention=a.attention)
    if a.restorer:
        mp = out.with_suffix(".json")
        mp.write_text(json.dumps(attach_restorer(json.loads(mp.read_text()), out, a.restorer), indent=1))
    if model.base is not None:
        # trained over a base (train.py --base): its graph goes with the model, and up(LR) is its output
        from infdit import base
        mp = out.with_suffix(".json")
        torch.save(base.state_of(model.base), f"{out}.base.ckpt.pt")
        m = base.attach(json.loads(mp.read_text()), out, f"{out}.base.ckpt.pt", st.get("base_notes"))
        m["up"] = "base"
        mp.write_text(json.dumps(m, indent=1))
    size = sum(p.stat().st_size for p in out.parent.glob(out.name + ".*.onnx"))
    print(f"wrote {out}.{{input,layer0…}}.onnx ({size / 1e6:.1f} MB) and {out}.json")


if __name__ == "__main__":
    main()
