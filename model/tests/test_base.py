"""model/infdit/base.py: the SAFMN++ checkpoint layout, the canonical tiled base (local, equal to the whole
image's inside), and a transformer trained over it (train.py --base --zero-output) that starts as the base."""
import os, re, subprocess, sys, tempfile, unittest
from pathlib import Path

import numpy as np
import torch

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room
from infdit import base  # noqa: E402
from infdit.base import BaseNet, BaseConfig, from_safmnpp, tiled_tensor, crop_up, CELL  # noqa: E402
from infdit.network import InfDiT, make_config, upsample  # noqa: E402
from training.train import load_ema  # noqa: E402
from test_train import make_split, train, RELEASE  # noqa: E402


def wave(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    img = torch.stack([torch.sin(x / (2 + c) + y / 3) for c in range(3)])[None].repeat(n, 1, 1, 1)
    return (img * 0.8 + 0.1 * torch.randn(n, 3, h, w, generator=g)).clamp(-1, 1)


class BaseTest(unittest.TestCase):
    def test_a_safmnpp_checkpoint_loads_under_our_names(self):
        torch.manual_seed(0)
        net = BaseNet(BaseConfig())
        inverse = {"stem.weight": "to_feat.weight", "head.weight": "to_img.0.weight"}
        parts = {"modulate.proj": "conv1.proj", "modulate.coarse": "conv1.dwconv", "modulate.out": "conv1.out",
                 "mix.expand": "conv2.conv1", "mix.reduce": "conv2.conv2"}
        theirs = {}
        for k, v in net.state_dict().items():
            if k in inverse:
                theirs[inverse[k]] = v
            else:
                _, i, a, b, leaf = k.split(".")
                theirs[f"feats.{i}.{parts[a + '.' + b]}.{leaf}"] = v
        other = BaseNet(BaseConfig())
        other.load_state_dict(from_safmnpp({"params_ema": theirs, "params": {}}))   # strict: every tensor placed
        x = torch.rand(1, 3, 16, 24)
        self.assertTrue(torch.equal(net(x), other(x)))
        self.assertEqual(sum(p.numel() for p in net.parameters()), 211572)     # SAFMN++'s published 0.21 M

    def test_tiled_equals_the_whole_image_inside_when_the_halo_covers_the_reach(self):
        torch.manual_seed(1)
        net = BaseNet(BaseConfig(dim=8, blocks=1, ffn=1.5, pooled=2)).eval()
        halo = -(-net.receptive_radius // CELL) * CELL        # 32 ≥ the 27 px a block can reach
        lr = wave(1, 80, 96)
        with torch.no_grad():
            whole = net((lr + 1) * 0.5) * 2 - 1
        t = tiled_tensor(net, lr, tile=32, halo=halo)
        r = 4 * net.receptive_radius    # away from the image's own edge (zero padding there, replicated here)
        d = (t - whole)[:, :, r:-r, r:-r].abs().max().item()
        self.assertLess(d, 1e-5)
        # a halo short of the reach leaves the tiles' borders different: the measure sees it
        short = tiled_tensor(net, lr, tile=32, halo=8)
        self.assertGreater((short - whole)[:, :, r:-r, r:-r].abs().max().item(), 1e-4)
        # batching windows differently changes nothing
        self.assertTrue(torch.equal(t, tiled_tensor(net, lr, tile=32, halo=halo, batch=1)))

    def test_a_jpeg_aware_base_starts_as_its_base_reads_its_level_and_exports_without_a_restorer(self):
        torch.manual_seed(4)
        plain = BaseNet(BaseConfig(dim=8, blocks=2, ffn=1.5, pooled=2)).eval()
        aware = BaseNet(BaseConfig(dim=8, blocks=2, ffn=1.5, pooled=2, jq=True)).eval()
        aware.load_state_dict(base.jpeg_aware(plain.state_dict()))
        lr = wave(1, 48, 64, seed=5)
        with torch.no_grad():   # the level channel at zero weight: the base itself, at every level
            for level in (0.0, 0.25, 0.7):
                self.assertTrue(torch.allclose(tiled_tensor(aware, lr, 32, 16, jq=level), tiled_tensor(plain, lr, 32, 16), atol=1e-6))
            aware.stem.weight[:, 3].fill_(0.5)
            a0, a1 = tiled_tensor(aware, lr, 32, 16, jq=0.0), tiled_tensor(aware, lr, 32, 16, jq=0.4)
        self.assertTrue(torch.allclose(a0, tiled_tensor(plain, lr, 32, 16), atol=1e-6), "level 0 is a clean LR: the base's output")
        self.assertGreater((a1 - a0).abs().max().item(), 1e-3, "the level does not reach the output")
        # exported into a model with a restorer: the graph takes jq, the manifest says so, the restorer goes
        m = {"name": "t", "scale": 4, "graphs": [{"name": "input"}, {"name": "restore"}], "restorer": {"enabled": True}}
        with tempfile.TemporaryDirectory() as d:
            out = base.attach(m, Path(d) / "t", aware, {}, 32, 16)
            import onnx   # (what onnxruntime makes of it: test/base.test.ts, on the fixture base.py fixture --jq writes)
            self.assertEqual([i.name for i in onnx.load(str(Path(d) / "t.base.onnx")).graph.input], ["lr", "jq"])
        self.assertTrue(out["base"]["jq"])
        self.assertNotIn("restorer", out)
        self.assertEqual([g["name"] for g in out["graphs"]], ["input", "base"])

    def test_a_training_crop_sees_the_canonical_base(self):
        torch.manual_seed(2)
        net = BaseNet(BaseConfig(dim=8, blocks=2, ffn=1.5, pooled=2)).eval()
        lr = wave(2, 40, 40, seed=3)
        # a crop inside one tile: one window, padded by the halo alone, differs from the full tile's by what
        # lies beyond the halo (nothing here: the rest of the tile is the crop's replicated edge)
        self.assertLess((crop_up(net, lr, halo=24) - tiled_tensor(net, lr, tile=64, halo=24)).abs().max().item(), 2 / 255)

    def test_a_transformer_over_the_base_uses_it(self):
        torch.manual_seed(4)
        cfg = make_config("infdit-s/4"); cfg.up = "base"
        m = InfDiT(cfg).eval()
        lr = wave(1, 32, 32)
        with self.assertRaisesRegex(RuntimeError, "none is attached"):
            m.up_of(lr)
        net = BaseNet(BaseConfig(dim=8, blocks=2, ffn=1.5, pooled=2))
        m.attach_base(net)
        self.assertFalse(any(n.startswith("base") for n in m.state_dict()), "the base is not the transformer's to train")
        self.assertTrue(torch.equal(m.up_of(lr), tiled_tensor(net, lr)))
        self.assertGreater((m.up_of(lr) - upsample(lr, 4)).abs().max().item(), 1e-3)


def split_and_base(tmp):
    """A two-photo training split and a small random base checkpoint (base.pt) in folder tmp."""
    d = Path(tmp)
    make_split(d)
    torch.manual_seed(5)
    net = BaseNet(BaseConfig(dim=8, blocks=2, ffn=1.5, pooled=2))
    torch.save({"config": base.asdict(net.cfg), "ema": net.state_dict()}, d / "base.pt")
    return d


class TrainOverBaseTest(unittest.TestCase):
    def test_zero_output_starts_as_the_base_and_the_checkpoint_keeps_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            d = split_and_base(tmp)
            r = train("--data", str(d), "--ckpt", str(d / "run"), "--init", str(RELEASE), "--base", str(d / "base.pt"),
                      "--zero-output", "--max-steps", "1", "--lr", "0", "--warmup", "1")
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            model, st = load_ema(d / "run" / "last.pt")
            self.assertEqual(model.cfg.up, "base")
            self.assertIsNotNone(model.base)
            from infdit.sample import sample_image
            lr = wave(1, 32, 32)
            out = sample_image(model, lr, "euler", 1, 0.002, 4.0, 7.0, seed=0)
            # one Euler step from σ_max 4: the base plus c_skip·σ_max·ε, ~0.3/255 rms; nothing of the transformer
            self.assertLess((out - model.up_of(lr)).pow(2).mean().sqrt().item(), 1.5 / 255)
            r = train("--data", str(d), "--ckpt", str(d / "run"), "--resume", "--base", str(d / "base.pt"), "--max-steps", "2")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("a resumed run keeps the base", r.stderr)

    def test_a_teacher_is_the_fidelity_target(self):
        """--teacher: at σ_max the target is the teacher's output, not the photo. With the base itself as the teacher,
        a zero-output model (exactly the base at σ_max) has almost nothing to learn; against the photo it has."""
        with tempfile.TemporaryDirectory() as tmp:
            d = split_and_base(tmp)
            common = ["--data", str(d), "--init", str(RELEASE), "--base", str(d / "base.pt"), "--zero-output", "--max-steps", "1",
                      "--lr", "0", "--warmup", "1", "--p-sigma-max", "1"]
            losses = {}
            for name, extra in (("photo", []), ("teacher", ["--teacher", str(d / "base.pt")])):
                r = train("--ckpt", str(d / name), *common, *extra)
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                losses[name] = float(re.search(r"loss ([0-9.]+)", r.stdout).group(1))
            self.assertLess(losses["teacher"], 0.01)
            self.assertGreater(losses["photo"], 20 * losses["teacher"])
            r = train("--ckpt", str(d / "x"), "--data", str(d), "--teacher", str(d / "base.pt"), "--max-steps", "1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--teacher needs a model over a base", r.stderr)


if __name__ == "__main__":
    unittest.main()
