"""Pack a few resized images + masks of the public pools into one compressed npz, for machines without ../shared.

    python scripts/pack_data.py                       # $SAMSP_DATA -> datapack/samsp_pack.npz
    python scripts/pack_data.py --per-split 8 4 --max-side 256 --out datapack/samsp_pack.npz

``datapack/`` is git-ignored (third-party images are never committed); the device
tool carries it (``carry: ["datapack", ".whl"]``). Keys are
``<dataset>__<split>__<stem>__image`` (uint8, (H, W) or (H, W, 3)) and
``...__mask`` (uint16 instance labels or uint8 0/255), resized so the longest
side is at most ``--max-side`` (images bilinear, masks nearest). No pickles:
read it with ``np.load(path, allow_pickle=False)`` or :func:`unpack`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

DATASETS = ("dsb2018_nuclei", "hc18_fetal_head_us", "polypgen_polyps")
SEP = "__"


def _resize(arr: np.ndarray, max_side: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return arr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:  # labels: PIL nearest on 32-bit ints keeps every id
        return np.asarray(Image.fromarray(arr.astype(np.int32)).resize(size, Image.NEAREST)).astype(arr.dtype)
    return np.asarray(Image.fromarray(arr).resize(size, Image.BILINEAR))


def _stems(folder: Path) -> dict[str, list[str]]:
    images = sorted(p.stem for p in (folder / "images").iterdir() if p.is_file())
    split_file = folder / "splits.json"
    if split_file.is_file():
        splits = json.loads(split_file.read_text())
        have = set(images)
        return {k: [s for s in splits.get(k, []) if s in have] for k in ("train", "val")}
    cut = max(1, len(images) * 4 // 5)
    return {"train": images[:cut], "val": images[cut:]}


def pack(root: Path, out: Path, per_split: tuple[int, int] = (8, 4), max_side: int = 256,
         datasets: tuple[str, ...] = DATASETS) -> dict[str, int]:
    """Write the pack atomically; returns the number of pairs per dataset."""
    from napari_samsp.io import read_image
    from napari_samsp.metrics import read_mask

    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name in datasets:
        folder = root / name
        if not (folder / "images").is_dir():
            raise SystemExit(f"pack_data: no {folder}/images (set SAMSP_DATA to the folder holding {', '.join(datasets)})")
        splits = _stems(folder)
        counts[name] = 0
        for split, n in zip(("train", "val"), per_split):
            stems = splits[split]
            # evenly spaced over the split, deterministic
            pick = [stems[i] for i in np.linspace(0, len(stems) - 1, min(n, len(stems))).round().astype(int)] if stems else []
            for stem in dict.fromkeys(pick):
                img_path = next(p for p in (folder / "images").iterdir() if p.stem == stem)
                mask_path = folder / "masks" / f"{stem}.png"
                if not mask_path.is_file():
                    continue
                img = read_image(img_path)
                if img.dtype != np.uint8:
                    from napari_samsp.transforms import to_rgb_uint8

                    img = to_rgb_uint8(img)
                mask = read_mask(mask_path)
                mask = mask.astype(np.uint16) if mask.max() > 255 or np.unique(mask).size > 2 else ((mask > 0) * 255).astype(np.uint8)
                key = SEP.join((name, split, stem))
                arrays[f"{key}{SEP}image"] = _resize(img, max_side, nearest=False)
                arrays[f"{key}{SEP}mask"] = _resize(mask, max_side, nearest=True)
                counts[name] += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return counts


def unpack(pack_path: Path, dest: Path) -> dict[str, Path]:
    """Write the pack as data folders in the project's layout (``images/``, ``masks/``, ``splits.json``)."""
    from PIL import Image

    dirs: dict[str, Path] = {}
    splits: dict[str, dict[str, list[str]]] = {}
    with np.load(pack_path, allow_pickle=False) as data:
        for key in data.files:
            name, split, stem, kind = key.split(SEP)
            folder = dirs.setdefault(name, dest / name)
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "masks").mkdir(parents=True, exist_ok=True)
            if kind == "image":
                Image.fromarray(data[key]).save(folder / "images" / f"{stem}.png")
                splits.setdefault(name, {"train": [], "val": []})[split].append(stem)
            else:
                Image.fromarray(data[key]).save(folder / "masks" / f"{stem}.png")
    for name, sp in splits.items():
        (dirs[name] / "splits.json").write_text(json.dumps(sp))
    return dirs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SAMSP_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets")))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "datapack" / "samsp_pack.npz")
    ap.add_argument("--per-split", type=int, nargs=2, default=(8, 4), metavar=("TRAIN", "VAL"))
    ap.add_argument("--max-side", type=int, default=256)
    args = ap.parse_args(argv)
    counts = pack(args.data, args.out, tuple(args.per_split), args.max_side)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
