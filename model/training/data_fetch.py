"""Fetch the training photos from Debian packages into a cache outside git.

    /usr/bin/python3 model/training/data_fetch.py [--cache DIR]
    /usr/bin/python3 model/training/data_fetch.py --heldout [--cache DIR]     # the independent set, never trained on
    /usr/bin/python3 model/training/data_fetch.py --repos [MIRRORS]           # round 4: REPOS' photos too (fetched mirrors)

Downloads each package with `apt-get download`, unpacks it with `dpkg -x`, and collects the
photos into DIR/photos/<package>/ with DIR/photos/manifest.json (file, size, package, license).

Two packages keep their photos inside containers. We carve the embedded image streams out
rather than parse the containers: Enlightenment's `.edj` (Eet) stores its `edje/images/N`
entries as plain JPEG streams, and Qt's `.rcc` stores WebP files uncompressed (zlib gains
nothing on them). For `.edj` the largest decodable JPEG is the full-size entry `edje/images/0`.
"""
import argparse, hashlib, io, json, os, shutil, struct, subprocess, sys
from pathlib import Path
import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = 80_000_000

# (package, license, how to find the photos). Artwork (vector/abstract renders) is skipped by
# explicit name lists: a super-resolution prior should learn photographs.
PACKAGES = {
    "enlightenment-data": "BSD-2-Clause (Enlightenment project artwork/photos)",
    "gcompris-qt-data": "GPL-3.0+ / CC-BY-SA (GCompris data)",
    "plasma-workspace-wallpapers": "LGPL-3.0 / CC-BY-SA-4.0 (KDE wallpapers)",
    "mate-backgrounds": "GPL-2.0+ / CC-BY-SA (MATE backgrounds)",
    "lxqt-themes": "CC-BY-SA-3.0 (LXQt project team)",
    # street, building, indoor and text scenes, which wallpapers lack (small: 600-1300 px)
    "opencv-doc": "Apache-2.0 / BSD-3-Clause (OpenCV sample data; see its copyright file)",
    "python3-skimage": "BSD-3-Clause / CC0 (scikit-image data; see skimage/data/README.txt)",
    # landscapes from Wikimedia Commons (1280 px) and two 18 Mpx camera photos
    "liblemonldap-ng-portal-perl": "CC-BY-NC-ND-3.0 or GFDL-1.3 (Wikimedia Commons; see its copyright file)",
    "zoph": "GPL-2+ (zoph template backgrounds)",
}
# Looked at and left out (2026-11-27, contact sheets): gnome-backgrounds 43, ukui-wallpapers and
# sway-backgrounds hold renders and vector art only, no photographs; stellarium-data's landscapes
# are panoramas with the sky cut out (alpha). Never: lomiri-*, palapeli-data, digikam-data (kept
# apart for independent evaluation). Found with `apt-file search` over every .jpg in the archive
# (2026-11-27, second look): lifeograph's 8 backgrounds are photos washed out to low contrast for
# text on top; mate-screensaver-common's are NASA space images (black); scratch's are 480×360.
# Third look (2026-12-05, issue 32), beyond .jpg: `apt-file search -x` over PNG/WebP/TIFF/JPEG 2000/EXR/
# PNM/camera-raw files in backgrounds/wallpapers/photos/pictures/samples/textures folders of the whole
# archive, and the packages unpacked and opened (every image of at least 450 px a side): colmap,
# extremetuxracer-data, fotoxx-common, gimp-help-en, gthumb-data, hugin-data, imagemagick-6-doc,
# krita-data, kstars-data, marble-data, neverball-data, openshot-qt-doc, photoflare, python3-imageio,
# sddm-theme-elarun, sddm-theme-maldives, shotwell-common, slim, jigzo-data, gnome-photos-tests, eterm,
# scribus-data, xscreensaver-data, blender-data, debian-edu-artwork-emerald. They hold screenshots,
# renders, game textures, icons and sky maps; the photographs among them (a beach in sddm-theme-maldives,
# a few in slim and kstars-data, one 1024×767 greyscale flower in scribus-data) are under ten, most
# under 1000 px. The other hits by folder name (kodi-data, terminology-data, manuskript, devede,
# fvwm-crystal, lxde-common, gmerlin-data, basket-data) are patterns, abstract art or a handful of
# small backgrounds. Debian's archive has no second collection of photographs to double this set.
OPENCV_PHOTOS = {"aloeL.jpg", "building.jpg", "ela_original.jpg", "graf1.png", "leuvenA.jpg", "scenetext01.jpg",
                 "scenetext02.jpg", "scenetext03.jpg", "scenetext04.jpg", "scenetext05.jpg", "fruits.jpg", "baboon.jpg"}
SKIMAGE_PHOTOS = {"astronaut.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"}
ENLIGHTENMENT_SKIP = {"Dunes", "Sunset-Hills", "Flat-Fan", "Flat-Stone-Pattern", "Squiggle", "Squiggle-Dark",
                      "Squiggle-Light", "Squiggle-Mid", "Paper-Flower", "Sea-of-Lanterns", "God-Rays"}
PLASMA_PHOTOS = {"Autumn", "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour",
                 "EveningGlow", "FallenLeaf", "Grey", "Kite", "OneStandsOut"}
LXQT_PHOTOS = {"Butterfly-Kenneth-Wimer.jpg", "after-the-rain.jpg", "fog.jpg", "appleflower.png",
               "butterfly.png", "flowers.png", "drop.png", "this-is-not-windows.jpg",
               "beam.png", "cloud.png", "Valendas.png"}
# The independent evaluation set: the packages the project keeps apart (never trained on, never
# used to choose a run: evaluate.py --split heldout measures a release once it is chosen). Their
# photographs only: the renders (Ubuntu's purple gradients, Fossa, umang, Painting-Colors,
# Infinite-Sea, digikam's card frames) are left out. Packed with a 2x reduction like the rest, or
# less where a 512x384 crop would not fit (palapeli's puzzles are ~1300 px already).
HELDOUT = {
    "lomiri-wallpapers-16.04": ("CC-BY-SA (Ubuntu wallpaper contest; see its copyright file)", "backgrounds", {
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg"}),
    "lomiri-wallpapers-20.04": ("CC-BY-SA (Ubuntu wallpaper contest; see its copyright file)", "backgrounds",
                                {"Kleiber_by_Lukas_Baubkus.jpg"}),
    "palapeli-data": ("GPL-2+ / CC (KDE Palapeli puzzles; see its copyright file)", "palapeli/collection", {
        "castle-maintenon.jpg", "cincinnati-bridge.jpg", "citrus-fruits.jpg", "european-honey-bee.jpg",
        "panther-chameleon-female.jpg"}),
    "digikam-data": ("GPL-2+ (digiKam; see its copyright file)", "digikam/about/images", {"body-background.jpg"}),
}
HELDOUT_CROP = (512, 384)   # evaluate.py's crop: the reduction leaves at least this
MIN_SIDE = 700          # gcompris: skip sprites and icons; photos are ≥ 1280 wide
VALIDATION_PACKAGE = "lxqt-themes"


# Round 4 (issue 39): photographs of every kind from public repositories, read from mirrors the `fetch`
# tool brought here (nothing is downloaded at run time, nothing goes into git). Each: the folder at a fixed
# commit, the terms, and the reduction `data.py pack` gives its photos so that their codec does not become
# detail the model learns (a JPEG at q≈90 needs more than one at q≈96: ImageNet's ~500×375 at q≈96 are
# reduced by 1.25, the most that leaves a 256-px crop; Kodak's PNGs are lossless).
# Never the standard SR test sets: of BSDS500 only `train/`, and not 302003.jpg (a standard test image).
REPOS = {
    "EliSchwartz/imagenet-sample-images": {"commit": "bc69043e2862758a1906c6a24a792bb28c6bb2ff", "folder": "", "glob": "*.JPEG",
        "terms": "ImageNet's (non-commercial research and education)", "downscale": 1.25, "exclude": set()},
    "ajschumacher/imagen": {"commit": "2e8718956e3bb046db9a8e488c2254fd9846b6c5", "folder": "imagen", "glob": "*.jpg",
        "terms": "ImageNet's (non-commercial research and education)", "downscale": 1.25, "exclude": set()},
    "google/dreambooth": {"commit": "4f887af7970a06fc0cd3adaa1d0b368547d6a1d0", "folder": "dataset", "glob": "*/*.jpg",
        "terms": "per image in dataset/references_and_licenses.txt (Unsplash license, or photos by the authors, CC BY 4.0)",
        "downscale": 2.5, "exclude": set()},
    "BIDS/BSDS500": {"commit": "a04b7c6c3a9f0ace74bf205c72a43d32e1c72722", "folder": "BSDS500/data/images/train", "glob": "*.jpg",
        "terms": "Berkeley Segmentation Dataset: research use", "downscale": 1.25, "exclude": {"302003.jpg"}},
    "MohamedBakrAli/Kodak-Lossless-True-Color-Image-Suite": {"commit": "dd2e1105fe8d9afe1120cd7e4c0e5e41f509a81b",
        "folder": "PhotoCD_PCD0992", "glob": "*.png", "terms": "Kodak's, released for unrestricted use", "downscale": 1, "exclude": set()},
}
REPO_MIN_SIDE = 256            # after the source's reduction a 256-px training crop still fits
# The mixed validation split (issue 39), fixed before any run: every 10th ImageNet sample by file name (100),
# three dreambooth subjects, and the lxqt-themes photos (VALIDATION_PACKAGE) as before.
VAL_IMAGENET_EVERY = 10
VAL_DREAMBOOTH = {"backpack", "cat", "dog"}


def ahash(im, side=16):
    """A 256-bit average hash of the photo's luma at side×side and its 32×32 thumbnail: near duplicates
    (a re-encoding, a resize, a crop's few pixels) land within a few bits, and their thumbnails agree."""
    a = np.asarray(im.convert("L").resize((side, side), Image.BILINEAR), np.float32)
    return (a > a.mean()).ravel(), np.asarray(im.convert("L").resize((32, 32), Image.BILINEAR), np.float32)


def same_photo(a, b, near):
    """Hashes within `near` bits and thumbnails within 6 grey levels on average: a flat photo's hash alone
    matches too much (two skies), the thumbnail tells them apart."""
    return int((a[0] != b[0]).sum()) <= near and float(np.abs(a[1] - b[1]).mean()) < 6


def imagenet_val(names):
    """The ImageNet samples of the mixed validation split: every VAL_IMAGENET_EVERY-th by file name."""
    return set(sorted(names)[::VAL_IMAGENET_EVERY])


def repo_split(repo, name, imagenet=frozenset()):
    """A repository photo's split; `imagenet`: imagenet_val of the ImageNet samples' names."""
    if repo == "EliSchwartz/imagenet-sample-images":
        return "val" if name in imagenet else "train"
    if repo == "google/dreambooth":
        return "val" if name.split("/")[0] in VAL_DREAMBOOTH else "train"
    return "train"


def collect_repos(cache, mirrors, near=12):
    """Add REPOS' photos to cache/photos (package "repo:<owner>/<name>") and its manifest, leaving out exact
    duplicates (same pixels) and near ones (average hashes within `near` of 256 bits) of any photo already
    there, Debian's included; each with its source, commit, terms, split and reduction. Idempotent."""
    _, _, photos = cache_dirs(cache)
    mf = photos / "manifest.json"
    manifest = [e for e in (json.loads(mf.read_text()) if mf.exists() else []) if not e["package"].startswith("repo:")]
    hashes, names, digests, dropped = [], [], set(), []
    for e in manifest:
        with Image.open(photos / e["file"]) as im:
            im = im.convert("RGB")
            hashes.append(ahash(im)); names.append(e["file"]); digests.add(hashlib.sha256(im.tobytes()).hexdigest())
    for repo, src in REPOS.items():
        git = Path(mirrors) / repo.replace("/", "+") / "repo"
        if not git.exists():
            raise SystemExit(f"{repo}: no mirror at {git} (bring it with the fetch tool: github:{repo})")
        dest = photos / ("repo-" + repo.replace("/", "+"))
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
            # a folder's archive, not the root's: the snapshot may lack some large blob elsewhere
            arch = subprocess.run(["git", f"--git-dir={git}", "archive", f"{src['commit']}:{src['folder']}" if src["folder"] else src["commit"]],
                                  check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=arch, check=True)
            tmp.rename(dest)
        files = sorted(dest.glob(src["glob"]))
        val = imagenet_val(f.name for f in files) if repo == "EliSchwartz/imagenet-sample-images" else frozenset()
        for f in files:
            rel = str(f.relative_to(dest))
            if f.name in src["exclude"]:
                dropped.append((repo, rel, "a standard test image", "")); continue
            with Image.open(f) as im:   # dreambooth's MPO files decode as their first (JPEG) frame
                im = im.convert("RGB")
            w, h = im.size
            if min(w, h) / src["downscale"] < REPO_MIN_SIDE:
                dropped.append((repo, rel, "too small", f"{w}x{h}: under {REPO_MIN_SIDE} px after its 1/{src['downscale']} reduction")); continue
            d = hashlib.sha256(im.tobytes()).hexdigest()
            hsh = ahash(im)
            twin = next((names[i] for i, o in enumerate(hashes) if same_photo(hsh, o, near)), None)
            if d in digests or twin:
                dropped.append((repo, rel, "a duplicate", f"of {twin or 'a photo already in (same pixels)'}")); continue
            digests.add(d); hashes.append(hsh); names.append(f"{dest.name}/{rel}")
            manifest.append({"file": f"{dest.name}/{rel}", "width": w, "height": h, "package": f"repo:{repo}",
                             "source": f"github:{repo}@{src['commit'][:8]}:{(src['folder'] + '/' if src['folder'] else '') + rel}",
                             "license": src["terms"], "split": repo_split(repo, rel, val), "downscale": src["downscale"]})
    mf.write_text(json.dumps(manifest, indent=1))
    (photos / "dropped.json").write_text(json.dumps([{"repo": r, "file": f, "why": y, "detail": d} for r, f, y, d in dropped], indent=1))
    return manifest, dropped


def carve_jpegs(blob):
    """Every decodable JPEG stream in blob, as (w, h, bytes)."""
    out, i = [], 0
    while True:
        i = blob.find(b"\xff\xd8\xff", i)
        if i < 0:
            return out
        j = blob.find(b"\xff\xd9", i)
        # The EOI marker can occur inside entropy-coded data only as stuffed 0xFF00, so the
        # first FFD9 after a segment normally ends it; verify by decoding.
        while j >= 0:
            chunk = blob[i:j + 2]
            try:
                im = Image.open(io.BytesIO(chunk)); im.load()
                out.append((im.width, im.height, chunk)); break
            except Exception:
                j = blob.find(b"\xff\xd9", j + 2)
                if j - i > 60_000_000:
                    j = -1
        i += 3


def carve_webps(blob):
    out, i = [], 0
    while True:
        i = blob.find(b"RIFF", i)
        if i < 0:
            return out
        if blob[i + 8:i + 12] == b"WEBP":
            n = struct.unpack("<I", blob[i + 4:i + 8])[0] + 8
            chunk = blob[i:i + n]
            try:
                im = Image.open(io.BytesIO(chunk)); im.load()
                out.append((im.width, im.height, chunk))
            except Exception:
                pass
            i += n
        else:
            i += 4


def unpack(pkg, debs, root):
    hits = list(debs.glob(f"{pkg}_*.deb"))
    if not hits:
        subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        hits = list(debs.glob(f"{pkg}_*.deb"))
    dest = root / pkg
    if not dest.exists():
        subprocess.run(["dpkg", "-x", str(hits[0]), str(dest)], check=True)
    return dest / "usr/share"


def cache_dirs(cache):
    """cache/{debs,unpacked,photos}, made if missing."""
    dirs = cache / "debs", cache / "unpacked", cache / "photos"
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def collect(cache):
    debs, root, photos = cache_dirs(cache)
    manifest = []

    def add(pkg, name, data=None, src=None):
        out = photos / pkg / name
        out.parent.mkdir(exist_ok=True)
        if data is not None:
            out.write_bytes(data)
        else:
            shutil.copyfile(src, out)
        with Image.open(out) as im:
            w, h = im.size
        manifest.append({"file": f"{pkg}/{name}", "width": w, "height": h, "package": pkg,
                         "license": PACKAGES[pkg], "split": "val" if pkg == VALIDATION_PACKAGE else "train"})

    share = unpack("enlightenment-data", debs, root)
    for f in sorted((share / "enlightenment/data/backgrounds").glob("*.edj")):
        if f.stem in ENLIGHTENMENT_SKIP:
            continue
        jpegs = carve_jpegs(f.read_bytes())
        if jpegs:
            w, h, data = max(jpegs, key=lambda t: t[0] * t[1])
            add("enlightenment-data", f.stem + ".jpg", data=data)

    share = unpack("gcompris-qt-data", debs, root)
    for f in sorted((share / "gcompris-qt/rcc").glob("*.rcc")):
        for k, (w, h, data) in enumerate(carve_webps(f.read_bytes())):
            if min(w, h) >= MIN_SIDE:
                add("gcompris-qt-data", f"{f.stem}-{k}.webp", data=data)

    share = unpack("plasma-workspace-wallpapers", debs, root)
    for d in sorted((share / "wallpapers").iterdir()):
        if d.name in PLASMA_PHOTOS:
            imgs = sorted((d / "contents/images").glob("*"),
                          key=lambda p: -int(p.stem.split("x")[0]) * int(p.stem.split("x")[1]))
            add("plasma-workspace-wallpapers", d.name + imgs[0].suffix, src=imgs[0])

    share = unpack("mate-backgrounds", debs, root)
    for f in sorted((share / "backgrounds/mate/nature").glob("*.jpg")):
        add("mate-backgrounds", f.name, src=f)

    share = unpack("opencv-doc", debs, root)
    for f in sorted((share / "doc/opencv-doc/examples").rglob("*")):
        if f.name in OPENCV_PHOTOS and f.is_file():
            add("opencv-doc", f.name, src=f)

    share = unpack("python3-skimage", debs, root)
    for f in sorted((share.parent / "lib/python3/dist-packages/skimage/data").glob("*")):
        if f.name in SKIMAGE_PHOTOS:
            add("python3-skimage", f.name, src=f)

    share = unpack("liblemonldap-ng-portal-perl", debs, root)
    for f in sorted((share / "lemonldap-ng/portal/htdocs/static/common/backgrounds").glob("*.jpg")):
        add("liblemonldap-ng-portal-perl", f.name, src=f)

    share = unpack("zoph", debs, root)
    for f in sorted((share / "zoph/www/php/templates/default/images/backgrounds").glob("*.jpg")):
        add("zoph", f.name, src=f)

    share = unpack("lxqt-themes", debs, root)
    for f in sorted((share / "lxqt/wallpapers").iterdir()):
        if f.name in LXQT_PHOTOS:
            add("lxqt-themes", f.name, src=f)

    (photos / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def collect_heldout(cache, downscale=2):
    """The held-out photos into cache/photos, split "heldout", each with the reduction data.py pack
    gives it (downscale, or less so that a HELDOUT_CROP still fits)."""
    debs, root, photos = cache_dirs(cache)
    manifest = []
    for pkg, (lic, sub, names) in HELDOUT.items():
        share = unpack(pkg, debs, root)
        found = sorted(f for f in (share / sub).glob("*") if f.name in names)
        if len(found) != len(names):
            raise SystemExit(f"{pkg}: expected {sorted(names)} under usr/share/{sub}, found {[f.name for f in found]}")
        for f in found:
            out = photos / pkg / f.name
            out.parent.mkdir(exist_ok=True)
            shutil.copyfile(f, out)
            with Image.open(out) as im:
                w, h = im.size
            fit = max(1, min(downscale, w // HELDOUT_CROP[0], h // HELDOUT_CROP[1]))
            manifest.append({"file": f"{pkg}/{f.name}", "width": w, "height": h, "package": pkg, "license": lic,
                             "split": "heldout", "downscale": fit})
    (photos / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="default: ~/.cache/infdit-data ($INFDIT_DATA); with --heldout ~/.cache/infdit-heldout "
                    "(its own cache, so no pack of the training cache can take in a held-out photo)")
    ap.add_argument("--heldout", action="store_true", help="fetch the independent evaluation set instead (HELDOUT)")
    ap.add_argument("--repos", metavar="MIRRORS", nargs="?", const="/work/.mirror",
                    help="also add REPOS' photos from the fetched mirrors in MIRRORS (default /work/.mirror), near duplicates left out")
    a = ap.parse_args()
    if a.repos and a.heldout:
        ap.error("--repos adds training and validation photos; the held-out set stays Debian's kept-apart packages")
    if a.repos:
        cache = Path(a.cache or os.environ.get("INFDIT_DATA", str(Path.home() / ".cache/infdit-data")))
        if not (cache / "photos/manifest.json").exists():
            collect(cache)
        m, dropped = collect_repos(cache, a.repos)
        for why in sorted({d[2] for d in dropped}):
            print(f"left out: {sum(1 for d in dropped if d[2] == why)} ({why}; {cache}/photos/dropped.json lists them)")
        for split in ("train", "val"):
            print(f"{split}: {sum(1 for e in m if e['split'] == split)} photos")
    elif a.heldout:
        cache = Path(a.cache or Path.home() / ".cache/infdit-heldout")
        if (cache / "photos/manifest.json").exists() and any(
                e["split"] != "heldout" for e in json.loads((cache / "photos/manifest.json").read_text())):
            raise SystemExit(f"--cache {cache} holds training photos: give the held-out set a cache of its own")
        m = collect_heldout(cache)
    else:
        m = collect(Path(a.cache or os.environ.get("INFDIT_DATA", str(Path.home() / ".cache/infdit-data"))))
    by = {}
    for e in m:
        by.setdefault(e["package"], []).append(e)
    for p, es in by.items():
        print(f"{p:30s} {len(es):3d} photos, {sum(e['width'] * e['height'] for e in es) / 1e6:7.1f} Mpx")
