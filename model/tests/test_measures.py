"""evaluate.py's measures of what a person sees zoomed in (issue 31): the LR-pixel grid ratio (a
staircase of period-px squares puts its steps on one phase of the lines) and the fine-detail energy
(luma power above the LR's Nyquist frequency), on a real photo (viewer/demo.jpg) and images made
from it whose answer is known."""
import sys, unittest
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL))
from evaluate import phase_sums, grid_ratio, fine_power  # noqa: E402

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


if __name__ == "__main__":
    unittest.main()
