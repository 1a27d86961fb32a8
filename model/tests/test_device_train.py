"""model/device/train.sh, the prepared GPU run, dry-run on the CPU: small crops, a batch of 2, one
validation image. A GPU's minutes are the scarcest thing this project gets; this is what makes sure
the script gets through profiles, training and evaluation before one is spent on it."""
import json, os, re, subprocess, sys, tempfile, unittest
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(MODEL), str(MODEL / "tests")]
from training.train import load_parts  # noqa: E402
from test_train import make_split, TCMALLOC  # noqa: E402


def dry_run(tmp, *extra, **overrides):
    """device/train.sh on a two-photo split and one 320×288 validation image, small and on the CPU."""
    data, out = Path(tmp) / "data", Path(tmp) / "out"
    data.mkdir(); out.mkdir()
    make_split(data)
    y, x = np.mgrid[0:288, 0:320]
    val = np.stack([(x * 2) % 256, (y * 5) % 256, ((x - y) * 3) % 256], -1).astype(np.uint8)
    Image.fromarray(val).save(data / "val.png")
    index = json.loads((data / "index.json").read_text())
    (data / "index.json").write_text(json.dumps(index + [{"file": "val.png", "split": "val", "packed": "val.png"}]))
    # PROFILE_S: a profile's time limit is for a GPU's minutes; here no test may depend on how fast this CPU is
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DATA": str(data), "BATCHES": "2,2 --no-such-flag",
           "PROFILE_STEPS": "2", "PROFILE_SKIP": "1", "PROFILE_S": "900", "BUDGET_S": "100000", "MINUTES": "0.02", "EVAL_DEVICE": "cpu",
           "EVAL_ARGS": "--limit 1 --crop 256x256 --no-ablation", "EVAL16_ARGS": "--limit 1 --crop 256x256",
           **({"LD_PRELOAD": TCMALLOC} if os.path.exists(TCMALLOC) else {}), **overrides}
    r = subprocess.run(["bash", str(MODEL / "device/train.sh"), "--crop", "128", "--device", "cpu", *extra], cwd=MODEL.parent,
                       env=env, capture_output=True, text=True, timeout=900)
    return r, out


class DeviceTrainScriptTest(unittest.TestCase):
    def test_profiles_trains_and_evaluates_end_to_end(self):
        with tempfile.TemporaryDirectory() as tmp:
            r, out = dry_run(tmp)
            self.assertEqual(r.returncode, 0, (r.stdout + r.stderr)[-3000:])
            log = (out / "run.log").read_text()
            # the good profile gives a rate; the bad one is reported as failed and does not stop the script
            self.assertRegex(log, r"batch 2 eager: [0-9.]+ crops/s")
            self.assertIn("batch 2  --no-such-flag: failed crops/s", log)
            self.assertIn("training for 0.02 min", log)
            self.assertFalse((out / "profile").exists())
            # all of it must come back through the device tool: at most 8 files of ≤ 16 MiB, 64 MiB in all,
            # 2 folders down, names of letters, digits, '.', '_' and '-' (the checkpoint is full size here)
            files = [f for f in out.rglob("*") if f.is_file()]
            self.assertLessEqual(len(files), 8, files)
            self.assertLessEqual(max(f.stat().st_size for f in files), 16 << 20)
            self.assertLessEqual(sum(f.stat().st_size for f in files), 64 << 20)
            for f in files:
                rel = f.relative_to(out)
                self.assertLessEqual(len(rel.parts), 3, rel)
                self.assertTrue(all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in rel.parts), rel)
            st = load_parts(out / "ckpt" / "last.pt")
            self.assertGreaterEqual(st["step"], 1)
            self.assertEqual((st["args"]["batch"], st["args"]["crop"], st["args"]["seam_loss"], st["args"]["seam_weight"]),
                             (2, 128, "ratio", 5.0))
            self.assertTrue(st["args"]["init"].endswith("model/release/infdit-s4.ckpt.pt"))
            self.assertNotIn("opt", st)
            res = json.loads((out / "eval" / "eval.json").read_text())
            self.assertEqual(set(res["summary"]), {"clean", "jpeg75"})
            self.assertIn("fidelity", res["summary"]["jpeg75"])
            self.assertEqual(res["n"], 1)
            # and the 16× cascade's figures (the issue-31 measures), without a crops image
            x16 = json.loads((out / "eval" / "eval-x16.json").read_text())
            self.assertEqual((x16["scale"], x16["n"], sorted(x16["summary"]["clean"]["fidelity"]["grid_ratio"])), (16, 1, ["16", "4"]))
            self.assertFalse((out / "eval" / "crops-x16.png").exists())

    def test_without_batches_it_trains_with_the_run_flags_and_profiles_the_run_itself(self):
        # the default: no separate profiles (the measured flags, RUN); the run prints its own profile.
        # RUN here is CPU-sized: the default's --compile and batch 256 are for torch 2 on a GPU.
        with tempfile.TemporaryDirectory() as tmp:
            # 3 steps, however slow this CPU: the profile's 1 + 2 (dry_run's PROFILE_SKIP, PROFILE_STEPS)
            r, out = dry_run(tmp, "--max-steps", "3", BATCHES="", RUN="--batch 2 --attn-bias fold", MINUTES="5",
                             EVAL_ARGS="--limit 1 --crop 256x256 --no-ablation --presets fidelity")
            self.assertEqual(r.returncode, 0, (r.stdout + r.stderr)[-3000:])
            log = (out / "run.log").read_text()
            self.assertNotIn("eager:", log)
            self.assertRegex(log, r"profile over 2 steps: .*; [0-9.]+ crops/s")
            st = load_parts(out / "ckpt" / "last.pt")
            self.assertEqual((st["args"]["batch"], st["args"]["attn_bias"]), (2, "fold"))
        script = (MODEL / "device/train.sh").read_text()
        self.assertIn("${RUN:---batch 256 --compile --attn-bias fold}", script)

    def test_a_torch_without_compile_trains_eager_and_says_so(self):
        # no profile gives a rate (the only candidate fails), so the run's flags ask for --compile
        with tempfile.TemporaryDirectory() as tmp:
            r, out = dry_run(tmp, "--max-steps", "2", BATCHES="2 --no-such-flag", RUN="--batch 2 --compile",
                             EVAL_ARGS="--limit 1 --crop 256x256 --no-ablation --presets fidelity")
            log = (out / "run.log").read_text()
            import torch
            if hasattr(torch, "compile"):
                self.skipTest(f"torch {torch.__version__} has torch.compile: nothing to fall back from")
            self.assertEqual(r.returncode, 0, (r.stdout + r.stderr)[-3000:])
            self.assertIn("has no torch.compile: training eager", log)
            self.assertEqual(load_parts(out / "ckpt" / "last.pt")["args"]["compile"], False)

    def test_no_training_when_the_budget_leaves_too_little(self):
        # 100 s for the command less 150 s kept for the evaluation: nothing to train in, said, no checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            r, out = dry_run(tmp, BATCHES="2", BUDGET_S="100")
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex((out / "run.log").read_text(), r"-[0-9]+ s left for training after the profiles")
            self.assertFalse((out / "ckpt").exists())

    def test_without_out_it_says_what_to_set(self):
        env = {k: v for k, v in os.environ.items() if k != "OUT"}
        r = subprocess.run(["bash", str(MODEL / "device/train.sh")], cwd=MODEL.parent, env=env, capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("set OUT", r.stderr)


if __name__ == "__main__":
    unittest.main()
