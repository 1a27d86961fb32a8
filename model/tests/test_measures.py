"""evaluate.py's measures of what a person sees zoomed in (issue 31): the LR-pixel grid ratio (a
staircase of period-px squares puts its steps on one phase of the lines) and the fine-detail energy
(luma power above the LR's Nyquist frequency), on a real photo (viewer/demo.jpg) and images made
from it whose answer is known."""
import json, os, subprocess, sys, tempfile, unittest
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL))
from measure.evaluate import phase_sums, grid_ratio, fine_power  # noqa: E402
from test_train import TCMALLOC  # noqa: E402

RELEASE = MODEL / "release/infdit-s4.ckpt.pt"
PHOTO = np.asarray(Image.open(MODEL.parent / "viewer/demo.jpg").convert("RGB").resize((512, 384), Image.LANCZOS))


def down_up(hr, s, kernel):
    h, w = hr.shape[:2]
    lr = Image.fromarray(hr).resize((w // s, h // s), Image.BICUBIC)
    return np.asarray(lr.resize((w, h), kernel))


def relative_grid(img, ref, period):
    return grid_ratio(phase_sums(img, period)) / grid_ratio(phase_sums(ref, period))


class GridRatioTest(unittest.TestCase):
    def test_a_staircase_scores_high_and_a_smooth_upscale_near_one(self):
        for s in (4, 16):
            stairs = down_up(PHOTO, s, Image.NEAREST)
            smooth = np.asarray(Image.fromarray(PHOTO).filter(ImageFilter.GaussianBlur(2)))   # no grid of any period
            self.assertGreater(relative_grid(stairs, PHOTO, s), 1.2, f"{s}×")
            self.assertLess(abs(relative_grid(smooth, PHOTO, s) - 1), 0.05, f"{s}×")
            self.assertAlmostEqual(relative_grid(PHOTO, PHOTO, s), 1.0)

    def test_the_phase_that_stands_out_is_found_wherever_it_lies(self):
        stairs = down_up(PHOTO, 4, Image.NEAREST)
        for shift in (1, 2, 3):
            m = phase_sums(stairs[shift:, shift:], 4)
            self.assertEqual(int(np.argmax(m[:, 0] / m[:, 1])), (4 - shift) % 4)
            self.assertGreater(relative_grid(stairs[shift:, shift:], PHOTO[shift:, shift:], 4), 1.2)

    def test_pooling_weighs_every_step_once(self):
        a = phase_sums(PHOTO, 4)
        self.assertEqual(a[:, 1].sum(), 384 * 511 + 383 * 512)   # every horizontal and vertical step
        both = phase_sums(PHOTO, 4) + phase_sums(PHOTO[::-1].copy(), 4)
        self.assertTrue(np.all(both[:, 1] > 0))


class FineEnergyTest(unittest.TestCase):
    def test_an_upscale_without_new_detail_has_little_and_noise_adds_some(self):
        for s in (4, 16):
            ref = fine_power(PHOTO, s)
            self.assertLess(fine_power(down_up(PHOTO, s, Image.LANCZOS), s) / ref, 0.3, f"{s}×")
            self.assertAlmostEqual(fine_power(PHOTO, s) / ref, 1.0)
        noisy = np.clip(PHOTO + np.random.default_rng(0).normal(0, 8, PHOTO.shape), 0, 255).astype(np.uint8)
        self.assertGreater(fine_power(noisy, 4), 1.2 * fine_power(PHOTO, 4))

    def test_a_flat_image_has_none(self):
        self.assertLess(fine_power(np.full((64, 64, 3), 100, np.uint8), 4), 1e-20)


class CascadeEvalTest(unittest.TestCase):
    """evaluate.py --scale 16 with a preset per stage (A/B) and a stage-1 checkpoint of its own: the same
    preset and checkpoint at both stages is the plain cascade, another stage-1 checkpoint changes it."""

    def evaluate(self, data, out, *args):
        env = dict(os.environ, **({"LD_PRELOAD": TCMALLOC} if os.path.exists(TCMALLOC) else {}))
        return subprocess.run([sys.executable, str(MODEL / "measure/evaluate.py"), "--ckpt", str(RELEASE), "--manifest",
                               str(MODEL / "release/infdit-s4.json"), "--data", str(data), "--out", str(out),
                               "--variants", "clean", "--no-ablation", "--no-crops", *args],
                              capture_output=True, text=True, env=env, timeout=600)

    def test_a_preset_per_stage_and_a_stage1_checkpoint(self):
        import torch
        from training.train import load_parts
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "val").mkdir()
            Image.fromarray(np.asarray(Image.open(MODEL.parent / "viewer/demo.jpg").convert("RGB").resize((768, 512), Image.LANCZOS))).save(tmp / "val/demo.png")
            (tmp / "index.json").write_text(json.dumps([{"file": "val/demo.png", "split": "val", "packed": "val/demo.png"}]))
            # stage 1 by a checkpoint whose output layer is 30 times the release's: another model, far from the photo
            # (closing it would not do: the release is trained over the base from a closed start, and stays near it)
            st = load_parts(RELEASE)
            st["ema"] = {k: (30 * v if k.startswith("final_layer.linear.") else v) for k, v in st["ema"].items()}
            torch.save(st, tmp / "closed.pt")
            r = self.evaluate(tmp, tmp / "a", "--scale", "16", "--presets", "fidelity,fidelity/fidelity")
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            got = json.loads((tmp / "a/eval-x16.json").read_text())["per_image"]["clean"][0]
            self.assertEqual(got["fidelity"], got["fidelity/fidelity"])
            r = self.evaluate(tmp, tmp / "b", "--scale", "16", "--presets", "fidelity", "--stage1-ckpt", str(tmp / "closed.pt"))
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            res = json.loads((tmp / "b/eval-x16.json").read_text())
            self.assertEqual(res["stage1_checkpoint"], str(tmp / "closed.pt"))
            self.assertLess(res["per_image"]["clean"][0]["fidelity"]["psnr"], got["fidelity"]["psnr"] - 0.1)
            for bad, says in ((("--presets", "fidelity/detail"), "A/B for stage 1's and stage 2's at --scale 16"),
                              (("--scale", "16", "--presets", "fidelity/sharp"), "--presets 'fidelity/sharp'"),
                              (("--stage1-ckpt", str(RELEASE)), "--stage1-ckpt: only a cascade")):
                r = self.evaluate(tmp, tmp / "bad", *bad)
                self.assertEqual(r.returncode, 2, r.stderr[-2000:])
                self.assertIn(says, r.stderr)
                self.assertFalse((tmp / "bad").exists())


if __name__ == "__main__":
    unittest.main()
