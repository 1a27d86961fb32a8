"""The JPEG restorer: tiling is exact, it starts as the identity, it learns, it is told the quality.

    /usr/bin/python3 -m unittest discover -s model/tests -v      (npm run test:model)
"""
import sys, unittest
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infdit.restore import Restorer, RestorerConfig, restore_image, to_unit, to_u8, jpeg, TILE, HALO, OFFSET
from infdit.network import jpeg_level

torch.set_num_threads(1)


def random_restorer(seed=0, **kw):
    torch.manual_seed(seed)
    net = Restorer(RestorerConfig(**kw)).eval()
    torch.nn.init.normal_(net.body[-1].weight, std=0.05)   # not the identity it starts as
    return net


def photo_like(h, w, seed=0):
    """Smooth shapes plus texture: something JPEG compresses visibly."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 128 + 60 * np.sin(x[..., None] / (7 + 3 * np.arange(3))) * np.cos(y[..., None] / 11) + g.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class TestRestorer(unittest.TestCase):
    def test_tiles_equal_the_whole_image(self):
        # the halo covers the receptive field: tile by tile (what the engine runs) equals one pass over
        # the edge-replicated image, up to float rounding at .5
        net = random_restorer()
        self.assertLessEqual(net.cfg.receptive_radius, HALO)
        img = photo_like(TILE + 70, 2 * TILE + 30)      # partial tiles on both axes
        pad = np.pad(img, ((HALO, HALO), (HALO, HALO), (0, 0)), mode="edge")
        with torch.no_grad():
            whole = to_u8(net(to_unit(pad), jpeg_level(torch.tensor([60.0])))[:, :, HALO:-HALO, HALO:-HALO])
        # on the shipped grid (OFFSET) and on others: the grid moves no pixel beyond rounding (an even
        # offset: the network's pixel-unshuffle by 2 sees the same pixel pairs)
        for offset in (OFFSET, 0, 32):
            tiled = restore_image(net, img, 60, offset=offset)
            d = np.abs(tiled.astype(int) - whole.astype(int))
            self.assertEqual(tiled.shape, img.shape)
            self.assertLessEqual(d.max(), 1, f"offset {offset}")
            self.assertLess((d > 0).mean(), 1e-3, f"offset {offset}")
        # and the comparison is not between two copies of the input
        self.assertGreater(np.abs(tiled.astype(int) - img.astype(int)).max(), 3)

    def test_starts_as_the_identity_and_hears_the_quality(self):
        img = photo_like(100, 90)
        self.assertTrue(np.array_equal(restore_image(Restorer().eval(), img, 40), img))
        net = random_restorer(1)
        self.assertFalse(np.array_equal(restore_image(net, img, 30), restore_image(net, img, 90)))

    def test_a_few_steps_restore_a_jpeg(self):
        # 60 steps on one picture's crops: the restored crop is nearer the original than the JPEG
        torch.manual_seed(0)
        net = Restorer(RestorerConfig(width=16, depth=3))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        img = photo_like(64, 64, seed=3)
        x, y = to_unit(jpeg(img, 30)), to_unit(img)
        jq = jpeg_level(torch.tensor([30.0]))
        before = F.mse_loss(x, y).item()
        for _ in range(60):
            loss = F.mse_loss(net(x, jq), y)
            opt.zero_grad(); loss.backward(); opt.step()
        self.assertLess(loss.item(), 0.9 * before)


if __name__ == "__main__":
    unittest.main()
