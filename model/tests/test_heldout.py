"""The independent evaluation set stays apart: its packages are the ones kept for it and never a
training package, pack puts it in a folder of its own with each photo's own reduction, the
training split never loads it, and evaluate.py says so when a data folder lacks the split asked for."""
import fnmatch, json, os, subprocess, sys, tempfile, unittest
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL))
from training.data_fetch import PACKAGES, HELDOUT  # noqa: E402
from training.data import pack, load_split  # noqa: E402
from test_train import TCMALLOC  # noqa: E402

KEPT_APART = ("lomiri-*", "palapeli-data", "digikam-data")   # the project's rule (README of the task)
kept_apart = lambda pkg: any(fnmatch.fnmatch(pkg, p) for p in KEPT_APART)


class HeldoutTest(unittest.TestCase):
    def test_the_packages_are_the_kept_apart_ones_and_no_training_package_is(self):
        self.assertTrue(HELDOUT)
        self.assertEqual([p for p in HELDOUT if not kept_apart(p)], [])
        self.assertEqual([p for p in PACKAGES if kept_apart(p)], [])

    def test_pack_gives_each_photo_its_reduction_and_training_never_loads_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            cache, out = Path(tmp) / "cache", Path(tmp) / "packed"
            (cache / "photos/p").mkdir(parents=True)
            rng = np.random.default_rng(0)
            for name in ("a.png", "b.png"):
                Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(cache / "photos/p" / name)
            (cache / "photos/manifest.json").write_text(json.dumps([
                {"file": "p/a.png", "package": "p", "split": "train"},
                {"file": "p/b.png", "package": "palapeli-data", "split": "heldout", "downscale": 1}]))
            index = pack(cache, out, downscale=2)
            self.assertEqual([(e["packed"], e["packed_size"], e["downscale"]) for e in index],
                             [("train/p--a.jpg", [80, 60], 2), ("heldout/palapeli-data--b.jpg", [160, 120], 1)])
            self.assertEqual([e["split"] for e, _ in load_split(out, "train")], ["train"])
            self.assertEqual(load_split(out, "heldout")[0][1].shape, (120, 160, 3))

            env = dict(os.environ, **({"LD_PRELOAD": TCMALLOC} if os.path.exists(TCMALLOC) else {}))
            r = subprocess.run([sys.executable, str(MODEL / "measure/evaluate.py"), "--ckpt", str(MODEL / "release/infdit-s4.ckpt.pt"),
                                "--manifest", str(MODEL / "release/infdit-s4.json"), "--data", str(out), "--split", "val",
                                "--out", str(Path(tmp) / "eval")], capture_output=True, text=True, env=env, timeout=300)
            self.assertEqual(r.returncode, 2, r.stderr[-2000:])
            self.assertIn("--split val", r.stderr)
            self.assertIn("lists no 'val' images", r.stderr)
            self.assertFalse((Path(tmp) / "eval").exists())


if __name__ == "__main__":
    unittest.main()
