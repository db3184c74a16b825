"""The GPU path in one run (issue 9.5): segment, clicks and fine-tune on CUDA, against upstream on the same GPU.

Run by ``scripts/gpu_check.sh`` on a lent machine; dry-run on CPU by
``tests/test_gpu_check.py`` (``--device cpu --tiny``). Every step is timed and
recorded even when it fails (a failing step does not stop the others); the
summary goes to ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.

Steps, with the embedded default model and with an official-format SAM (random
vit_b saved as upstream saves it; ``--tiny``: the ``micro`` config, same format):

1. ``samsp segment`` (in process, ``cli.main``) on the data pack's images: the
   default model in its card's mode, the official model in everything-mode.
2. Simulated clicks (RITM clicker, ``metrics.simulate_clicks``) with the default
   model: ms per click, IoU after 1/3/5 clicks.
3. CPU vs device masks of the default model (auto-segmentation and first click): IoU.
4. bf16 autocast vs fp32 (embedding + decoding): mask IoU, for both models;
   bf16 is called safe where the IoU is >= 0.98.
5. The official model against upstream ``SamPredictor`` on the same device:
   embedding time and click latency (fp32 and bf16), and the masks' IoU.
6. Everything-mode against upstream ``SamAutomaticMaskGenerator`` (training/bench_everything.py).
7. ``samsp finetune`` (in process) and ``finetune_model`` with bf16 autocast on and
   off: seconds per step (median between steps) and peak memory
   (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("SAMSP_CACHE", "off")  # no disk cache: zarr is not needed on the lent machine

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "training")]

import pack_data  # noqa: E402


# --------------------------------------------------------------------------- plumbing


class Report:
    """Step results: ``{name: {"ok": bool, "seconds": float, ...}}``, written as JSON and markdown."""

    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}
        self.info: dict = {}

    @contextlib.contextmanager
    def step(self, name: str):
        rec: dict = {}
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            yield rec
            rec["ok"] = True
        except Exception as exc:  # a failing step is recorded, the others still run
            rec["ok"] = False
            rec["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc()
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.steps[name] = rec
        print(f"   {'ok' if rec['ok'] else 'FAILED'} in {rec['seconds']:.1f} s: "
              + json.dumps({k: v for k, v in rec.items() if k not in ('ok', 'seconds')}, default=str)[:400], flush=True)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        data = {"info": self.info, "steps": self.steps, "all_ok": all(s["ok"] for s in self.steps.values())}
        (out / "gpu_check.json").write_text(json.dumps(data, indent=2, default=_jsonable))
        lines = ["# GPU check", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.info.items()]
        lines += ["", "| step | ok | seconds | results |", "|---|---|---:|---|"]
        for name, rec in self.steps.items():
            rest = {k: v for k, v in rec.items() if k not in ("ok", "seconds")}
            lines.append(f"| {name} | {'yes' if rec['ok'] else '**no**'} | {rec['seconds']:.1f} | "
                         f"{json.dumps(rest, default=_jsonable)[:600].replace('|', '/')} |")
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def amp(dev: torch.device, on: bool):
    """bf16 autocast (on CPU too, so the dry run exercises the bf16 code path; fine-tuning uses it on CUDA only)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def timed(fn, dev: torch.device, n: int, warmup: int = 1) -> dict:
    """Median / mean milliseconds of ``fn()`` over ``n`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": round(float(np.median(times)), 3), "mean_ms": round(float(np.mean(times)), 3), "n": n}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def quiet_main(argv: list[str]) -> tuple[int, str]:
    """``samsp`` in process, its stdout captured (stderr passes through)."""
    from napari_samsp.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([str(a) for a in argv])
    return code, buf.getvalue()


# --------------------------------------------------------------------------- data and models


def prepare_data(pack: Path, dest: Path, tiny: bool) -> dict[str, Path]:
    if not pack.is_file():
        raise SystemExit(f"gpu_check: no data pack at {pack}: run scripts/pack_data.py first (it needs SAMSP_DATA)")
    dirs = pack_data.unpack(pack, dest)
    if tiny:  # one data set, 3 training and 2 validation pairs
        name = sorted(dirs)[0]
        for other in set(dirs) - {name}:
            shutil.rmtree(dirs[other])
        dirs = {name: dirs[name]}
        splits = json.loads((dirs[name] / "splits.json").read_text())
        keep = {"train": splits["train"][:3], "val": splits["val"][:2]}
        for split, stems in splits.items():
            for stem in set(stems) - set(keep[split]):
                (dirs[name] / "images" / f"{stem}.png").unlink()
                (dirs[name] / "masks" / f"{stem}.png").unlink()
        (dirs[name] / "splits.json").write_text(json.dumps(keep))
    return dirs


def val_pairs(dirs: dict[str, Path], per_set: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from napari_samsp.io import read_image
    from napari_samsp.metrics import read_mask

    out = []
    for name, folder in sorted(dirs.items()):
        stems = json.loads((folder / "splits.json").read_text())["val"][:per_set]
        out += [(f"{name}/{s}", read_image(folder / "images" / f"{s}.png"), read_mask(folder / "masks" / f"{s}.png")) for s in stems]
    return out


def official_model(tmp: Path, tiny: bool, device: str):
    """(path, our LoadedModel, upstream Sam): random weights saved as official checkpoints are (torch.save(state_dict)).

    Full: vit_b with its mask outputs scaled x30 (random weights otherwise give logits of about +-0.1, so
    no mask survives any filter), upstream's model from ``sam_model_registry``. Tiny: the ``micro`` config
    in the same format; upstream's predictor runs on a copy of our model (upstream's registry has no micro).
    """
    from segment_anything import sam_model_registry

    from napari_samsp.models import build_model
    from napari_samsp.models.checkpoints import load_model

    name = "micro" if tiny else "vit_b"
    torch.manual_seed(0)
    model = build_model(name)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30.0)
    path = tmp / f"sam_{name}_random.pth"
    torch.save(model.state_dict(), path)
    del model
    loaded = load_model(str(path), device=device)
    if tiny:
        sam = copy.deepcopy(loaded.model)
    else:
        sam = sam_model_registry["vit_b"](checkpoint=str(path)).to(device).eval()
    return path, loaded, sam


# --------------------------------------------------------------------------- steps


def step_segment_cli(rec: dict, images: list[Path], out: Path, model: str | None, dev: str, extra: list[str]) -> None:
    argv = ["segment", *images, "-o", out, "--device", dev, "--threads", str(torch.get_num_threads()), *extra]
    if model:
        argv += ["--model", model]
    t0 = time.perf_counter()
    code, stdout = quiet_main(argv)
    rec["seconds_per_image"] = round((time.perf_counter() - t0) / max(1, len(images)), 3)
    rec["exit_code"] = code
    rec["outputs"] = len(list(out.glob("*.png")))
    rec["modes"] = sorted({line.rsplit("mode ", 1)[-1].rstrip(")") for line in stdout.splitlines() if "mode " in line})
    rec["objects"] = [int(line.split("(")[-1].split()[0]) for line in stdout.splitlines() if "->" in line]
    if code != 0 or rec["outputs"] != len(images):
        raise RuntimeError(f"samsp segment exited {code} with {rec['outputs']} of {len(images)} outputs")


def step_clicks(rec: dict, loaded, pairs, dev: torch.device, max_clicks: int) -> None:
    from napari_samsp.metrics import simulate_clicks
    from napari_samsp.predictor import EmbeddingCache, Predictor

    sys.path.insert(0, str(REPO / "training"))
    from evaluate_model import pick_noc_object

    predictor = Predictor(loaded.model, loaded.model_id, EmbeddingCache(None), device=dev)
    times, curves = [], []
    for name, image, gt in pairs:
        obj = pick_noc_object(gt, instance=np.unique(gt).size > 2)
        if obj is None:
            continue
        predictor.set_image(image)

        def predict(points, labels, prev):
            sync(dev)
            t0 = time.perf_counter()
            p = predictor.predict(points, labels, mask_input=prev, multimask_output=False)
            sync(dev)
            times.append(1000 * (time.perf_counter() - t0))
            return p.masks[0], p.logits[:1]

        curves.append(simulate_clicks(predict, obj, max_clicks=max_clicks, iou_targets=(0.85, 0.9))["ious"])
    rec["objects"] = len(curves)
    rec["ms_per_click_median"] = round(float(np.median(times)), 3)
    for k in (1, 3, 5):
        if k <= max_clicks:
            rec[f"iou_after_{k}"] = round(float(np.mean([c[min(k, len(c)) - 1] for c in curves])), 4)


def step_cpu_vs_device(rec: dict, loaded, pairs, dev: torch.device) -> None:
    from napari_samsp.autoseg import auto_mode, card_segment_options, segment_image
    from napari_samsp.predictor import EmbeddingCache, Predictor

    mode = auto_mode(loaded.card)
    opts = card_segment_options(loaded.card, mode)
    on_dev = Predictor(loaded.model, loaded.model_id, EmbeddingCache(None), device=dev)
    on_cpu = Predictor(copy.deepcopy(loaded.model).cpu(), loaded.model_id, EmbeddingCache(None))
    auto_ious, click_ious, emb_diff = [], [], []
    for name, image, gt in pairs:
        on_dev.set_image(image)  # the embeddings and clicks compared below (segment_image leaves predictors as they are)
        on_cpu.set_image(image)
        a = segment_image(on_dev, image, mode=mode, **opts).labels
        b = segment_image(on_cpu, image, mode=mode, **opts).labels
        auto_ious.append(mask_iou(a, b))
        emb_diff.append(float((on_dev.features.embeddings.float().cpu() - on_cpu.features.embeddings).abs().max()))
        h, w = image.shape[:2]
        pt = np.array([[w / 2, h / 2]])
        click_ious.append(mask_iou(on_dev.predict(pt).masks[0], on_cpu.predict(pt).masks[0]))
    rec["mode"] = mode
    rec["auto_foreground_iou_mean"] = round(float(np.mean(auto_ious)), 5)
    rec["auto_foreground_iou_min"] = round(float(np.min(auto_ious)), 5)
    rec["click_iou_min"] = round(float(np.min(click_ious)), 5)
    rec["embedding_max_abs_diff"] = float(np.max(emb_diff))
    rec["agree"] = bool(min(auto_ious) >= 0.99 and min(click_ious) >= 0.99)


def step_bf16(rec: dict, loaded, pairs, dev: torch.device) -> None:
    """bf16 autocast vs fp32 on the same device: first-click masks and the automatic mode's foreground."""
    from napari_samsp.autoseg import auto_mode, card_segment_options, segment_image
    from napari_samsp.predictor import EmbeddingCache, Predictor

    mode = auto_mode(loaded.card)
    opts = card_segment_options(loaded.card, mode)
    if mode == "everything":
        opts = {**opts, "points_per_side": 8, "pred_iou_thresh": 0.01, "stability_score_thresh": 0.3}
    click, auto = [], []
    for name, image, gt in pairs:
        h, w = image.shape[:2]
        pt = np.array([[w / 3, h / 2]])
        res = {}
        for on in (False, True):
            p = Predictor(loaded.model, loaded.model_id, EmbeddingCache(None), device=dev)
            with amp(dev, on):
                p.set_image(image)
                res[on] = (p.predict(pt, multimask_output=True).masks, segment_image(p, image, mode=mode, **opts).labels)
        click.append(min(mask_iou(x, y) for x, y in zip(res[False][0], res[True][0])))
        auto.append(mask_iou(res[False][1], res[True][1]))
    rec["autocast"] = f"{dev.type} bf16"
    rec["mode"] = mode
    rec["click_iou_min"] = round(float(np.min(click)), 4)
    rec["auto_iou_mean"] = round(float(np.mean(auto)), 4)
    rec["safe"] = bool(min(click) >= 0.98 and np.mean(auto) >= 0.98)


def upstream_click(up, points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream ``SamPredictor.predict`` for one click, through ``predict_torch`` with float outputs:
    its ``predict`` calls ``.numpy()`` on the decoder's outputs, which fails on bf16 tensors under autocast."""
    coords = up.transform.apply_coords(points, up.original_size)
    c = torch.as_tensor(coords, dtype=torch.float, device=up.device)[None]
    lab = torch.as_tensor(labels, dtype=torch.int, device=up.device)[None]
    masks, iou, low = up.predict_torch(c, lab, multimask_output=True)
    low[0].float().cpu().numpy()
    return masks[0].cpu().numpy(), iou[0].float().cpu().numpy()


def step_vs_upstream(rec: dict, loaded, sam, image: np.ndarray, dev: torch.device, n: int) -> None:
    """Embedding time and click latency: our Predictor vs upstream SamPredictor, same weights and device."""
    from segment_anything import SamPredictor

    from napari_samsp.predictor import EmbeddingCache, Predictor
    from napari_samsp.transforms import to_rgb_uint8

    rgb = to_rgb_uint8(image)
    ours = Predictor(loaded.model, loaded.model_id, EmbeddingCache(None), device=dev)
    up = SamPredictor(sam)
    h, w = rgb.shape[:2]
    pt = np.array([[w * 0.4, h * 0.6]])
    lab = np.array([1])
    for on in (False, True):
        tag = "bf16" if on else "fp32"
        with amp(dev, on):
            def embed_ours():
                ours.cache.clear_memory()
                ours.set_image(rgb)

            rec[f"embed_ours_{tag}"] = timed(embed_ours, dev, n)
            rec[f"embed_upstream_{tag}"] = timed(lambda: up.set_image(rgb), dev, n)
            rec[f"click_ours_{tag}"] = timed(lambda: ours.predict(pt, lab, multimask_output=True), dev, 4 * n)
            rec[f"click_upstream_{tag}"] = timed(lambda: upstream_click(up, pt, lab), dev, 4 * n)
            a = ours.predict(pt, lab, multimask_output=True).masks
            b = upstream_click(up, pt, lab)[0]
            rec[f"click_mask_iou_min_{tag}"] = round(min(mask_iou(x, y) for x, y in zip(a, b)), 4)
    rec["image"] = list(rgb.shape)


def step_everything(rec: dict, loaded, sam, image: np.ndarray, dev: torch.device, points: int) -> None:
    import bench_everything

    for label, extra in (("defaults", {}), ("loosened", bench_everything.LOOSE)):
        r = bench_everything.compare(loaded, sam, image, {"points_per_side": points, **extra}, str(dev))
        rec[label] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "options"}
    rec["points"] = points * points


def step_finetune(rec: dict, loaded, dirs: dict[str, Path], dev: torch.device, steps: int, batch_size: int | None = None) -> None:
    """``finetune_model`` (what ``samsp finetune`` runs): seconds per step and peak memory, bf16 autocast
    on and off (CUDA; on CPU autocast is off, so fp32 runs once). ``batch_size`` None: the default config's."""
    import dataclasses

    from napari_samsp.finetune.job import default_finetune_config, finetune_model
    from napari_samsp.finetune.loop import Callbacks

    for on in (True, False) if dev.type == "cuda" else (False,):
        tag = "bf16" if on else "fp32"
        cfg = dataclasses.replace(default_finetune_config(steps), amp=on, val_every=10**9)
        if batch_size:
            cfg = dataclasses.replace(cfg, batch_size=batch_size)
        stamps: list[float] = []

        def progress(step: int, total: int) -> None:
            sync(dev)
            stamps.append(time.perf_counter())

        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        result = finetune_model(loaded, list(dirs.values()), cfg, Callbacks(progress=progress))
        total = time.perf_counter() - t0
        deltas = np.diff(stamps)
        rec[tag] = {
            "steps": len(stamps),
            "s_per_step_median": round(float(np.median(deltas)), 4) if len(deltas) else None,
            "total_s": round(total, 2),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None,
            "val_dice_before": round(result.before["dice"], 4),
            "val_dice_after": round(result.after["dice"], 4),
            "batch_size": cfg.batch_size,
            "trainable": list(cfg.trainable),
        }


def step_finetune_cli(rec: dict, dirs: dict[str, Path], out: Path, model: str | None, dev: str, steps: int) -> None:
    argv = ["finetune", *sum((["--data", d] for d in dirs.values()), []), "-o", out, "--steps", steps,
            "--device", dev, "--threads", str(torch.get_num_threads())]
    if model:
        argv += ["--model", model]
    code, stdout = quiet_main(argv)
    rec["exit_code"] = code
    rec["final"] = next((line for line in stdout.splitlines() if line.startswith("final validation Dice")), None)
    if code != 0 or not out.is_file():
        raise RuntimeError(f"samsp finetune exited {code}")
    from napari_samsp.models.checkpoints import load_model

    again = load_model(str(out), device="cpu")  # the output is a model file `samsp segment --model` accepts
    rec["output_mode"] = again.card.get("mode")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny budget (micro official model, few images and steps): the CPU dry run")
    ap.add_argument("--pack", type=Path, default=REPO / "datapack" / "pack.npz")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "out" / "gpu_check")))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores; the test uses 1)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here", file=sys.stderr)
        return 2
    tiny = args.tiny
    report = Report()
    import segment_anything
    import torchvision

    report.info = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "segment_anything": getattr(segment_anything, "__file__", "?"),
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "tiny": tiny,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    n_rep = 2 if tiny else 10
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_s:
        tmp = Path(tmp_s)
        dirs = prepare_data(args.pack, tmp / "data", tiny)
        pairs = val_pairs(dirs, 1 if tiny else 3)
        images = [f for d in dirs.values() for f in sorted((d / "images").glob("*.png"))[: 1 if tiny else 3]]
        report.info["data"] = {k: len(list((v / "images").glob("*.png"))) for k, v in dirs.items()}

        from napari_samsp.models.checkpoints import load_model

        default = load_model(None, device=str(dev))
        report.info["default_model"] = f"{default.card['config']['name']} {default.model_id} mode {default.card.get('mode')}"
        off_path = off = sam = None
        with report.step("official model (random, official format)") as rec:
            off_path, off, sam = official_model(tmp, tiny, str(dev))
            rec.update(config=off.model.config.name, img_size=off.model.img_size, mode=off.card.get("mode"))

        with report.step("samsp segment: default model") as rec:
            step_segment_cli(rec, images, tmp / "seg_default", None, str(dev), [])
        with report.step("samsp segment: official model (everything)") as rec:
            step_segment_cli(rec, images, tmp / "seg_official", str(off_path), str(dev), ["--points-per-side", "4" if tiny else "32"])
        with report.step("clicks: default model") as rec:
            step_clicks(rec, default, pairs, dev, 3 if tiny else 5)
        with report.step("CPU vs device masks: default model") as rec:
            step_cpu_vs_device(rec, default, pairs, dev)
        with report.step("bf16 vs fp32: default model") as rec:
            step_bf16(rec, default, pairs, dev)
        with report.step("bf16 vs fp32: official model") as rec:
            step_bf16(rec, off, pairs[:1], dev)
        with report.step("official model vs upstream SamPredictor") as rec:
            step_vs_upstream(rec, off, sam, pairs[0][1], dev, n_rep)
        with report.step("everything-mode vs upstream SamAutomaticMaskGenerator") as rec:
            step_everything(rec, off, sam, pairs[0][1], dev, 4 if tiny else 32)
        with report.step("samsp finetune: default model") as rec:
            step_finetune_cli(rec, dirs, tmp / "ft_default.safetensors", None, str(dev), 1 if tiny else 30)
        with report.step("fine-tune timing: default model") as rec:
            step_finetune(rec, default, dirs, dev, 3 if tiny else 40, 1 if tiny else None)
        with report.step("samsp finetune: official model") as rec:
            step_finetune_cli(rec, dirs, tmp / "ft_official.safetensors", str(off_path), str(dev), 2 if tiny else 20)
        with report.step("fine-tune timing: official model") as rec:
            step_finetune(rec, off, dirs, dev, 3 if tiny else 30, 1 if tiny else None)
    report.info["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report.write(args.out)
    failed = [k for k, v in report.steps.items() if not v["ok"]]
    print(f"gpu_check: {len(report.steps) - len(failed)}/{len(report.steps)} steps ok; wrote {args.out}/gpu_check.json and .md")
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
