"""Interactive latency of the napari annotator: simulated click -> Labels layer updated.

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/bench_latency.py [--model default] [--clicks 30]

A real napari window with the annotator docked, the synthetic nuclei sample (256 x 256,
16-bit, plus a 512 x 512 one), the model loaded (default: ``load_model(None)``, the embedded
default). Each "click" adds a point to the prompts layer exactly as a mouse click in add mode
does (``Points.add``); the widget re-decodes the selected object from the cached embedding and
paints it into the Labels layer. Every third click commits the object (new id, prompts
cleared), so the prompt sets look like real use (1-3 points).

Reported (median and 90th percentile over the clicks):

* ``decode``: ``Predictor.predict`` (prompt encoder + mask decoder + upsampling to the image);
* ``update``: the widget's whole reaction (prompts -> decode -> paint into the Labels layer);
* ``click -> labels``: from ``Points.add`` until the Labels data changed and the Qt events
  (including the canvas repaint) were processed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    arr = np.asarray(values) * 1000.0
    return float(np.median(arr)), float(np.percentile(arr, 90))


def bench(viewer, widget, image, truth, clicks: int) -> dict:
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_samsp._ui.demo import wait_idle
    from napari_samsp._ui.embeddings import plane_key

    app = QApplication.instance()
    layer = viewer.add_image(image, name=f"bench {image.shape[0]}")
    ws = widget.use_layer(layer)
    t0 = time.perf_counter()
    widget.segment()  # computes the embedding and a first auto-segmentation
    wait_idle(widget, 600)
    first = time.perf_counter() - t0
    predictor = widget.session.predictor
    t0 = time.perf_counter()
    embedding = predictor.embed(ws.model_plane(None))  # again: from the cache
    cached = time.perf_counter() - t0
    widget.session.embeddings.put(predictor, plane_key(ws.key, None), embedding)

    decode_times: list[float] = []
    real_predict = predictor.predict

    def timed_predict(*args, **kwargs):
        t = time.perf_counter()
        out = real_predict(*args, **kwargs)
        decode_times.append(time.perf_counter() - t)
        return out

    predictor.predict = timed_predict
    rng = np.random.default_rng(0)
    ids = [i for i in np.unique(truth) if i]
    click_times, update_times = [], []
    labels = ws.labels
    try:
        for k in range(clicks):
            if k % 3 == 0:
                widget.commit_object()
            oid = ids[rng.integers(len(ids))]
            ys, xs = np.nonzero(truth == oid)
            j = rng.integers(len(ys))
            positive = k % 3 != 2
            r, c = (ys[j], xs[j]) if positive else (min(truth.shape[0] - 1, ys.max() + 3), xs[j])
            ws.set_prompt_sign(positive)
            before = labels.data.copy()
            t = time.perf_counter()
            ws.points.add([[float(r), float(c)]])  # what a click in add mode does
            app.processEvents()
            click_times.append(time.perf_counter() - t)
            update_times.append(widget.correct_panel.last_update_s or float("nan"))
            if not widget.is_idle():
                raise RuntimeError("the click started a background task: the embedding was not cached")
            del before
    finally:
        predictor.predict = real_predict
    return {
        "image": f"{image.shape[0]}x{image.shape[1]} {image.dtype}",
        "clicks": clicks,
        "embedding_first_s": first,
        "embedding_cached_s": cached,
        "decode_ms": _stats(decode_times[-clicks:]),
        "update_ms": _stats(update_times),
        "click_to_labels_ms": _stats(click_times),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default (load_model(None)), a config name or a file")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--sizes", default="256,512", help="image sides to test, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--hidden", action="store_true", help="no window (no repaint in the timing)")
    args = parser.parse_args(argv)

    from napari_samsp._widget import SamspWidget  # torchvision before OpenGL (see _ui/compat.py)

    import napari
    import torch

    from napari_samsp._ui.demo import wait_idle
    from napari_samsp.sample_data_gen import synthetic_nuclei

    if args.threads:
        torch.set_num_threads(args.threads)
    viewer = napari.Viewer(show=not args.hidden)
    viewer.window._qt_window.resize(1400, 900)
    widget = SamspWidget(viewer, project=tempfile.mkdtemp(prefix="samsp-bench-"))
    viewer.window.add_dock_widget(widget, name="SAM-SP annotator")
    widget.load_model(None if args.model == "default" else args.model)
    wait_idle(widget, 600)
    loaded = widget.session.loaded
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        image, truth = synthetic_nuclei((side, side), n=max(10, 40 * side * side // 65536), seed=side)
        rows.append(bench(viewer, widget, image, truth, args.clicks))
    viewer.close()

    cfg = loaded.card.get("config", {})
    print(f"model: {cfg.get('name')} ({loaded.source}, random={loaded.is_random}), input {cfg.get('img_size')} px, "
          f"device {widget.session.device}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, window {'hidden' if args.hidden else 'shown'}")
    print()
    print("| image | auto-segment incl. embedding / cached embedding | decode median (p90) | update median (p90) | click -> labels median (p90) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['image']} | {r['embedding_first_s'] * 1000:.0f} ms / {r['embedding_cached_s'] * 1000:.0f} ms "
            f"| {r['decode_ms'][0]:.0f} ms ({r['decode_ms'][1]:.0f}) | {r['update_ms'][0]:.0f} ms ({r['update_ms'][1]:.0f}) "
            f"| {r['click_to_labels_ms'][0]:.0f} ms ({r['click_to_labels_ms'][1]:.0f}) |"
        )
    print()
    print(json.dumps({"model": cfg.get("name"), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
