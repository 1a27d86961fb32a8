"""train.py end to end on a two-photo split made here: a fine-tune's weight average, the real2
mix option and its record in the checkpoint. A few steps of 64² crops: seconds on the CPU."""
import json, os, subprocess, sys, tempfile, unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL))
from training.train import load_parts  # noqa: E402
from infdit.network import grid_loss, seam_excess_loss, phase_loss  # noqa: E402

RELEASE = MODEL / "release" / "infdit-s4.ckpt.pt"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"   # torch 1.13 on CPU: 10× from page faults otherwise


def make_split(folder):
    rng = np.random.default_rng(0)
    index = []
    for i in range(2):
        y, x = np.mgrid[0:192, 0:192]
        img = np.stack([(x * (i + 1)) % 256, (y * 3) % 256, (x + y) % 256], -1) + rng.integers(0, 40, (192, 192, 3))
        name = f"train/synthetic-{i}.png"
        (folder / "train").mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
        index.append({"file": name, "split": "train", "packed": name})
    (folder / "index.json").write_text(json.dumps(index))


def train(*args):
    env = dict(os.environ, **({"LD_PRELOAD": TCMALLOC} if os.path.exists(TCMALLOC) else {}))
    return subprocess.run([sys.executable, str(MODEL / "training/train.py"), "--config", "infdit-s/4", "--crop", "64", "--batch", "2",
                           "--log-every", "1", "--device", "cpu", *args], capture_output=True, text=True, env=env, timeout=600)


class TrainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)
        make_split(cls.dir)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_fine_tune_keeps_the_average_near_its_start_and_records_the_mix(self):
        ck = self.dir / "ft"
        mix = "bicubic=0.5,bicubic+jpeg=0.5,second-order=0"
        r = train("--data", str(self.dir), "--ckpt", str(ck), "--init", str(RELEASE), "--task", "real2", "--mix", mix,
                  "--max-steps", "3", "--lr", "1e-2", "--warmup", "1", "--ema", "0.999")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        init, st = load_parts(RELEASE)["ema"], load_parts(ck / "last.pt")
        moved = max((st["model"][k] - v).abs().max().item() for k, v in init.items())
        averaged = max((st["ema"][k] - v).abs().max().item() for k, v in init.items())
        # decay 0.999 from the first step: 3 steps move the average by ≤ 0.3% of the raw weights'
        # move (with the fresh-model warm-up, decay 0.1 at step 0, it would follow them almost wholly)
        self.assertGreater(moved, 1e-3)
        self.assertLess(averaged, 0.01 * moved)
        self.assertEqual(st["degradation"]["recipe"]["mix"], {"bicubic": 0.5, "bicubic+jpeg": 0.5, "second-order": 0.0})
        # resumed without --mix, the run keeps the mix it was started with
        r = train("--data", str(self.dir), "--ckpt", str(ck), "--resume", "--task", "real2", "--max-steps", "4")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        st = load_parts(ck / "last.pt")
        self.assertEqual(st["step"], 4)
        self.assertEqual(st["degradation"]["recipe"]["mix"]["second-order"], 0.0)

    def test_jpeg_cond_fine_tune_starts_from_plain_weights_and_opens_its_embedder(self):
        ck = self.dir / "jq"
        r = train("--data", str(self.dir), "--ckpt", str(ck), "--init", str(RELEASE), "--task", "real2", "--jpeg-cond",
                  "--mix", "bicubic=0,bicubic+jpeg=1,second-order=0", "--max-steps", "2", "--lr", "1e-2", "--warmup", "1")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        st = load_parts(ck / "last.pt")
        self.assertTrue(st["config"]["jpeg_cond"])
        init = load_parts(RELEASE)["ema"]
        self.assertEqual(set(st["model"]) - set(init), {f"q_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")})
        self.assertGreater(st["model"]["q_embedder.mlp.2.weight"].abs().max().item(), 0)   # started at 0, trained
        r = train("--data", str(self.dir), "--ckpt", str(self.dir / "jq-bad"), "--task", "bicubic", "--jpeg-cond", "--max-steps", "1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--jpeg-cond needs --task real2", r.stderr)

    def test_tune_last1_moves_only_the_last_layer_and_the_output_stage_and_resume_keeps_it(self):
        ck = self.dir / "last1"
        r = train("--data", str(self.dir), "--ckpt", str(ck), "--init", str(RELEASE), "--tune", "last1",
                  "--max-steps", "2", "--lr", "1e-2", "--warmup", "1")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertIn("M trained)", r.stdout)
        init, st = load_parts(RELEASE)["ema"], load_parts(ck / "last.pt")
        moved = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks.") else "")
                 for k, v in init.items() if not torch.equal(st["model"][k], v)}
        self.assertEqual(moved, {"final_layer", "blocks.7"})
        r = train("--data", str(self.dir), "--ckpt", str(ck), "--resume", "--max-steps", "3")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("trained with --tune last1", r.stderr)
        for bad in ("last0", "last9", "head", "final1"):
            r = train("--data", str(self.dir), "--ckpt", str(self.dir / "bad-tune"), "--tune", bad, "--max-steps", "1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(f"--tune {bad!r}: give all, final, or lastN with N from 1 to 8", r.stderr)
            self.assertFalse((self.dir / "bad-tune" / "last.pt").exists())

    def test_bad_mix_is_refused_with_what_is_accepted(self):
        for bad in ("bicubic=0.5", "bicubic=1,bicubic+jpeg=0.5,second-order=-0.5", "bicubic:1"):
            r = train("--data", str(self.dir), "--ckpt", str(self.dir / "bad"), "--task", "real2", "--mix", bad, "--max-steps", "1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--mix", r.stderr)
            self.assertIn("second-order", r.stderr)
            self.assertFalse((self.dir / "bad" / "last.pt").exists())

    def test_bad_seam_weight_is_refused(self):
        for bad, says in ((("--seam-weight", "-1"), "--seam-weight -1"), (("--seam-weight", "2"), "--crop 64 is under 2 blocks"),
                          (("--lr-grid-weight", "-0.5"), "--lr-grid-weight -0.5"), (("--cascade", "1.5"), "--cascade 1.5"),
                          (("--cascade", "0.5"), "--crop 64 is not a multiple of 256 px"), (("--scale-aug", "0.5"), "--scale-aug 0.5")):
            r = train("--data", str(self.dir), "--ckpt", str(self.dir / "bad-seam"), *bad, "--max-steps", "1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(says, r.stderr)
            self.assertFalse((self.dir / "bad-seam" / "last.pt").exists())

    def test_profile_says_where_the_time_goes_and_the_kernel_table(self):
        # model/measure/speed.py's figures are train.py's own profile line (and, with --torch-profile, torch.profiler's
        # table); main() returns the rate, which speed.py ranks
        r = train("--data", str(self.dir), "--ckpt", str(self.dir / "prof"), "--max-steps", "3", "--profile-skip", "1",
                  "--profile-steps", "2", "--torch-profile", "--attn-bias", "fold")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertRegex(r.stdout, r"profile over 2 steps: data [0-9.]+ ms .*forward\+backward [0-9.]+ ms .*; [0-9.]+ crops/s")
        self.assertIn("torch.profiler, 2 steps, by self_cpu_time_total", r.stdout)
        self.assertRegex(r.stdout, r"aten::(mm|bmm|addmm|matmul)")
        self.assertEqual(load_parts(self.dir / "prof" / "last.pt")["args"]["attn_bias"], "fold")

    @unittest.skipIf(hasattr(torch.nn.functional, "scaled_dot_product_attention"), "torch 1.13's refusal (CI's torch)")
    def test_sdpa_backend_needs_torch_2(self):
        r = train("--data", str(self.dir), "--ckpt", str(self.dir / "sdpa"), "--sdpa-backend", "flash", "--max-steps", "1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--sdpa-backend flash: this torch", r.stderr)
        self.assertIn("leave it at auto", r.stderr)

    def first_seam_losses(self, kind, weights):
        """The logged loss of the same first step (same seed, crops, noise) at each --seam-weight
        (kind "lr-grid": at each --lr-grid-weight)."""
        losses = []
        for w in weights:
            flags = ("--lr-grid-weight", w) if kind == "lr-grid" else ("--seam-weight", w, "--seam-loss", kind)
            r = train("--data", str(self.dir), "--ckpt", str(self.dir / f"{kind}{w}"), "--init", str(RELEASE), "--crop", "128",
                      *flags, "--max-steps", "1", "--p-sigma-max", "1")
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            losses.append(float(r.stdout.split(" loss ")[1].split()[0]))
        return losses

    def test_seam_weight_adds_the_block_boundary_term_to_the_loss(self):
        # with and without the term: the loss grows by it
        losses = self.first_seam_losses("steps", ("0", "4"))
        self.assertGreater(losses[1], losses[0] * 1.05)

    def test_seam_loss_ratio_adds_the_seam_ratio_term_to_the_loss(self):
        # release 3's loss: the batch's seam ratio is never exactly the ground truth's, so a large
        # weight shows its log² in the logged loss
        losses = self.first_seam_losses("ratio", ("0", "10000"))
        self.assertGreater(losses[1], losses[0] * 1.05)

    def test_lr_grid_weight_adds_the_phase_term_to_the_loss(self):
        losses = self.first_seam_losses("lr-grid", ("0", "10000"))
        self.assertGreater(losses[1], losses[0] * 1.05)


class ScaleAugTest(unittest.TestCase):
    """data.CropSampler's scale augmentation (issue 32): crops of several reductions of a photo."""

    def images(self):
        # vertical stripes 8 px wide: a crop reduced s times shows them 8/s px wide
        y, x = np.mgrid[0:400, 0:600]
        img = np.repeat((((x // 8) % 2) * 255).astype(np.uint8)[..., None], 3, -1)
        return [({"file": "stripes"}, img)]

    def test_off_draws_what_it_always_drew(self):
        from training.data import CropSampler
        a = CropSampler(self.images(), 64, "cpu", seed=5).sample(6)
        b = CropSampler(self.images(), 64, "cpu", seed=5, scale_max=1.0).sample(6)
        self.assertTrue(torch.equal(a, b))
        self.assertEqual(set(a.unique().tolist()), {-1.0, 1.0})          # unresampled: the photo's own values

    def test_crops_are_reduced_regions_of_the_photo(self):
        from training.data import CropSampler
        crops = CropSampler(self.images(), 64, "cpu", seed=1, scale_max=4.0).sample(64)
        self.assertEqual(tuple(crops.shape), (64, 3, 64, 64))
        self.assertGreaterEqual(float(crops.min()), -1.0); self.assertLessEqual(float(crops.max()), 1.0)
        # 8-bit values, as a photo's
        v = (crops + 1) * 127.5
        self.assertLess(float((v - v.round()).abs().max()), 1e-3)
        # stripe width along the stripes' axis (rows or columns: transposes are drawn too): 8 px unreduced,
        # down to 2 px at a reduction of 4; several reductions among 64 crops
        def period(c):
            line = c[0, 32] if float(c[0, 32].std()) > float(c[0, :, 32].std()) else c[0, :, 32]
            return 64 / max(1, int(((line[1:] > 0) != (line[:-1] > 0)).sum()))
        widths = sorted(period(c) for c in crops)
        self.assertLess(widths[0], 4.5)
        self.assertGreater(widths[-1], 7)
        self.assertGreater(len({round(w) for w in widths}), 2)

    def test_a_reduction_below_one_is_refused(self):
        from training.data import CropSampler
        with self.assertRaises(ValueError):
            CropSampler(self.images(), 64, "cpu", scale_max=0.5)


class SoupTest(unittest.TestCase):
    """model/training/soup.py: checkpoints' averaged weights mixed (a weight average, a difference added); different networks refused."""

    def ckpt(self, seed, **kw):
        from infdit.network import InfDiT, make_config
        cfg = make_config("infdit-tiny/8", **kw)
        return {"config": cfg.to_dict(), "ema": InfDiT(cfg).randomize_(seed).state_dict(), "step": seed}

    def test_the_mixture_is_the_weighted_mean_and_keeps_bs_record(self):
        from training.soup import mix
        a, b = self.ckpt(1), self.ckpt(2)
        m = mix(a, [(b, 0.25)])
        for k in a["ema"]:
            self.assertTrue(torch.allclose(m["ema"][k], 0.75 * a["ema"][k] + 0.25 * b["ema"][k], atol=1e-6), k)
        self.assertEqual(m["step"], 2)
        self.assertTrue(all(torch.equal(mix(a, [(b, 0.0)])["ema"][k], a["ema"][k]) for k in a["ema"]))

    def test_task_arithmetic_adds_the_difference_of_two_fine_tunes(self):
        from training.soup import mix, parse_shares
        a, g, c = self.ckpt(1), self.ckpt(2), self.ckpt(3)
        m = mix(a, [(g, 0.3), (c, -0.3)])
        for k in a["ema"]:
            self.assertTrue(torch.allclose(m["ema"][k], a["ema"][k] + 0.3 * (g["ema"][k] - c["ema"][k]), atol=1e-5), k)
        self.assertEqual(m["step"], 3)
        self.assertEqual(parse_shares("0.3,-0.3", 2), [0.3, -0.3])
        for bad, says in (("0.3", "1 share(s) for 2 checkpoint(s)"), ("0.3,x", "numbers separated by commas"),
                          ("0.3,-5", "each share from -2 to 2"), ("nan,0", "each share from -2 to 2")):
            with self.assertRaises(ValueError) as e:
                parse_shares(bad, 2)
            self.assertIn(says, str(e.exception))

    def test_different_networks_are_refused(self):
        from training.soup import mix
        with self.assertRaises(ValueError) as e:
            mix(self.ckpt(1), [(self.ckpt(2, depth=3), 0.5)])
        self.assertIn("depth", str(e.exception))


class CascadeTest(unittest.TestCase):
    def test_stage1_output_is_the_models_fidelity_output_of_the_smaller_lr_in_uint8(self):
        from training.train import stage1_output, load_ema
        from infdit.network import upsample
        from training.data import degrade
        model, _ = load_ema(RELEASE, torch.device("cpu"))
        photo = np.asarray(Image.open(MODEL.parent / "viewer/demo.jpg").convert("RGB").resize((512, 256), Image.LANCZOS))
        hr = torch.from_numpy(photo.copy()).permute(2, 0, 1).float().div(127.5).sub(1).reshape(3, 256, 2, 256).permute(2, 0, 1, 3)   # two 256² crops
        out = stage1_output(model, hr, model.cfg, 4.0, torch.Generator().manual_seed(0), False)
        self.assertEqual(out.shape, (2, 3, 64, 64))
        u8 = (out + 1) * 127.5
        self.assertLess((u8 - u8.round()).abs().max().item(), 1e-3)
        # the same draw again is the same; the model's output, not the bicubic of its input
        again = stage1_output(model, hr, model.cfg, 4.0, torch.Generator().manual_seed(0), False)
        self.assertTrue(torch.equal(out, again))
        lr1 = degrade(hr, 16)
        err = lambda a: ((a - degrade(hr, 4)) ** 2).mean().item()
        self.assertLess(err(out), err(upsample(lr1, 4)))


class GridLossTest(unittest.TestCase):
    def test_counts_only_the_steps_across_the_period_lines(self):
        g = torch.Generator().manual_seed(0)
        target = torch.rand(3, 3, 128, 128, generator=g)
        self.assertEqual(grid_loss(target, target, 64).item(), 0.0)
        on, off = target.clone(), target.clone()
        on[1, :, :, 64:] += 0.1     # a step between columns 63 and 64: the block boundary
        off[1, :, :, 60:] += 0.1    # the same step between columns 59 and 60: inside a block
        self.assertGreater(grid_loss(on, target, 64).item(), 1e-3)
        self.assertLess(grid_loss(off, target, 64).item(), 1e-12)   # rounding of the shifted pixels only
        per = grid_loss(on, target, 64, per_sample=True)
        self.assertEqual(per.shape, (3,))
        self.assertEqual((per[0].item(), per[2].item()), (0.0, 0.0))   # untouched images
        self.assertAlmostEqual(per.mean().item(), grid_loss(on, target, 64).item(), places=7)

    def test_seam_excess_counts_the_ratio_not_the_error(self):
        g = torch.Generator().manual_seed(1)
        target = torch.rand(2, 3, 128, 128, generator=g)
        self.assertEqual(seam_excess_loss(target, target, 64, 4).item(), 0.0)
        # every step twice as steep: the steps' error is large, the seam ratio unchanged
        self.assertGreater(grid_loss(2 * target, target, 64).item(), 1e-2)
        self.assertLess(seam_excess_loss(2 * target, target, 64, 4).item(), 1e-10)
        on, off = target.clone(), target.clone()
        on[:, :, :, 64:] += 0.5      # a step across the block boundary
        off[:, :, :, 60:] += 0.5     # the same step across an LR-grid line inside the block
        self.assertGreater(seam_excess_loss(on, target, 64, 4).item(), 1e-3)
        self.assertLess(seam_excess_loss(off, target, 64, 4).item(), seam_excess_loss(on, target, 64, 4).item() / 10)

    def test_phase_loss_sees_the_staircase_not_the_contrast(self):
        g = torch.Generator().manual_seed(2)
        k = torch.exp(-torch.arange(-6, 7.0) ** 2 / 8)
        k = (k[:, None] * k[None, :] / k.sum() ** 2).expand(3, 1, 13, 13)
        target = torch.nn.functional.conv2d(torch.rand(2, 3, 140, 140, generator=g), k, groups=3)[..., :128, :128]   # smooth, no phase stands out
        self.assertEqual(phase_loss(target, target, 4).item(), 0.0)
        self.assertLess(phase_loss(2 * target, target, 4).item(), 1e-10)     # every step steeper: same profile
        lr = torch.nn.functional.avg_pool2d(target, 4)
        stairs = lr.repeat_interleave(4, -1).repeat_interleave(4, -2)         # 4×4 squares: steps on phase 0 only
        self.assertGreater(phase_loss(stairs, target, 4).item(), 1.0)
        shifted = torch.roll(target, 2, -1)                                   # no staircase, only shifted content
        self.assertLess(phase_loss(shifted, target, 4).item(), 0.01)
        x = stairs.clone().requires_grad_(True)
        phase_loss(x, target, 4).backward()
        self.assertTrue(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0)


if __name__ == "__main__":
    unittest.main()


class VariantTest(unittest.TestCase):
    """train.py --depth --init-layers (issue 41): a shallower variant starts from chosen layers of a trained model."""

    def test_a_shallower_variant_takes_the_layers_it_names(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp); make_split(tmp)
            r = train("--data", str(tmp), "--ckpt", str(tmp / "d2"), "--init", str(RELEASE), "--depth", "2",
                      "--init-layers", "0,5", "--max-steps", "1", "--lr", "1e-9", "--warmup", "1")
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            init, st = load_parts(RELEASE)["ema"], load_parts(tmp / "d2" / "last.pt")
            self.assertEqual(st["config"]["depth"], 2)
            self.assertFalse(any(k.startswith("blocks.2.") for k in st["ema"]))
            # one step at a learning rate of 1e-9: layer 1 is the init's layer 5, the stem and output stage its own
            for k in ("blocks.1.attn.qkv.weight", "x_embedder.weight", "final_layer.linear.weight"):
                src = k.replace("blocks.1.", "blocks.5.")
                self.assertLess((st["ema"][k] - init[src]).abs().max().item(), 1e-5, k)
            self.assertGreater((st["ema"]["blocks.1.attn.qkv.weight"] - init["blocks.1.attn.qkv.weight"]).abs().max().item(), 1e-3)

    def test_a_pooled_variant_starts_from_the_release_and_a_bad_pool_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp); make_split(tmp)
            r = train("--data", str(tmp), "--ckpt", str(tmp / "p2"), "--init", str(RELEASE), "--kv-pool", "2",
                      "--max-steps", "1", "--lr", "0", "--warmup", "1")
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            st, init = load_parts(tmp / "p2" / "last.pt"), load_parts(RELEASE)["ema"]
            self.assertEqual(st["config"]["kv_pool"], 2)
            self.assertLess((st["ema"]["blocks.3.attn.qkv.weight"] - init["blocks.3.attn.qkv.weight"]).abs().max().item(), 1e-6)
            # a fine-tune of a pooled model stays pooled unless told otherwise (release 6 is pooled)
            for extra, want in (([], 2), (["--kv-pool", "1"], 1)):
                r = train("--data", str(tmp), "--ckpt", str(tmp / f"i{want}"), "--init", str(tmp / "p2" / "last.pt"),
                          "--max-steps", "1", "--lr", "0", "--warmup", "1", *extra)
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
                self.assertEqual(load_parts(tmp / f"i{want}" / "last.pt")["config"]["kv_pool"], want)
            r = train("--data", str(tmp), "--ckpt", str(tmp / "p3"), "--kv-pool", "3", "--max-steps", "1")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--kv-pool 3: give a divisor of the block's 16 tokens a side", r.stderr)

    def test_layers_that_do_not_fit_are_refused_by_name(self):
        with tempfile.TemporaryDirectory() as tmp:
            for extra, said in ((["--depth", "2", "--init-layers", "0,9"], "the init has layers 0-7"),
                                (["--depth", "3", "--init-layers", "0,5"], "as many as the model's depth (3)"),
                                (["--depth", "2", "--init-layers", "0,x"], "comma-separated")):
                r = train("--data", tmp, "--ckpt", str(Path(tmp) / "x"), "--init", str(RELEASE), "--max-steps", "1", *extra)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(said, r.stderr)
