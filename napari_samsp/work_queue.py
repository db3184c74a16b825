"""The "next image" queue of the annotation loop (no Qt, no napari).

The order is decided by one small function, :func:`order_images`: plain sorted
order, or, when ``napari_samsp.reward.rank_images`` exists and a predictor is
given, lowest expected Dice first (annotate what the model is worst at first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import DataLayoutError
from .io import IMAGE_SUFFIXES, find_images
from .models.card import DEFAULT_MODE, ModelCard, as_model_card

__all__ = ["MASK_NAME_SUFFIXES", "WorkQueue", "find_existing_mask", "order_images", "rank_options"]

# Mask files next to their image: Cellpose writes <stem>_cp_masks.png; others <stem>_masks / _mask / _labels.
MASK_NAME_SUFFIXES = ("_cp_masks", "_masks", "_mask", "_labels")


def find_existing_mask(image: Path, masks_dir: Path | None = None) -> Path | None:
    """A mask file made for ``image`` by another tool or person, if there is one.

    Looked for, in order: ``masks_dir/<stem>.<ext>`` and ``masks_dir/<stem><suffix>.<ext>``
    (the data layout DIR/images + DIR/masks, StarDist-style folders), then
    ``<stem><suffix>.<ext>`` beside the image (Cellpose's ``_cp_masks``), for the suffixes
    of :data:`MASK_NAME_SUFFIXES` and the image extensions (.png, .tif, ...).
    """
    image = Path(image)
    names = [image.stem + sfx for sfx in ("", *MASK_NAME_SUFFIXES)]
    places = [(masks_dir, names)] if masks_dir is not None else []
    places.append((image.parent, names[1:]))
    for folder, stems in places:
        for stem in stems:
            for ext in IMAGE_SUFFIXES:
                for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                    if candidate.is_file() and candidate != image:
                        return candidate
    return None


def _mask_files_among(paths: Sequence[Path]) -> set[Path]:
    """The paths that are masks of another path of the list (``a_cp_masks.png`` beside ``a.png``)."""
    stems = {(p.parent, p.stem) for p in paths}
    out = set()
    for p in paths:
        for sfx in MASK_NAME_SUFFIXES:
            if p.stem.endswith(sfx) and (p.parent, p.stem[: -len(sfx)]) in stems:
                out.add(p)
    return out

OrderFn = Callable[..., list[Path]]


def rank_options(card: ModelCard | dict | None, mode: str | None = None, store=None) -> dict:
    """The ranking options the plugin and ``samsp rank`` share, so both order images alike.

    ``mode``: the segmentation mode whose masks are scored (default: the model card's mode when it
    self-prompts, else semantic); ``num_passes``: the card's; ``store``: the annotation store (path or
    store) that calibrates the expected Dice, or None.
    """
    mc = as_model_card(card)
    chosen = mode or (mc.mode if mc.mode in ("semantic", "instance") else DEFAULT_MODE)
    if chosen not in ("semantic", "instance"):
        raise ValueError(f"mode must be semantic or instance, got {chosen!r}")
    return {"mode": chosen, "num_passes": mc.num_passes, "store": store}


def order_images(paths: Sequence[Path], predictor=None, rows: list | None = None, **rank_kwargs) -> list[Path]:
    """The order to annotate ``paths`` in: the one place to change it.

    With a predictor and the reward module: ``reward.rank_paths`` order, exactly what
    ``samsp rank`` prints (lowest expected Dice first, near-duplicates pushed down;
    ``rank_kwargs`` such as ``store``, ``num_passes``, ``mode``, ``progress`` are passed on;
    see :func:`rank_options`). Otherwise: sorted by path. ``rows``: a list that receives the
    ranking rows (``image``, ``expected_dice``, ...).
    """
    plain = sorted(Path(p) for p in paths)
    if predictor is None or not plain:
        return plain
    from .reward import rank_paths

    ranked = list(rank_paths(predictor, [str(p) for p in plain], **rank_kwargs))
    if rows is not None:
        rows.extend(ranked)
    order: list[Path] = []
    for row in ranked:
        idx = row.get("index") if isinstance(row, dict) else None
        if isinstance(idx, int) and 0 <= idx < len(plain) and plain[idx] not in order:
            order.append(plain[idx])
    return order + [p for p in plain if p not in order]


class WorkQueue:
    """Images to annotate, in order, with a cursor and the set already sent.

    Args:
        paths: image files (or use :meth:`from_folder`).
        order: ordering function ``order(paths, predictor) -> paths``.
    """

    def __init__(self, paths: Sequence[Path], order: OrderFn = order_images, predictor=None, **rank_kwargs) -> None:
        rows: list[dict] = []
        if order is order_images:
            rank_kwargs["rows"] = rows
        self.items: list[Path] = list(order([Path(p) for p in paths], predictor, **rank_kwargs))
        # path -> its ranking row (expected_dice, ...); empty when the queue is in file order
        self.scores: dict[Path, dict] = {Path(r["image"]): r for r in rows if isinstance(r, dict) and "image" in r}
        self.index = -1
        self.sent: set[Path] = set()
        self.masks_dir: Path | None = None  # DIR/masks of a folder in the data layout

    @classmethod
    def from_folder(cls, folder: str | Path, order: OrderFn = order_images, predictor=None, **rank_kwargs) -> "WorkQueue":
        """Every image in ``folder`` (or its ``images/`` subfolder when it follows the data layout).

        Mask files beside their images (``a_cp_masks.png`` next to ``a.png``) are not queued;
        :meth:`existing_mask` finds them, and those in ``folder/masks``.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise DataLayoutError(f"not a folder: {folder}")
        source = folder / "images" if (folder / "images").is_dir() else folder
        paths = find_images([source])
        masks = _mask_files_among(paths)
        paths = [p for p in paths if p not in masks]
        if not paths:
            raise DataLayoutError(f"no images (.png, .jpg, .tif) in {source}")
        queue = cls(paths, order, predictor, **rank_kwargs)
        if source != folder and (folder / "masks").is_dir():
            queue.masks_dir = folder / "masks"
        return queue

    def existing_mask(self, path: Path | None = None) -> Path | None:
        """The mask another tool or person made for ``path`` (default: the current image), if any."""
        target = path or self.current
        return None if target is None else find_existing_mask(Path(target), self.masks_dir)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def current(self) -> Path | None:
        return self.items[self.index] if 0 <= self.index < len(self.items) else None

    @property
    def remaining(self) -> int:
        return sum(1 for p in self.items[self.index + 1 :] if p not in self.sent)

    def next(self) -> Path | None:
        """Advance to the next image not sent yet; None at the end (the cursor stays put)."""
        for i in range(self.index + 1, len(self.items)):
            if self.items[i] not in self.sent:
                self.index = i
                return self.items[i]
        return None

    def mark_sent(self, path: Path | None = None) -> None:
        target = path or self.current
        if target is not None:
            self.sent.add(Path(target))

    def reorder(self, order: OrderFn = order_images, predictor=None, **rank_kwargs) -> None:
        """Re-rank the images not visited yet (the visited ones keep their places)."""
        head = self.items[: self.index + 1]
        tail = order(self.items[self.index + 1 :], predictor, **rank_kwargs)
        self.items = head + list(tail)
