"""Side-by-side table of ``evaluate_model.py --out`` results: one column per model, one row per measure.

    python training/compare_evals.py v2=runs/eval/v2_l20.json v3=runs/eval/v3_l20.json

Rows: prompt-free Dice (and instance F1@0.5 where present), IoU after 1 / 3 / 5 clicks, NoC@85 / NoC@90,
box-prompt IoU and the share of predicted pixels outside the box (raw model; and as the plugin shows
it, confined, when the file has it). A measure a file lacks is shown as "-".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SETS = {"dsb2018_nuclei": "nuclei", "polypgen_polyps": "polyps", "hc18_fetal_head_us": "fetal head"}


def _get(result: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def rows(results: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """[(measure, [value per model])] over the data sets the first file has."""
    first = next(iter(results.values()))
    measures = [
        ("Dice (prompt-free)", ("dice",), "{:.3f}"),
        ("instance F1@0.5 (prompt-free)", ("instance_f1@0.5",), "{:.3f}"),
        ("IoU after 1 click", ("noc", "iou@1"), "{:.3f}"),
        ("IoU after 3 clicks", ("noc", "iou@3"), "{:.3f}"),
        ("IoU after 5 clicks", ("noc", "iou@5"), "{:.3f}"),
        ("NoC@85 (max 20)", ("noc", "noc@85"), "{:.1f}"),
        ("NoC@90 (max 20)", ("noc", "noc@90"), "{:.1f}"),
        ("box IoU, raw model", ("box", "box_iou"), "{:.3f}"),
        ("predicted px outside the box, raw model", ("box", "box_outside"), "{:.1%}"),
        ("box IoU, as the plugin shows it", ("box", "confined_box_iou"), "{:.3f}"),
        ("predicted px outside the box, as shown", ("box", "confined_box_outside"), "{:.1%}"),
    ]
    out = []
    for ds in first["datasets"]:
        for label, path, fmt in measures:
            values = [_get(r["datasets"].get(ds, {}), path) for r in results.values()]
            if all(v is None for v in values):
                continue
            out.append((f"{SETS.get(ds, ds)}: {label}", ["-" if v is None else fmt.format(v) for v in values]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="NAME=FILE")
    args = ap.parse_args(argv)
    results = {}
    for item in args.files:
        name, _, path = item.partition("=")
        results[name] = json.loads(Path(path).read_text())
    print("| measure | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for label, values in rows(results):
        print(f"| {label} | " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
