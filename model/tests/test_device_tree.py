"""model/device/tree.sh on a clone of this repository: slim leaves the ONNX graphs (and the release
checkpoints the run does not start from) out of what a device call sends (the tracked tree alone is over
the tool's 64 MiB) without touching them, refuses commits while it lasts, and restore gives the tree back
exactly."""
import os, re, subprocess, tempfile, unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "model" / "device" / "tree.sh"


def sh(cwd, *args):
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def mib(out):
    return float(re.search(r"would travel: ([0-9.]+) MiB", out)[1])


class DeviceTreeTest(unittest.TestCase):
    def test_slim_fits_the_tool_with_data_carried_and_restore_gives_the_tree_back(self):
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "repo"
            self.assertEqual(sh(tmp, "git", "clone", "-q", "--shared", str(ROOT), str(repo)).returncode, 0)
            graphs = sh(repo, "git", "ls-files", "*.onnx").stdout.split()
            self.assertIn("model/release/infdit-s4.layer0.onnx", graphs)
            # a stand-in for .data (git-ignored, 25 MiB packed): 26 MiB that does not compress
            (repo / ".data").mkdir()
            (repo / ".data" / "train.bin").write_bytes(os.urandom(26 << 20))
            before = sh(repo, "bash", str(SCRIPT), "size", ".data")
            self.assertNotEqual(before.returncode, 0)
            self.assertIn("too large", before.stdout)

            slim = sh(repo, "bash", str(SCRIPT), "slim", ".data")
            self.assertEqual(slim.returncode, 0, slim.stdout + slim.stderr)
            self.assertLessEqual(mib(slim.stdout), 64)
            self.assertLess(mib(slim.stdout), mib(before.stdout) - 40)
            self.assertEqual(sh(repo, "git", "ls-files", "*.onnx").stdout, "")
            # of the release checkpoints only what the run starts from (default INIT: release 6's) and every base's and
            # restorer's travel: releases 7's and 8's transformers are left behind
            self.assertEqual(sorted(sh(repo, "git", "ls-files", "model/release/*.ckpt.pt").stdout.split()),
                             ["model/release/infdit-s4-d2j.base.ckpt.pt", "model/release/infdit-s4.base.ckpt.pt",
                              "model/release/infdit-s4.ckpt.pt", "model/release/infdit-s4.restore.ckpt.pt"])
            self.assertEqual(sh(repo, "git", "status", "--porcelain", "--untracked-files=all", "--", "*.onnx").stdout.count("??"), 0)
            self.assertTrue(all((repo / g).is_file() for g in graphs))   # still on disk: the server here still runs
            commit = sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "would drop the graphs")
            self.assertNotEqual(commit.returncode, 0)
            self.assertIn("device/tree.sh restore", commit.stderr)
            self.assertNotEqual(sh(repo, "bash", str(SCRIPT), "slim", ".data").returncode, 0)   # twice: refused

            restore = sh(repo, "bash", str(SCRIPT), "restore")
            self.assertEqual(restore.returncode, 0, restore.stderr)
            self.assertEqual(sh(repo, "git", "status", "--porcelain").stdout, "")
            self.assertEqual(sh(repo, "git", "ls-files", "*.onnx").stdout.split(), graphs)
            self.assertNotIn("device_tree", (repo / ".git" / "info" / "exclude").read_text())
            self.assertFalse((repo / ".git" / "hooks" / "pre-commit").exists())

    def test_a_missing_carry_path_or_verb_is_named(self):
        r = sh(ROOT, "bash", str(SCRIPT), "size", "no-such-folder")
        self.assertEqual(r.returncode, 2)
        self.assertIn("carry path no-such-folder: not found", r.stderr)
        r = sh(ROOT, "bash", str(SCRIPT), "shrink")
        self.assertEqual(r.returncode, 2)
        self.assertIn("size|slim", r.stderr)


if __name__ == "__main__":
    unittest.main()
