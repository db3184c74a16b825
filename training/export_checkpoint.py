"""Write a training checkpoint's weights as a model file (safetensors + card), e.g. to ship it.

    python training/export_checkpoint.py runs/prompt_tune/checkpoint.pt --weights model \
        --card-from napari_samsp/weights/default.safetensors --set refine_instances=false \
        --note "..." -o runs/prompt_tune/final.safetensors

``training/train.py`` saves the *best-validated* weights as ``model.safetensors``; its
validation is prompt-free only, so a stage that trains the prompted path (clicks) is
better judged by its final weights (``--weights model``) and by ``evaluate_model.py``.
The card starts from ``--card-from`` (the parent's card: mode, passes, licence note),
records the checkpoint, the run's recipe and the parent version, and gets a new version.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import parse_value  # noqa: E402

from napari_samsp.finetune.checkpoint import load_checkpoint  # noqa: E402


INTERACTIVE_KEYS = ("iou@1", "iou@3", "iou@5", "noc@85", "noc@90")
BOX_KEYS = ("box_iou", "box_outside", "confined_box_iou", "confined_box_outside")


def card_metrics(full: Path | None, interactive: Path | None) -> dict:
    """The card's ``metrics`` from ``evaluate_model.py --out`` files: ``full_val`` (prompt-free Dice / F1 on
    whole val splits) and ``interactive`` (clicks and boxes), each with the settings it was measured with."""
    import json

    out: dict = {}
    if full is not None:
        res = json.loads(full.read_text())
        out["full_val"] = {name: {k: round(v[k], 3) if isinstance(v[k], float) else v[k]
                                  for k in ("dice", "instance_f1@0.5", "mode") if k in v}
                           for name, v in res["datasets"].items()}
        out["full_val"]["mean_dice"] = round(res["mean_dice"], 3)
        out["full_val"]["source"] = f"training/evaluate_model.py, settings {res.get('settings')}"
    if interactive is not None:
        res = json.loads(interactive.read_text())
        rows = {}
        for name, v in res["datasets"].items():
            row = {k: round(v["noc"][k], 3) for k in INTERACTIVE_KEYS if k in v.get("noc", {})}
            row.update({k: round(v["box"][k], 3) for k in BOX_KEYS if k in v.get("box", {})})
            rows[name] = row
        out["interactive"] = {**rows, "source": f"training/evaluate_model.py, settings {res.get('settings')}"}
        out["first_click_iou"] = {name: r["iou@1"] for name, r in rows.items() if "iou@1" in r}
    return out


def main(argv: list[str] | None = None) -> int:
    from napari_samsp.models.card import ModelCard
    from napari_samsp.models.checkpoints import read_card, save_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--weights", choices=("best", "model"), default="model")
    ap.add_argument("--config-name", default=None, help="architecture (default: the run's config.json, else samunet_tiny)")
    ap.add_argument("--card-from", type=Path, help="a model file whose card is the starting point (the parent)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="card fields (JSON values)")
    ap.add_argument("--note", default=None, help="free text stored as the card's 'note'")
    ap.add_argument("--metrics-full", type=Path, help="evaluate_model.py --out JSON of the whole val splits")
    ap.add_argument("--metrics-interactive", type=Path, help="evaluate_model.py --out JSON with clicks and boxes")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)

    ck = load_checkpoint(args.checkpoint, args.weights)
    if ck.which != args.weights:
        print(f"{args.checkpoint}: no '{args.weights}' weights (no validation yet?); using '{ck.which}'", file=sys.stderr)
    model = ck.build_model(args.config_name)
    parent = ModelCard.from_dict(read_card(args.card_from) if args.card_from else {})
    # the parent's card minus its own history (ModelCard.child), the run's fields over it
    card = parent.child(training_data=parent.training_data).to_dict() if args.card_from else {}
    card.update(ck.card())
    card["parent"] = parent.version if args.card_from else None
    card["steps"] = (parent.steps if args.card_from else 0) + ck.step
    card["recipe"] = {"parent_recipe": parent.to_dict().get("recipe"), "stage": ck.run_config or None}
    for item in args.set:
        key, _, value = item.partition("=")
        card[key] = parse_value(value)
    if args.note:
        card["note"] = args.note
    if args.metrics_full or args.metrics_interactive:
        card["metrics"] = card_metrics(args.metrics_full, args.metrics_interactive)
    out = save_model(model, args.out, card)
    print(f"wrote {out} (version {read_card(out)['version']}, parent {card['parent']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
