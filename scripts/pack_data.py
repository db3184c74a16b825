"""Pack resized images + masks of the public pools into one compressed npz, for machines without ../shared.

    python scripts/pack_data.py                                  # $SAMSP_DATA -> datapack/pack.npz (8 + 4 per set)
    python scripts/pack_data.py --per-split all all --size 256    # every pair (the GPU training recipe)

The format is the one ``training/gpu_train.py`` documents and reads (written with its
``write_pack``): ``images`` uint8 (N, S, S, 3), ``masks`` uint16 (N, S, S) instance labels
(binary sets use 1), ``domains``, ``split`` and ``stems``. Each pair is resized so its
longest side is S (images bilinear, masks nearest) and zero-padded at the bottom/right.
No pickles. ``datapack/`` is git-ignored (third-party images are never committed); the
device tool carries it (``carry: ["datapack", ".whl"]``). :func:`unpack` writes a pack
back as data folders in the project's layout (what ``samsp finetune --data`` reads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("dsb2018_nuclei", "hc18_fetal_head_us", "polypgen_polyps")


def _resize_pad(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Longest side -> ``size`` (PIL bilinear; nearest on int32 for labels), zero-padded to (size, size)."""
    from PIL import Image

    h, w = arr.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        out = np.asarray(Image.fromarray(arr.astype(np.int32)).resize(new, Image.NEAREST)).astype(arr.dtype)
    else:
        out = np.asarray(Image.fromarray(arr).resize(new, Image.BILINEAR))
    pad = [(0, size - out.shape[0]), (0, size - out.shape[1])] + [(0, 0)] * (out.ndim - 2)
    return np.pad(out, pad)


def _stems(folder: Path) -> dict[str, list[str]]:
    images = sorted(p.stem for p in (folder / "images").iterdir() if p.is_file())
    split_file = folder / "splits.json"
    if split_file.is_file():
        splits = json.loads(split_file.read_text())
        have = set(images)
        return {k: [s for s in splits.get(k, []) if s in have] for k in ("train", "val")}
    cut = max(1, len(images) * 4 // 5)
    return {"train": images[:cut], "val": images[cut:]}


def pack(root: Path, out: Path, per_split: tuple[int | None, int | None] = (8, 4), size: int = 256,
         datasets: tuple[str, ...] = DATASETS) -> dict[str, int]:
    """Write the pack atomically (``per_split`` None: every pair of that split); returns pairs per dataset."""
    sys.path.insert(0, str(REPO / "training"))
    from gpu_train import write_pack

    from napari_samsp.io import read_image
    from napari_samsp.metrics import read_mask
    from napari_samsp.transforms import to_rgb_uint8

    images, masks, domains, splits, stems = [], [], [], [], []
    counts: dict[str, int] = {}
    for name in datasets:
        folder = root / name
        if not (folder / "images").is_dir():
            raise SystemExit(f"pack_data: no {folder}/images (set SAMSP_DATA to the folder holding {', '.join(datasets)})")
        files = {p.stem: p for p in (folder / "images").iterdir() if p.is_file()}
        counts[name] = 0
        for split, n in zip(("train", "val"), per_split):
            have = _stems(folder)[split]
            if n is not None and have:  # evenly spaced over the split, deterministic
                have = [have[i] for i in np.linspace(0, len(have) - 1, min(n, len(have))).round().astype(int)]
            for stem in dict.fromkeys(have):
                mask_path = folder / "masks" / f"{stem}.png"
                if stem not in files or not mask_path.is_file():
                    continue
                mask = read_mask(mask_path)
                lab = mask.astype(np.uint16) if np.unique(mask).size > 2 else (mask > 0).astype(np.uint16)
                images.append(_resize_pad(to_rgb_uint8(read_image(files[stem])), size, nearest=False))
                masks.append(_resize_pad(lab, size, nearest=True))
                domains.append(name)
                splits.append(split)
                stems.append(stem)
                counts[name] += 1
    write_pack(out, np.stack(images), np.stack(masks), domains, splits, stems)
    return counts


def unpack(pack_path: Path, dest: Path) -> dict[str, Path]:
    """Write a pack as data folders in the project's layout (``images/``, ``masks/``, ``splits.json``) per domain."""
    from PIL import Image

    dirs: dict[str, Path] = {}
    splits: dict[str, dict[str, list[str]]] = {}
    with np.load(pack_path, allow_pickle=False) as z:
        images, masks, domains = z["images"], z["masks"], z["domains"].astype(str)
        n = len(images)
        split = z["split"].astype(str) if "split" in z.files else np.full(n, "train")
        stems = z["stems"].astype(str) if "stems" in z.files else np.array([f"{i:05d}" for i in range(n)])
    for i in range(n):
        name = str(domains[i])
        folder = dirs.setdefault(name, dest / name)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / "images" / f"{stems[i]}.png")
        Image.fromarray(masks[i]).save(folder / "masks" / f"{stems[i]}.png")
        splits.setdefault(name, {"train": [], "val": []})[str(split[i])].append(str(stems[i]))
    for name, sp in splits.items():
        (dirs[name] / "splits.json").write_text(json.dumps(sp))
    return dirs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SAMSP_DATA", REPO / ".." / "shared" / "datasets")))
    ap.add_argument("--out", type=Path, default=REPO / "datapack" / "pack.npz")
    ap.add_argument("--per-split", nargs=2, default=("8", "4"), metavar=("TRAIN", "VAL"), help="pairs per split, or 'all'")
    ap.add_argument("--size", type=int, default=256, help="side S of the packed squares")
    args = ap.parse_args(argv)
    per = tuple(None if v == "all" else int(v) for v in args.per_split)
    counts = pack(args.data, args.out, per, args.size)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
