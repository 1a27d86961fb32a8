"""data_fetch.collect_repos (issue 39) on a mirror made here: a folder at a commit is read with git archive;
exact and near duplicates (of a photo already in, Debian's included), photos too small for a training crop
after their source's reduction, and named exclusions are left out and listed; each photo keeps its source,
commit, terms, split and reduction; a second run gives the same manifest."""
import io, json, subprocess, sys, tempfile, unittest
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MODEL))
from training import data_fetch  # noqa: E402


def photo(seed, w, h):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (seed + 1) / 3) % 256, (y * 2 + seed * 40) % 256, (x + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.integers(0, 60, (h, w, 3)), 0, 255).astype(np.uint8))


class CollectReposTest(unittest.TestCase):
    def test_sources_duplicates_and_provenance(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            work = tmp / "work"; (work / "imgs").mkdir(parents=True)
            photo(1, 400, 340).save(work / "imgs/a.jpg", quality=95)
            photo(2, 420, 350).save(work / "imgs/b.jpg", quality=95)
            photo(1, 400, 340).resize((396, 337)).save(work / "imgs/z-a-again.jpg", quality=80)   # near duplicate of a
            photo(3, 200, 150).save(work / "imgs/small.jpg", quality=95)                          # too small
            photo(4, 400, 340).save(work / "imgs/testset.jpg", quality=95)                        # excluded by name
            photo(5, 400, 340).save(work / "imgs/debian-twin.jpg", quality=95)                     # already in, from "Debian"
            (work / "README").write_text("not a photo")
            git = lambda *a: subprocess.run(["git", "-C", str(work), *a], check=True, capture_output=True, text=True).stdout
            git("init", "-q"); git("add", "."); git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "photos")
            commit = git("rev-parse", "HEAD").strip()
            mirrors = tmp / "mirrors"; (mirrors / "someone+photos").mkdir(parents=True)
            subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirrors / "someone+photos/repo")], check=True)
            cache = tmp / "cache"; (cache / "photos/deb").mkdir(parents=True)
            photo(5, 400, 340).save(cache / "photos/deb/twin.png")
            (cache / "photos/manifest.json").write_text(json.dumps([{"file": "deb/twin.png", "width": 400, "height": 340,
                                                                     "package": "deb", "license": "x", "split": "train"}]))
            repos = {"someone/photos": {"commit": commit, "folder": "imgs", "glob": "*.jpg", "terms": "the owner's terms",
                                        "downscale": 1.25, "exclude": {"testset.jpg"}}}
            old = data_fetch.REPOS
            data_fetch.REPOS = repos
            try:
                m, dropped = data_fetch.collect_repos(cache, mirrors)
                again, _ = data_fetch.collect_repos(cache, mirrors)
            finally:
                data_fetch.REPOS = old
            got = {Path(e["file"]).name: e for e in m if e["package"] == "repo:someone/photos"}
            self.assertEqual(sorted(got), ["a.jpg", "b.jpg"])
            why = {d[1]: d[2] for d in dropped}
            self.assertEqual(why, {"z-a-again.jpg": "a duplicate", "small.jpg": "too small", "testset.jpg": "a standard test image",
                                   "debian-twin.jpg": "a duplicate"})
            e = got["a.jpg"]
            self.assertEqual(e["source"], f"github:someone/photos@{commit[:8]}:imgs/a.jpg")
            self.assertEqual((e["license"], e["split"], e["downscale"], e["width"]), ("the owner's terms", "train", 1.25, 400))
            self.assertEqual([x["file"] for x in m], [x["file"] for x in again], "a second run changed the manifest")
            self.assertEqual(sum(1 for x in m if x["package"] == "deb"), 1, "Debian's photo was lost")
            listed = json.loads((cache / "photos/dropped.json").read_text())
            self.assertIn({"repo": "someone/photos", "file": "debian-twin.jpg", "why": "a duplicate", "detail": "of deb/twin.png"}, listed)

    def test_the_mixed_validation_split_is_fixed_by_name(self):
        val = data_fetch.imagenet_val(["n1_b.JPEG", "n0_a.JPEG"])   # every 10th by name: the first
        self.assertEqual(data_fetch.repo_split("EliSchwartz/imagenet-sample-images", "n0_a.JPEG", val), "val")
        self.assertEqual(data_fetch.repo_split("EliSchwartz/imagenet-sample-images", "n1_b.JPEG", val), "train")
        self.assertEqual(data_fetch.repo_split("google/dreambooth", "dog/00.jpg"), "val")
        self.assertEqual(data_fetch.repo_split("google/dreambooth", "dog2/00.jpg"), "train")
        self.assertEqual(data_fetch.repo_split("BIDS/BSDS500", "100075.jpg"), "train")
        self.assertNotIn("302003.jpg", set().union(*[r["exclude"] for k, r in data_fetch.REPOS.items() if k != "BIDS/BSDS500"]))
        self.assertIn("302003.jpg", data_fetch.REPOS["BIDS/BSDS500"]["exclude"])
        self.assertTrue(data_fetch.REPOS["BIDS/BSDS500"]["folder"].endswith("/train"), "only BSDS500's train/ may be read")


class CropsTest(unittest.TestCase):
    def test_a_carryable_set_within_its_budget(self):
        from training import data
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp); (tmp / "p/train").mkdir(parents=True); (tmp / "p/val").mkdir()
            index = []
            for i in range(6):
                photo(i, 500, 400).save(tmp / f"p/train/t{i}.jpg", quality=95)
                index.append({"packed": f"train/t{i}.jpg", "packed_size": [500, 400], "split": "train", "source": f"s{i}"})
            photo(9, 600, 400).save(tmp / "p/val/v.jpg", quality=95)
            index.append({"packed": "val/v.jpg", "packed_size": [600, 400], "split": "val"})
            (tmp / "p/index.json").write_text(json.dumps(index))
            val_bytes = (tmp / "p/val/v.jpg").stat().st_size
            res, used = data.crops(tmp / "p", tmp / "c", side=128, max_mb=(val_bytes + 8 * 9000) / 2 ** 20)
            files = sum(f.stat().st_size for f in (tmp / "c").rglob("*.jpg"))
            self.assertEqual(files, used)
            self.assertLessEqual(used, (val_bytes + 8 * 9000))
            self.assertEqual((tmp / "c/val/v.jpg").read_bytes(), (tmp / "p/val/v.jpg").read_bytes(), "a validation photo was cut")
            tr = [e for e in res if e["split"] == "train"]
            self.assertGreater(len(tr), 0)
            self.assertTrue(all(Image.open(tmp / "c" / e["packed"]).size == (128, 128) and e["crop_of"].startswith("train/t") for e in tr))
            self.assertEqual(len(data.load_split(tmp / "c", "train")), len(tr))


if __name__ == "__main__":
    unittest.main()


class EvaluationCropTest(unittest.TestCase):
    def test_a_photo_smaller_than_the_crop_gives_its_largest_whole_blocks(self):
        """Round 4's ImageNet photos (~400x300) are smaller than evaluate.py's 512x384: each gives the largest
        crop of whole stage-1 blocks it holds, centred on the 16-px grid; a larger photo's crop is unchanged."""
        from training.data import centre_crop
        big = np.arange(600 * 800 * 3, dtype=np.uint32).reshape(600, 800, 3)
        self.assertEqual(centre_crop(big, 512, 384).shape[:2], (384, 512))
        np.testing.assert_array_equal(centre_crop(big, 512, 384, 64), centre_crop(big, 512, 384))
        small = big[:300, :400]
        c = centre_crop(small, 512, 384, 64)
        self.assertEqual(c.shape[:2], (256, 384))
        np.testing.assert_array_equal(c, small[16:272, 0:384])   # corner (16, 0): centred, on the 16-px grid
        self.assertEqual(centre_crop(big[:300, :300], 768, 512, 256).shape[:2], (256, 256))
