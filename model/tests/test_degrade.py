"""The training degradations: the JPEG simulation decodes like Pillow's encoder, the mixed
pipeline gives LR of the right size and range, reproducibly from its generator.

    /usr/bin/python3 -m unittest discover -s model/tests -v      (npm run test:model)
"""
import io, math, sys, unittest
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.degrade import jpeg, degrade_mixed, second_order, RECIPE

torch.set_num_threads(1)


def photo(h=96, w=128, seed=0):
    """Smooth colour waves plus edges and a little texture: enough like a photo for JPEG."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    c = [0.5 + 0.3 * torch.sin(xx / (7 + 3 * k) + yy / (11 - 2 * k)) for k in range(3)]
    img = torch.stack(c)[None] + 0.04 * torch.randn(1, 3, h, w, generator=g)
    img[:, :, h // 3:h // 2, w // 4:w // 2] += 0.3
    return img.clamp(0, 1)


def psnr(a, b):
    return 10 * math.log10(1 / max(float(((a - b) ** 2).mean()), 1e-12))


class JPEG(unittest.TestCase):
    def test_matches_pillow(self):
        x = photo()
        u8 = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        xq = torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 255
        for q in (30, 75, 95):
            buf = io.BytesIO(); Image.fromarray(u8).save(buf, format="JPEG", quality=q)   # 4:2:0 by default
            pil = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
            sim = jpeg(xq, torch.tensor([q]))
            # the simulation loses what the encoder loses: close to its decode, and as far from the input
            self.assertGreater(psnr(sim, pil), 36, f"q{q}: sim vs Pillow {psnr(sim, pil):.1f} dB")
            self.assertLess(abs(psnr(sim, xq) - psnr(pil, xq)), 1.5, f"q{q}: {psnr(sim, xq):.1f} vs {psnr(pil, xq):.1f} dB")
        self.assertGreater(psnr(jpeg(xq, torch.tensor([95])), xq), psnr(jpeg(xq, torch.tensor([30])), xq) + 1.5)

    def test_odd_sizes_and_batch_qualities(self):
        x = photo(37, 53).repeat(2, 1, 1, 1)
        y = jpeg(x, torch.tensor([30, 95]))
        self.assertEqual(tuple(y.shape), (2, 3, 37, 53))
        self.assertGreater(psnr(y[1:], x[1:]), psnr(y[:1], x[:1]))


class Mixed(unittest.TestCase):
    def test_shapes_range_reproducible(self):
        hr = photo(64, 64).repeat(8, 1, 1, 1) * 2 - 1
        bic = lambda t: F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
        a = degrade_mixed(hr, 4, bic, torch.Generator().manual_seed(3))
        b = degrade_mixed(hr, 4, bic, torch.Generator().manual_seed(3))
        self.assertEqual(tuple(a.shape), (8, 3, 16, 16))
        self.assertTrue(torch.equal(a, b))
        self.assertLessEqual(float(a.abs().max()), 1.0)
        # the mix holds clean samples (equal to bicubic) and degraded ones (not)
        clean = bic(hr).clamp(-1, 1)
        same = [(a[i] - clean[i]).abs().max().item() < 1e-6 for i in range(8)]
        self.assertTrue(0 < sum(same) < 8, same)
        self.assertEqual(set(RECIPE["mix"]), {"bicubic", "bicubic+jpeg", "second-order"})

    def test_quality_of_each_sample(self):
        # --jpeg-cond: each sample's last JPEG quality, 0 for clean; the same LR as without it
        hr = photo(64, 64).repeat(16, 1, 1, 1) * 2 - 1
        bic = lambda t: F.interpolate(t, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
        saved, RECIPE["mix"] = RECIPE["mix"], {"bicubic": 0.3, "bicubic+jpeg": 0.4, "second-order": 0.3}
        try:
            plain = degrade_mixed(hr, 4, bic, torch.Generator().manual_seed(5))
            lr, q = degrade_mixed(hr, 4, bic, torch.Generator().manual_seed(5), with_quality=True)
        finally:
            RECIPE["mix"] = saved
        self.assertTrue(torch.equal(plain, lr))
        clean = bic(hr).clamp(-1, 1)
        for i in range(16):
            is_clean = (lr[i] - clean[i]).abs().max().item() < 1e-6
            self.assertEqual(q[i].item() == 0, is_clean, (i, q[i].item()))
            if not is_clean:
                self.assertTrue(30 <= q[i].item() <= 95 and q[i].item() == round(q[i].item()), q[i].item())
        # a clean+JPEG sample is exactly the clean LR at the quality given
        jp = [i for i in range(16) if q[i] > 0 and (lr[i:i + 1] - (jpeg((clean[i:i + 1] + 1) / 2, q[i:i + 1]) * 2 - 1)).abs().max() < 1e-6]
        self.assertTrue(2 <= len(jp) < 16 - q.eq(0).sum().item(), jp)   # clean+JPEG ones, and second-order ones that are not

    def test_second_order_is_a_degradation(self):
        x = photo(128, 128).repeat(4, 1, 1, 1)
        lr = second_order(x, 4, torch.Generator().manual_seed(1))
        clean = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
        self.assertEqual(tuple(lr.shape), (4, 3, 32, 32))
        self.assertLess(psnr(lr, clean), 40)


if __name__ == "__main__":
    unittest.main()
