"""model/measure/speed.py, the GPU speed probe, on the CPU: it must get through the evaluation-path check and a
variant, and report a refusing variant instead of stopping, before a GPU's minutes are spent on it."""
import os, subprocess, sys, tempfile, unittest
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL / "tests"))
from test_train import make_split, TCMALLOC  # noqa: E402


def speed(*args):
    env = dict(os.environ, **({"LD_PRELOAD": TCMALLOC} if os.path.exists(TCMALLOC) else {}))
    return subprocess.run([sys.executable, str(MODEL / "measure/speed.py"), "--device", "cpu", *args], cwd=MODEL.parent,
                          capture_output=True, text=True, env=env, timeout=3600)


class SpeedProbeTest(unittest.TestCase):
    def test_bad_variant_names_what_is_accepted(self):
        r = speed("--variants", "64:mask:turbo")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("'64:mask:turbo' is not BATCH:mask|fold:auto|flash|efficient|cudnn|math", r.stderr)

    def test_checks_the_evaluation_path_and_ranks_the_variants(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"; data.mkdir()
            make_split(data)   # two 192² photos, one made the validation image (the check crops 3 blocks a side)
            index = (data / "index.json").read_text().replace('"split": "train", "packed": "train/synthetic-1.png"',
                                                              '"split": "val", "packed": "train/synthetic-1.png"')
            (data / "index.json").write_text(index)
            # --crop 128: train.py's crops, 2 blocks a side (the seam loss needs a boundary inside). --seconds and
            # --per-variant are a GPU's limits: here no assertion may depend on how fast this CPU is (a fresh,
            # slower machine ran out of the 120 s a variant had and printed no figure)
            r = speed("--data", str(data), "--ckpt", str(Path(tmp) / "ck"), "--variants", "1:fold:auto,1:mask:auto:compile",
                      "--skip", "1", "--steps", "1", "--per-variant", "100000", "--seconds", "100000", "--crop", "128")
            self.assertEqual(r.returncode, 0, (r.stdout + r.stderr)[-3000:])
            self.assertRegex(r.stdout, r"evaluation path on cpu, bias fold: max \|Δ\| vs CPU [0-9.e+-]+")
            self.assertRegex(r.stdout, r"batch 1 bias fold sdpa auto: [0-9.]+ crops/s")
            summary = r.stdout.split("=== summary")[1].splitlines()
            self.assertRegex(summary[1], r"^ +[0-9.]+  batch 1 bias fold sdpa auto$")
            # torch 1.13 has no torch.compile: that variant fails, is said to, and the probe goes on
            if not hasattr(__import__("torch"), "compile"):
                self.assertIn("batch 1 bias mask sdpa auto compiled: FAILED", r.stdout)


if __name__ == "__main__":
    unittest.main()
