"""Qt-free tests of the annotation logic behind the widget (interactive.py, work_queue.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samsp.errors import DataLayoutError, InputImageError
from napari_samsp.interactive import (
    LabelsHistory,
    ObjectEditor,
    StackNormaliser,
    mask_box,
    new_label_id,
    paint_mask,
    prompts_on_plane,
    propagate_object,
    spatial_shape,
)
from napari_samsp.predictor import Predictor
from napari_samsp.sample_data_gen import synthetic_nuclei, synthetic_nuclei_stack
from napari_samsp.work_queue import WorkQueue, order_images


def test_spatial_shape_rejects_what_the_model_cannot_take():
    assert spatial_shape((5, 7), rgb=False) == (5, 7)
    assert spatial_shape((3, 5, 7, 3), rgb=True) == (3, 5, 7)
    with pytest.raises(InputImageError, match="zero size"):
        spatial_shape((0, 16), rgb=False)
    with pytest.raises(InputImageError, match="2D image or a 3D stack"):
        spatial_shape((2, 2, 3, 16, 16), rgb=False)
    with pytest.raises(InputImageError, match="2D image or a 3D stack"):
        spatial_shape((16,), rgb=False)


def test_stack_normaliser_shares_one_stretch():
    stack = np.stack([np.full((4, 4), 100, np.uint16), np.full((4, 4), 1000, np.uint16)])
    stack[1, 0, 0] = 2000
    norm = StackNormaliser(stack)
    assert norm.is_stack and norm.num_planes == 2
    p0, p1 = norm.plane(0), norm.plane(1)
    assert p0.dtype == np.uint8 and p0.max() < p1.min()  # slice 0 is darker: same stretch for both
    np.testing.assert_array_equal(norm.raw_plane(1), stack[1])
    u8 = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(StackNormaliser(u8).plane(), u8)
    with pytest.raises(InputImageError, match="NaN"):
        StackNormaliser(np.array([[np.nan, 1.0], [2.0, 3.0]]))
    with pytest.raises(InputImageError, match="outside"):
        norm.raw_plane(5)


def test_prompts_on_plane_flips_and_filters():
    pts = np.array([[2, 10, 20], [3, 11, 21], [2, 12, 22]], float)
    boxes = [np.array([[2, 1, 1], [2, 1, 9], [2, 8, 9], [2, 8, 1]], float), np.array([[3, 0, 0], [3, 5, 5]], float)]
    p = prompts_on_plane(pts, np.array([True, True, False]), boxes, z=2)
    np.testing.assert_array_equal(p.points, [[20, 10], [22, 12]])  # (x, y)
    np.testing.assert_array_equal(p.labels, [1, 0])
    np.testing.assert_array_equal(p.box, [1, 1, 9, 8])
    assert p.first_positive == (10, 20)
    assert prompts_on_plane(None, None, [], None).empty
    flat = prompts_on_plane(np.array([[4.0, 6.0]]), None)
    np.testing.assert_array_equal(flat.points, [[6, 4]])


def test_paint_mask_keeps_other_objects():
    plane = np.zeros((6, 6), np.uint32)
    plane[0:3, 0:3] = 2
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    out = paint_mask(plane, mask, 5)
    assert (out[0:3, 0:3] == 2).all() and out[4, 4] == 5 and plane.max() == 2
    assert (paint_mask(plane, mask, 5, preserve=False)[1:5, 1:5] == 5).all()
    clear = plane == 2
    out = paint_mask(plane, np.zeros_like(mask), 2, clear=clear)
    assert out.max() == 0
    assert new_label_id(plane) == 3
    np.testing.assert_array_equal(mask_box(mask, margin=1), [0, 0, 5, 5])
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_history_is_bounded():
    h = LabelsHistory(max_entries=3, max_bytes=10_000)
    for k in range(5):
        h.push("a", None, np.full((10, 10), k, np.uint8))
    assert len(h) == 3
    assert h.pop()[2][0, 0] == 4
    h.push("a", 0, np.zeros((100, 100), np.uint8))  # 10 kB: older entries dropped to fit
    assert len(h) == 1
    h.clear()
    assert h.pop() is None


def test_object_editor_decodes_paints_and_corrects(micro_model):
    image, _ = synthetic_nuclei((64, 64), n=4, seed=0)
    predictor = Predictor(micro_model, "micro-test")
    predictor.set_image(image)
    plane = np.zeros((64, 64), np.uint32)
    plane[0:10, 0:10] = 9  # another object, never overwritten
    editor = ObjectEditor(predictor, plane, 3)
    prompts = prompts_on_plane(np.array([[30.0, 30.0]]), None)
    out = editor.update(prompts)
    assert editor.logits.shape == (1, predictor.low_res_size, predictor.low_res_size)
    assert (out[0:10, 0:10] == 9).all()
    np.testing.assert_array_equal(out == 3, editor.mask & (plane != 9))
    # A second prompt decodes with the previous logits; empty prompts restore the base.
    out2 = editor.update(prompts_on_plane(np.array([[30.0, 30.0], [5.0, 40.0]]), np.array([True, False])))
    assert out2.shape == plane.shape
    np.testing.assert_array_equal(editor.update(prompts_on_plane(None, None)), plane)
    # Correcting an existing object: the component under the first positive point is replaced.
    base = np.zeros((64, 64), np.uint32)
    base[20:40, 20:40] = 4
    base[50:60, 50:60] = 4  # another component of label 4: untouched
    fix = ObjectEditor(predictor, base, 4)
    out3 = fix.update(prompts_on_plane(np.array([[30.0, 30.0]]), None))
    assert fix.target is not None and fix.target[30, 30] and not fix.target[55, 55]
    assert (out3[50:60, 50:60] == 4).all()
    with pytest.raises(InputImageError):
        ObjectEditor(predictor, np.zeros((10, 10), np.uint32), 1)


def test_propagation_decodes_one_view_whatever_the_predictors_mirror_views(micro_model):
    """Mirror views help clicks but carry fewer slices (BENCHMARKS): propagation uses the image alone,
    and does not pay for embedding mirrors it would not use."""
    stack, _ = synthetic_nuclei_stack((5, 48, 48), n=3, seed=0)
    norm = StackNormaliser(stack)
    labels = np.zeros(stack.shape, np.uint32)
    labels[2, 10:30, 10:30] = 1
    plain = propagate_object(Predictor(micro_model, "micro-test"), norm.plane, 5, labels, 2, 1)
    mirrored = Predictor(micro_model, "micro-test", flip_views=2)
    encodes = []
    plane_features = mirrored._plane_features
    mirrored._plane_features = lambda *a, **k: encodes.append(1) or plane_features(*a, **k)
    out = propagate_object(mirrored, norm.plane, 5, labels, 2, 1)
    assert out.keys() == plain.keys() and all(np.array_equal(out[z], plain[z]) for z in out)
    assert len(out) <= len(encodes) <= 4  # one embedding per slice visited (at most the 4 others), no mirrors
    # the per-call override, and embeddings without mirrors
    emb = mirrored.embed(norm.plane(2), with_mirrors=False)
    assert emb.mirrors == ()
    one = mirrored.predict(np.array([[20.0, 20.0]]), embedding=emb, flip_views=1)
    ref = Predictor(micro_model, "micro-test").predict(np.array([[20.0, 20.0]]), embedding=emb)
    np.testing.assert_array_equal(one.logits, ref.logits)
    assert not np.array_equal(mirrored.predict(np.array([[20.0, 20.0]]), embedding=emb).logits, ref.logits)


def test_propagate_object_through_a_stack(micro_model):
    stack, _ = synthetic_nuclei_stack((5, 48, 48), n=3, seed=0)
    norm = StackNormaliser(stack)
    predictor = Predictor(micro_model, "micro-test")
    labels = np.zeros(stack.shape, np.uint32)
    labels[2, 10:30, 10:30] = 1
    calls = []
    out = propagate_object(predictor, norm.plane, 5, labels, 2, 1, progress=lambda d, t: calls.append((d, t)))
    assert set(out) <= {0, 1, 3, 4} and all(m.shape == (48, 48) and m.dtype == bool for m in out.values())
    assert calls and calls[-1][0] == calls[-1][1] == 4
    with pytest.raises(InputImageError, match="not on slice"):
        propagate_object(predictor, norm.plane, 5, labels, 0, 1)
    from napari_samsp.interactive import PropagationCancelled

    with pytest.raises(PropagationCancelled):
        propagate_object(predictor, norm.plane, 5, labels, 2, 1, cancel=lambda: True)


def test_propagation_decodes_one_mask_unless_asked_for_three(micro_model):
    """Our models train only the single-mask output: propagation asks for SAM's three candidates
    only with ``multimask=True`` (official weights), and then only for the box alone."""
    stack, _ = synthetic_nuclei_stack((3, 48, 48), n=3, seed=0)
    norm = StackNormaliser(stack)
    labels = np.zeros(stack.shape, np.uint32)
    labels[1, 10:30, 10:30] = 1
    for multimask in (False, True):
        predictor = Predictor(micro_model, "micro-test")
        asked = []
        original = predictor.predict

        def spy(*args, **kwargs):
            asked.append((kwargs.get("multimask_output"), kwargs.get("point_coords") is None))
            return original(*args, **kwargs)

        predictor.predict = spy
        propagate_object(predictor, norm.plane, 3, labels, 1, 1, multimask=multimask)
        assert asked
        assert {m for m, box_only in asked if box_only} == {multimask}
        assert {m for m, box_only in asked if not box_only} <= {False}


def test_work_queue_order_and_cursor(tmp_path):
    from napari_samsp.io import write_png_atomic

    for name in ("b", "a", "c"):
        write_png_atomic(tmp_path / "images" / f"{name}.png", np.zeros((8, 8), np.uint8))
    q = WorkQueue.from_folder(tmp_path)  # data layout: uses images/
    assert [p.stem for p in q.items] == ["a", "b", "c"]
    assert q.current is None and q.next().stem == "a"
    q.mark_sent()
    q.mark_sent(tmp_path / "images" / "c.png")
    assert q.remaining == 1
    assert q.next().stem == "b" and q.next() is None and q.current.stem == "b"
    assert order_images([tmp_path / "z.png", tmp_path / "y.png"]) == [tmp_path / "y.png", tmp_path / "z.png"]
    # A pluggable order function.
    q2 = WorkQueue(q.items, order=lambda paths, predictor=None: list(reversed(paths)))
    assert [p.stem for p in q2.items] == ["c", "b", "a"]
    with pytest.raises(DataLayoutError):
        WorkQueue.from_folder(tmp_path / "missing")


def test_ranked_order_is_a_permutation(micro_model, tmp_path):
    from napari_samsp.io import write_png_atomic
    from napari_samsp.reward.ranking import rank_images

    paths = []
    for k in range(3):
        image, _ = synthetic_nuclei((40, 40), n=3, seed=k)
        paths.append(write_png_atomic(tmp_path / f"i{k}.png", (image // 256).astype(np.uint8)))
    calls = []
    ranked = order_images(paths, Predictor(micro_model, "micro-test"), progress=lambda d, t: calls.append(d))
    assert sorted(ranked) == sorted(paths) and calls == [1, 2, 3]
    # the queue's order is the ranking's order (lowest expected Dice first), not merely some permutation
    rows = rank_images(Predictor(micro_model, "micro-test"), paths)
    assert ranked == [paths[r["index"]] for r in sorted(rows, key=lambda r: r["rank"])]
