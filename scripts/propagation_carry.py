"""How far "Propagate in 3D" carries objects through real stacks (numbers for docs/PLUGIN.md).

Stacks:
  * the 3D sample (``synthetic_nuclei_stack((12, 128, 128), n=14, seed=0)``, napari's
    "synthetic nuclei 3D"): ellipsoids that grow and shrink from slice to slice;
  * shifted real images: each slice of a stack is the same DSB2018 (nuclei, instance) or
    HC18 (fetal head, one object) image cropped ``--shift`` px further right, so every
    object is present on every slice and moves ``--shift`` px per slice.

Every ground-truth object is propagated from its largest slice with
:func:`napari_samsp.interactive.propagate_object` (only its common arguments, so the
same script measures older versions too: ``PYTHONPATH=<other checkout>``). Counted:
slices the object spans besides the start ("possible"), slices the propagation
returned ("reached"; more than possible means it ran on after the object ended),
slices whose mask matches the truth with IoU >= 0.5 ("carried"), and objects carried
at least one slice.

    PYTHONPATH=$PWD python scripts/propagation_carry.py --data $SAMSP_DATA
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def shifted_stack(image: np.ndarray, labels: np.ndarray, depth: int, shift: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``depth`` crops of (image, labels), each ``shift`` px further right: (planes, (Z, H, W) labels)."""
    width = image.shape[1] - shift * (depth - 1)
    planes = [np.ascontiguousarray(image[:, z * shift : z * shift + width]) for z in range(depth)]
    return planes, np.stack([labels[:, z * shift : z * shift + width] for z in range(depth)])


def carry(predictor, planes: list[np.ndarray], labels: np.ndarray, max_objects: int, others_known: bool = True,
          **options) -> dict:
    """Propagate every object (up to ``max_objects``) of ``labels`` from its largest slice.

    ``others_known``: the labels layer holds every other object too (after auto-segmentation),
    else only the propagated one (a user who annotates objects one by one)."""
    from napari_samsp.interactive import propagate_object

    n = len(planes)
    ids = [int(i) for i in np.unique(labels) if i][:max_objects]
    possible = reached = carried = objects_carried = 0
    for i in ids:
        areas = [(labels[z] == i).sum() for z in range(n)]
        z0 = int(np.argmax(areas))
        given = labels if others_known else np.where(labels == i, labels, 0)
        out = propagate_object(predictor, lambda z: planes[z], n, given, z0, i, **options)
        possible += sum(1 for z in range(n) if z != z0 and areas[z] > 0)
        reached += len(out)
        good = 0
        for z, mask in out.items():
            truth = labels[z] == i
            union = np.count_nonzero(mask | truth)
            good += int(union > 0 and np.count_nonzero(mask & truth) / union >= 0.5)
        carried += good
        objects_carried += int(good > 0)
    return {
        "objects": len(ids),
        "possible": possible,
        "reached": reached,
        "carried": carried,
        "objects_carried": objects_carried,
        "carried_fraction": round(carried / possible, 3) if possible else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("SAMSP_DATA"), help="folder with dsb2018_nuclei/, hc18_fetal_head_us/")
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=3, help="real images per dataset")
    parser.add_argument("--depth", type=int, default=7)
    parser.add_argument("--shift", type=int, default=4)
    parser.add_argument("--max-objects", type=int, default=8, help="objects per stack")
    parser.add_argument(
        "--point", choices=("default", "on", "off"), default="default",
        help="propagate_object(use_point=...); 'default' passes nothing (works with older versions)",
    )
    parser.add_argument(
        "--multimask", choices=("default", "on", "off"), default="default",
        help="propagate_object(multimask=...): the box's three candidate masks; 'default' passes nothing",
    )
    parser.add_argument("--others", choices=("known", "unknown"), default="known",
                        help="the labels hold every other object (known) or only the propagated one")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from napari_samsp.interactive import StackNormaliser
    from napari_samsp.io import read_image, read_mask
    from napari_samsp.models.checkpoints import load_model
    from napari_samsp.predictor import EmbeddingCache, Predictor
    from napari_samsp.sample_data_gen import synthetic_nuclei_stack

    loaded = load_model(args.model, device="cpu")
    predictor = Predictor.for_loaded(loaded, EmbeddingCache(None, max_memory_entries=64))
    options = {} if args.point == "default" else {"use_point": args.point == "on"}
    if args.multimask != "default":
        options["multimask"] = args.multimask == "on"
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    stack, truth = synthetic_nuclei_stack((12, 128, 128), n=14, seed=0)
    norm = StackNormaliser(stack)
    rows["3D sample (12 x 128 x 128)"] = carry(predictor, [norm.plane(z) for z in range(12)], truth, args.max_objects, args.others == "known", **options)
    if args.data:
        root = Path(args.data)
        for name in ("dsb2018_nuclei", "hc18_fetal_head_us"):
            images = sorted((root / name / "images").glob("*.png"))[: args.images]
            total: dict[str, float] = {}
            for path in images:
                image, mask = read_image(path), read_mask(root / name / "masks" / f"{path.stem}.png")
                planes, labels = shifted_stack(image, mask, args.depth, args.shift)
                for key, value in carry(predictor, planes, labels, args.max_objects, args.others == "known", **options).items():
                    if key != "carried_fraction":
                        total[key] = total.get(key, 0) + value
            total["carried_fraction"] = round(total["carried"] / total["possible"], 3) if total.get("possible") else None
            rows[f"{name}: {len(images)} images, {args.depth} slices shifted {args.shift} px"] = total
    seconds = time.perf_counter() - t0
    print(f"model {loaded.model_id}{'' if not options else f' {options}'}, other objects {args.others}; {seconds:.0f} s on {os.cpu_count()} CPU core(s), one torch thread")
    print(f"{'stack':58s} objects possible reached carried objects_carried")
    for key, r in rows.items():
        print(f"{key:58s} {r['objects']:7d} {r['possible']:8d} {r['reached']:7d} {r['carried']:7d} {r['objects_carried']:15d}")
    if args.json:
        args.json.write_text(json.dumps({"model": loaded.model_id, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
