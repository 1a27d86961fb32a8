"""The two forward paths of Inf-DiT agree, UniBA is unidirectional, the export is faithful.

    /usr/bin/python3 -m unittest discover -s model/tests -v      (npm run test:model)
"""
import json, sys, tempfile, unittest
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infdit.network import InfDiT, make_config, upsample, to_blocks, from_blocks, lr_contexts, jpeg_level
from infdit.sample import block_noise, karras_sigmas, sample_image

torch.set_num_threads(1)


def setup(R=3, C=5, n=2, seed=0, **kw):
    cfg = make_config("infdit-tiny/8", **kw)
    m = InfDiT(cfg).randomize_(seed).eval()
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(n, 3, R * cfg.lr_block, C * cfg.lr_block, generator=g) * 2 - 1
    x = torch.randn(n, 3, R * cfg.block, C * cfg.block, generator=g)
    return cfg, m, lr, x


def run_blocks(m, x, lr, sigma, pos0, order, thumb=None):
    """Path 2 over a list of batches [(n, r, c), ...], each batch one call, in the given order."""
    cfg = m.cfg
    n, _, H, W = x.shape
    R, C = H // cfg.block, W // cfg.block
    up = upsample(lr, cfg.scale)
    xb, ub, ctx = to_blocks(x, cfg.block), to_blocks(up, cfg.block), lr_contexts(lr, cfg.lr_block)
    L, h, T, dh = cfg.depth, cfg.heads, cfg.tokens, cfg.head_dim
    kv, out = {}, torch.zeros_like(xb)
    for batch in order:
        idx = [i * R * C + r * C + c for i, r, c in batch]
        nb = torch.zeros(len(batch), 3, L, 2, h, T, dh)
        pres = torch.zeros(len(batch), 3)
        for j, (i, r, c) in enumerate(batch):
            for s, (rr, cc) in enumerate(((r - 1, c), (r, c - 1), (r - 1, c - 1))):
                if rr >= 0 and cc >= 0:
                    nb[j, s] = kv[(i, rr, cc)]; pres[j, s] = 1
        pos = torch.stack([pos0[i] + torch.tensor([r * cfg.grid, c * cfg.grid], dtype=torch.float32) for i, r, c in batch])
        th = thumb[[i for i, _, _ in batch]] if thumb is not None else None
        o, k = m.forward_blocks(xb[idx], ub[idx], ctx[idx], sigma[[i for i, _, _ in batch]], pos, nb, pres, th)
        for j, (i, r, c) in enumerate(batch):
            out[idx[j]] = o[j]; kv[(i, r, c)] = k[j]
    return from_blocks(out, n, R, C)


def run_layers(m, x, lr, sigma, pos0, need, batch=3):
    """Path 3: layer by layer. need[(i, r, c)] = depth d: the block runs the input stage and
    layers 0 … d-1 (d = L: to the denoised block). Returns {(i, r, c): denoised} for d = L."""
    cfg = m.cfg
    n, _, H, W = x.shape
    R, C = H // cfg.block, W // cfg.block
    up = upsample(lr, cfg.scale)
    xb, ub, ctx = to_blocks(x, cfg.block), to_blocks(up, cfg.block), lr_contexts(lr, cfg.lr_block)
    L = cfg.depth
    ix = lambda i, r, c: i * R * C + r * C + c
    pos = lambda i, r, c: pos0[i] + torch.tensor([r * cfg.grid, c * cfg.grid], dtype=torch.float32)
    hid, cond, kv, out = {}, {}, {}, {}
    for k in range(L + 1):                                   # 0: input stage; k: layer k-1
        todo = sorted(b for b, d in need.items() if d >= k)
        for j in range(0, len(todo), batch):
            bt = todo[j:j + batch]
            idx = [ix(*b) for b in bt]
            p = torch.stack([pos(*b) for b in bt])
            sg = sigma[[b[0] for b in bt]]
            if k == 0:
                h, c, kk = m.layer_input(xb[idx], ub[idx], sg, p)
                for b, hh, cc, kv_ in zip(bt, h, c, kk):
                    hid[b], cond[b], kv[b + (0,)] = hh, cc, kv_
                continue
            li = k - 1
            T = cfg.tokens
            k4 = torch.zeros(len(bt), cfg.heads, 4 * T, cfg.head_dim); v4 = torch.zeros_like(k4)
            pres = torch.zeros(len(bt), 3)
            for q, (i, r, c) in enumerate(bt):
                for s, (rr, cc) in enumerate(((r, c), (r - 1, c), (r, c - 1), (r - 1, c - 1))):
                    if rr >= 0 and cc >= 0:
                        k4[q, :, s * T:(s + 1) * T] = kv[(i, rr, cc, li)][0]
                        v4[q, :, s * T:(s + 1) * T] = kv[(i, rr, cc, li)][1]
                        if s:
                            pres[q, s - 1] = 1
            h = torch.stack([hid[b] for b in bt]); c = torch.stack([cond[b] for b in bt])
            h, nxt = m.layer_step(li, h, c, p, k4, v4, pres, ctx[idx] if li == 0 else None)
            for q, b in enumerate(bt):
                hid[b] = h[q]
                if nxt is not None:
                    kv[b + (li + 1,)] = nxt[q]
            if li == L - 1:
                o = m.layer_output(h, c, xb[idx], ub[idx], sg)
                for q, b in enumerate(bt):
                    out[b] = o[q]
    return out


class TestLayerPath(unittest.TestCase):
    """The layer graphs' path: equal to the whole-image path, and a block needs only its cone."""

    def setUp(self):
        self.cfg, self.m, self.lr, self.x = setup(depth=3)
        self.sigma = torch.tensor([0.3, 2.5])
        self.pos0 = torch.tensor([[0.0, 0.0], [4000.0, 16000.0]])
        with torch.no_grad():
            self.whole = self.m.forward_image(self.x, self.lr, self.sigma, self.pos0)

    def block(self, i, r, c):
        B = self.cfg.block
        return self.whole[i, :, r * B:(r + 1) * B, c * B:(c + 1) * B]

    def test_all_blocks_layer_major(self):
        need = {(i, r, c): self.cfg.depth for i in range(2) for r in range(3) for c in range(5)}
        with torch.no_grad():
            out = run_layers(self.m, self.x, self.lr, self.sigma, self.pos0, need)
        for (i, r, c), o in out.items():
            self.assertLessEqual((o - self.block(i, r, c)).abs().max().item(), 1e-4)

    def test_far_block_from_its_cone_alone(self):
        L = self.cfg.depth
        # block (2,4): a block d steps up/left (Chebyshev, diagonals count one) is needed to depth L-d
        need = {(1, r, c): L - max(2 - r, 4 - c) for r in range(3) for c in range(5) if max(2 - r, 4 - c) <= L}
        self.assertLess(len(need), 15)                       # the cone, not the rectangle
        with torch.no_grad():
            out = run_layers(self.m, self.x, self.lr, self.sigma, self.pos0, need, batch=2)
        self.assertEqual(list(out), [(1, 2, 4)])
        self.assertLessEqual((out[(1, 2, 4)] - self.block(1, 2, 4)).abs().max().item(), 1e-4)
        # the cone is also necessary: one layer less anywhere in it and a K/V the block needs is missing
        short = dict(need); short[(1, 1, 3)] -= 1
        with torch.no_grad():
            self.assertRaises(KeyError, run_layers, self.m, self.x, self.lr, self.sigma, self.pos0, short)


class TestPooledNeighbours(unittest.TestCase):
    """kv_pool 2 (issue 41): a neighbour's keys and values averaged over 2×2 tokens, its pooled keys' logits
    raised by ln 4, so a query reads T + 3T/4 keys instead of 4T."""

    def setUp(self):
        self.cfg, self.m, self.lr, self.x = setup(depth=3, kv_pool=2)
        self.sigma, self.pos0 = torch.tensor([0.3, 2.5]), torch.tensor([[0.0, 0.0], [4000.0, 16000.0]])

    def test_equal_groups_attend_as_unpooled(self):
        """Where every 2×2 group of a neighbour's tokens has one key and one value, pooling changes nothing:
        the ln 4 stands for the four keys a pooled one replaces (without it the neighbours' weight falls 4×)."""
        cfg, m = self.cfg, self.m
        whole = InfDiT(make_config("infdit-tiny/8", depth=3)).eval()
        whole.load_state_dict(m.state_dict())
        g, T, h, dh = cfg.grid, cfg.tokens, cfg.heads, cfg.head_dim
        gen = torch.Generator().manual_seed(1)
        q = torch.randn(2, h, T, dh, generator=gen)
        def grouped():   # (2,h,T,dh) whose 2×2 token groups are equal
            t = torch.randn(2, h, g // 2, 1, g // 2, 1, dh, generator=gen).expand(-1, -1, -1, 2, -1, 2, -1)
            return t.reshape(2, h, T, dh)
        keys, vals = [torch.randn(2, h, T, dh, generator=gen)] + [grouped() for _ in range(3)], \
                     [torch.randn(2, h, T, dh, generator=gen)] + [grouped() for _ in range(3)]
        present = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
        with torch.no_grad():
            pooled = m.blocks[0].attn.mix(q, keys, vals, m._bias(present))
            plain = whole.blocks[0].attn.mix(q, keys, vals, whole._bias(present))
            self.assertEqual(m._bias(present).shape[-1], T + 3 * T // 4)
            self.assertLessEqual((pooled - plain).abs().max().item(), 1e-5)
            # and it pools: neighbours that vary inside a group give another output
            keys[1] = torch.randn(2, h, T, dh, generator=gen)
            self.assertGreater((m.blocks[0].attn.mix(q, keys, vals, m._bias(present))
                                - whole.blocks[0].attn.mix(q, keys, vals, whole._bias(present))).abs().max().item(), 1e-4)

    def test_layer_path_is_the_whole_image(self):
        """The layer graphs' path pools inside the graph (the engine hands every slot whole): equal to the
        whole-image path, the blocks' own path too."""
        with torch.no_grad():
            whole = self.m.forward_image(self.x, self.lr, self.sigma, self.pos0)
            need = {(i, r, c): self.cfg.depth for i in range(2) for r in range(3) for c in range(5)}
            out = run_layers(self.m, self.x, self.lr, self.sigma, self.pos0, need)
            blocks = run_blocks(self.m, self.x, self.lr, self.sigma, self.pos0,
                                [[(i, r, c)] for i in range(2) for r in range(3) for c in range(5)])
        B = self.cfg.block
        for (i, r, c), o in out.items():
            self.assertLessEqual((o - whole[i, :, r * B:(r + 1) * B, c * B:(c + 1) * B]).abs().max().item(), 1e-4)
        self.assertLessEqual((blocks - whole).abs().max().item(), 1e-4)


class TestJpegCondition(unittest.TestCase):
    """train.py --jpeg-cond: the LR's JPEG quality added to the noise embedding."""

    def test_closed_at_the_start_then_it_matters(self):
        cfg, plain, lr, x = setup(depth=2)
        sigma = torch.tensor([0.3, 2.5])
        m = InfDiT(make_config("infdit-tiny/8", depth=2, jpeg_cond=True)).eval()
        missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
        self.assertEqual((sorted({k.split(".")[0] for k in missing}), unexpected), (["q_embedder"], []))
        jq = jpeg_level(torch.tensor([75.0, 30.0]))
        self.assertTrue(torch.allclose(jq, torch.tensor([0.25, 0.7])))
        self.assertEqual(jpeg_level(torch.tensor([0.0])).item(), 0.0)      # never a JPEG
        with torch.no_grad():
            want = plain.forward_image(x, lr, sigma)
            # a fine-tune from the released weights starts exactly where they are, whatever it is told
            self.assertTrue(torch.equal(m.forward_image(x, lr, sigma, jq=jq), want))
            self.assertTrue(torch.equal(m.forward_image(x, lr, sigma), want))
            torch.nn.init.normal_(m.q_embedder.mlp[2].weight, std=0.1)   # as training opens it
            told, none = m.forward_image(x, lr, sigma, jq=jq), m.forward_image(x, lr, sigma, jq=torch.zeros(2))
        self.assertGreater((told - none).abs().max().item(), 1e-3)


class TestPaths(unittest.TestCase):
    def check(self, order_fn, **kw):
        cfg, m, lr, x = setup(**kw)
        sigma = torch.tensor([0.3, 2.5])
        pos0 = torch.tensor([[0.0, 0.0], [4000.0, 16000.0]])   # far into a 65,536-px image (patch 8)
        thumb = torch.rand(2, 3, cfg.thumb, cfg.thumb) if cfg.global_cond else None
        with torch.no_grad():
            whole = m.forward_image(x, lr, sigma, pos0, thumb)
            blocks = run_blocks(m, x, lr, sigma, pos0, order_fn(3, 5), thumb)
        diff = (whole - blocks).abs().max().item()
        self.assertLessEqual(diff, 1e-4)
        self.assertGreater(whole.abs().mean().item(), 0.05)   # not trivially zero

    def test_raster_batch1(self):
        self.check(lambda R, C: [[(i, r, c)] for i in range(2) for r in range(R) for c in range(C)])

    def test_antidiagonal_batches(self):
        # every block of one anti-diagonal of both images in one call
        self.check(lambda R, C: [[(i, r, d - r) for i in range(2) for r in range(R) if 0 <= d - r < C]
                                 for d in range(R + C - 1)])

    def test_antidiagonal_batches_of_3(self):
        diags = [[(i, r, d - r) for i in range(2) for r in range(3) if 0 <= d - r < 5] for d in range(7)]
        self.check(lambda R, C: [dg[k:k + 3] for dg in diags for k in range(0, len(dg), 3)])

    def test_global_conditioning(self):
        self.check(lambda R, C: [[(i, r, c)] for i in range(2) for r in range(R) for c in range(C)], global_cond=True)

    def test_image_target_without_cross_attention(self):
        self.check(lambda R, C: [[(i, r, c)] for i in range(2) for r in range(R) for c in range(C)],
                   target="image", lr_cross_attn=False)

    def test_cpu_bf16_autocast_trains_and_stays_near_float32(self):
        # train.py --cpu-bf16: torch 1.13's CPU autocast refused the float32 LayerNorm weights on bf16
        # input (RuntimeError); the norms now run in float32 under it, as CUDA autocast does
        cfg, m, lr, x = setup()
        sigma, pos0 = torch.tensor([0.3, 2.5]), torch.zeros(2, 2)
        with torch.no_grad():
            ref = m.forward_image(x, lr, sigma, pos0)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = m.forward_image(x, lr, sigma, pos0)
        out.float().square().mean().backward()
        self.assertTrue(all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad))
        self.assertLess((out.float() - ref).abs().max().item(), 0.05 * ref.abs().max().item())

    @unittest.skipUnless(hasattr(torch.nn.functional, "scaled_dot_product_attention"),
                         "torch 2.x only (the GPU's; Debian's 1.13 has no fused attention)")
    def test_fused_attention_is_the_plain_one(self):
        # on CUDA, training attends through torch 2.x's fused kernel, a path CI's torch 1.13 never runs:
        # it must be the same function as the plain one (both key layouts, a masked neighbour slot, no bias),
        # whichever way SDPA gets the bias ("mask": attn_mask; "fold": a q/k channel; model/measure/speed.py times both)
        from infdit import network
        from infdit.network import attend, NEG
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 3, 16, 8, generator=g) for _ in range(3))
        k4, v4 = torch.randn(2, 3, 64, 8, generator=g), torch.randn(2, 3, 64, 8, generator=g)
        bias = torch.zeros(2, 1, 1, 64); bias[0, ..., 16:32] = NEG
        v5 = v4.clone(); v5[0, :, 16:32] += 100
        try:
            for mode in ("mask", "fold"):
                network.SDPA_BIAS = mode
                for args in ((q, k4, v4, bias), (q, None, v4, bias, k4.transpose(-1, -2)), (q, k, v, None)):
                    plain, fused = attend(*args, fused=False), attend(*args, fused=True)
                    self.assertLess((plain - fused).abs().max().item(), 1e-5, mode)
                # the masked slot gets no weight: values there do not change the output
                self.assertLess((attend(q, k4, v5, bias, fused=True) - attend(q, k4, v4, bias, fused=True)).abs().max().item(), 1e-5, mode)
        finally:
            network.SDPA_BIAS = "mask"


class TestUnidirectional(unittest.TestCase):
    def test_dependencies(self):
        cfg, m, lr, x = setup(n=1)
        sigma, B = torch.tensor([1.0]), cfg.block
        with torch.no_grad():
            base = m.forward_image(x, lr, sigma)
            blk = lambda img: img[:, :, B:2 * B, 2 * B:3 * B]          # block (1,2)
            # direct neighbours change it clearly; (0,0) only through two layers (> 0); lower/right never
            for (r, c), should_change in [((2, 2), False), ((1, 3), False), ((2, 4), False), ((2, 1), False),
                                          ((0, 2), True), ((1, 1), True), ((0, 1), True), ((0, 0), None)]:
                x2 = x.clone()
                x2[:, :, r * B:(r + 1) * B, c * B:(c + 1) * B] += torch.randn(1, 3, B, B)
                d = (blk(m.forward_image(x2, lr, sigma)) - blk(base)).abs().max().item()
                if should_change is None:
                    self.assertGreater(d, 0.0, f"block (1,2) ignores ({r},{c})")
                elif should_change:
                    self.assertGreater(d, 1e-4, f"block (1,2) ignores ({r},{c})")
                else:
                    self.assertEqual(d, 0.0, f"block (1,2) depends on ({r},{c})")

    def test_independent_ablation_differs(self):
        cfg, m, lr, x = setup(n=1)
        with torch.no_grad():
            a = m.forward_image(x, lr, torch.tensor([1.0]))
            b = m.forward_image(x, lr, torch.tensor([1.0]), independent=True)
        B = cfg.block
        self.assertEqual((a[..., :B, :B] - b[..., :B, :B]).abs().max().item(), 0.0)  # (0,0) has no neighbours
        self.assertGreater((a - b).abs().max().item(), 1e-3)


class TestSampler(unittest.TestCase):
    def test_noise_is_keyed_and_normal(self):
        a = block_noise(7, 1, 2, 3, 0, 50000)
        self.assertTrue(np.array_equal(a, block_noise(7, 1, 2, 3, 0, 50000)))
        self.assertFalse(np.array_equal(a[:100], block_noise(7, 1, 2, 4, 0, 100)))
        self.assertAlmostEqual(float(a.mean()), 0.0, delta=0.02)
        self.assertAlmostEqual(float(a.std()), 1.0, delta=0.02)

    def test_schedule(self):
        s = karras_sigmas(4, 0.002, 4.0)
        self.assertEqual(len(s), 5); self.assertAlmostEqual(s[0], 4.0); self.assertAlmostEqual(s[3], 0.002)
        self.assertEqual(karras_sigmas(1, 0.002, 4.0), [4.0, 0.0])

    def test_one_step_euler_is_the_denoiser(self):
        cfg, m, lr, _ = setup(n=1)
        with torch.no_grad():
            out = sample_image(m, lr, "euler", 1, sigma_max=1.0, seed=3)
            from infdit.sample import initial_noise
            x0 = upsample(lr, cfg.scale) + initial_noise(3, 5, cfg.block, 3)
            d = m.forward_image(x0, lr, torch.tensor([1.0]))
        self.assertLessEqual((out - d).abs().max().item(), 1e-5)


class TestExport(unittest.TestCase):
    def test_ort_attention_is_the_plain_one(self):
        """The layer graphs' attention is exported as onnxruntime's MultiHeadAttention (export.ort_attention):
        the op's body, which the exported node stands for, gives the plain path's blocks, masked border
        neighbours and the LR cross-attention included (the engine's fixture tests hold onnxruntime to it)."""
        from infdit import export
        cfg, m, lr, x = setup(depth=3)
        sigma, pos0 = torch.tensor([0.3, 2.5]), torch.tensor([[0.0, 0.0], [4000.0, 16000.0]])
        need = {(i, r, c): cfg.depth for i in range(2) for r in range(3) for c in range(5)}
        with torch.no_grad():
            plain = run_layers(m, x, lr, sigma, pos0, need)
            hook = export.ort_attention(cfg.heads)
            for blk in m.blocks:
                blk.attn.ort_attention = hook
                if blk.cross is not None:
                    blk.cross.ort_attention = hook
            fused = run_layers(m, x, lr, sigma, pos0, need)
        self.assertTrue(any(blk.cross is not None for blk in m.blocks))
        self.assertEqual(fused.keys(), plain.keys())
        for k in plain:
            self.assertLessEqual((fused[k] - plain[k]).abs().max().item(), 1e-5)
        # and the hook is used: a different op gives different blocks
        with torch.no_grad():
            for blk in m.blocks:
                blk.attn.ort_attention = lambda q, k, v, keep: hook(q, k, v, None)
            open_border = run_layers(m, x, lr, sigma, pos0, need)
        self.assertGreater((open_border[(0, 0, 0)] - plain[(0, 0, 0)]).abs().max().item(), 1e-4)   # 7e-4 here; equal ones ≤ 1e-5

    def test_fixture_is_reproducible(self):
        """Regenerating the fixture gives the committed reference arrays (to float tolerance:
        another BLAS may round the last bits differently) and a model under 2 MB."""
        from infdit import export
        with tempfile.TemporaryDirectory() as d:
            export.make_fixture(Path(d))
            root = Path(__file__).resolve().parents[2] / "test/fixtures"
            a = np.frombuffer((Path(d) / "tiny.ref.bin").read_bytes(), dtype=np.float32)
            b = np.frombuffer((root / "tiny.ref.bin").read_bytes(), dtype=np.float32)
            self.assertEqual(a.shape, b.shape)
            self.assertLess(float(np.abs(a - b).max()), 1e-4)
            size = sum(p.stat().st_size for p in Path(d).glob("tiny.*.onnx"))
            self.assertLess(size, 2_000_000)
            m = json.loads((Path(d) / "tiny.json").read_text())
            self.assertEqual([g["name"] for g in m["graphs"]], ["input"] + [f"layer{i}" for i in range(m["layers"])])


if __name__ == "__main__":
    unittest.main()
