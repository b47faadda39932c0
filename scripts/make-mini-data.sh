#!/usr/bin/env bash
# Rebuilds the small real-image subsets that idat-pipe ships in data/ and embeds in its binary
# (see docs/mini-vtab.md). Deterministic: no randomness, gzip written with mtime 0, fixed crops.
#
# Needs: Debian packages dataset-fashion-mnist (installed) and mate-backgrounds (fetched with
# `apt-get download` if /usr/share/backgrounds/mate/nature is missing), python3 with Pillow.
# Outputs (byte-identical for the same package and Pillow versions; shipped ones: Pillow 13.0.0):
#   data/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz  first 120 train / 100 test
#       images of each class in file order, IDX format as upstream
#   data/textures/<name>.png  8 crops (192x128) of MATE nature wallpapers (GPL-2+)
# Usage: scripts/make-mini-data.sh [PYTHON]   (run from the repository root)
set -euo pipefail
PY="${1:-python3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FMNIST=/usr/share/datasets/fashion-mnist
[ -d "$FMNIST" ] || { echo "missing $FMNIST: apt-get install dataset-fashion-mnist" >&2; exit 1; }
MATE=/usr/share/backgrounds/mate/nature
TMP=""
if [ ! -d "$MATE" ]; then
  TMP="$(mktemp -d)"
  (cd "$TMP" && apt-get download mate-backgrounds && dpkg-deb -x mate-backgrounds_*.deb x)
  MATE="$TMP/x/usr/share/backgrounds/mate/nature"
fi
mkdir -p "$ROOT/data/fashion-mnist" "$ROOT/data/textures"
"$PY" - "$FMNIST" "$MATE" "$ROOT/data" <<'PYEOF'
import gzip, struct, sys, os
from PIL import Image

fm, mate, out = sys.argv[1], sys.argv[2], sys.argv[3]

def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]

def write_idx(path, magic, dims, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(struct.pack(">I", magic) + struct.pack(">" + "I" * len(dims), *dims) + payload)

for split, per_class in (("train", 120), ("t10k", 100)):
    (n, h, w), pix = read_idx(f"{fm}/{split}-images-idx3-ubyte.gz")
    (nl,), lab = read_idx(f"{fm}/{split}-labels-idx1-ubyte.gz")
    assert n == nl and h == 28 and w == 28
    taken, imgs, labs = [0] * 10, [], []
    for i in range(n):
        c = lab[i]
        if taken[c] < per_class:
            taken[c] += 1
            imgs.append(pix[i * 784:(i + 1) * 784])
            labs.append(c)
    write_idx(f"{out}/fashion-mnist/{split}-images-idx3-ubyte.gz", 0x803, (len(imgs), 28, 28), b"".join(imgs))
    write_idx(f"{out}/fashion-mnist/{split}-labels-idx1-ubyte.gz", 0x801, (len(labs),), bytes(labs))

# (output name, source file, crop x, y, w, h in source pixels); every crop is 3:2 -> 192x128.
CROPS = [
    ("leaf_veins", "Blinds.jpg", 60, 0, 1800, 1200),
    ("dry_grass", "Dune.jpg", 150, 560, 735, 490),
    ("orange_petals", "FreshFlower.jpg", 0, 0, 1200, 800),
    ("green_grass", "GreenMeadow.jpg", 0, 300, 1080, 720),
    ("wet_leaf", "RainDrops.jpg", 360, 0, 1200, 800),
    ("storm_clouds", "Storm.jpg", 200, 200, 750, 500),
    ("weathered_wood", "Wood.jpg", 380, 720, 1800, 1200),
    ("yellow_petals", "YellowFlower.jpg", 1300, 0, 1260, 840),
]
for name, src, x, y, w, h in CROPS:
    im = Image.open(os.path.join(mate, src)).convert("RGB").crop((x, y, x + w, y + h))
    im.resize((192, 128), Image.LANCZOS).save(f"{out}/textures/{name}.png", optimize=True)
PYEOF
cp /usr/share/doc/dataset-fashion-mnist/copyright "$ROOT/data/fashion-mnist/COPYRIGHT.debian"
[ -n "$TMP" ] && rm -rf "$TMP"
echo "done: $(du -sh "$ROOT/data" | cut -f1) in data/"
