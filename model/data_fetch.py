"""Fetch the training photos from Debian packages into a cache outside git.

    /usr/bin/python3 model/data_fetch.py [--cache DIR]
    /usr/bin/python3 model/data_fetch.py --heldout [--cache DIR]     # the independent set, never trained on

Downloads each package with `apt-get download`, unpacks it with `dpkg -x`, and collects the
photos into DIR/photos/<package>/ with DIR/photos/manifest.json (file, size, package, license).

Two packages keep their photos inside containers. We carve the embedded image streams out
rather than parse the containers: Enlightenment's `.edj` (Eet) stores its `edje/images/N`
entries as plain JPEG streams, and Qt's `.rcc` stores WebP files uncompressed (zlib gains
nothing on them). For `.edj` the largest decodable JPEG is the full-size entry `edje/images/0`.
"""
import argparse, io, json, os, shutil, struct, subprocess, sys
from pathlib import Path
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
    a = ap.parse_args()
    if a.heldout:
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
