"""The image being annotated and its companion layers (labels, prompt points, prompt boxes).

A :class:`Workspace` binds one napari Image layer to:

* ``<name> labels``: the Labels layer the model and the user paint into;
* ``<name> prompts``: a Points layer, feature ``sign`` = ``positive`` / ``negative``;
* ``<name> boxes``: a Shapes layer for box prompts (rectangle mode).

Companions are created on demand (and re-created if the user deletes them), share the
image's scale and translate, so layer data coordinates are image data coordinates.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable

import numpy as np

from ..errors import InputImageError
from ..interactive import PromptSet, StackNormaliser, prompts_on_plane, spatial_shape

_KEYS = itertools.count(1)

PROMPT_POINT_PX = 10.0  # prompt points are drawn this wide on screen at any zoom
PROMPT_EDGE_PX = 2.0  # box edges, likewise
POSITIVE_COLOR = np.array([0.2, 0.95, 0.3, 1.0], np.float32)
NEGATIVE_COLOR = np.array([1.0, 0.2, 0.25, 1.0], np.float32)


def check_image_layer(layer) -> tuple[int, ...]:
    """Spatial shape of an Image layer the model can take; a clear error for anything else."""
    from napari.layers import Image

    if layer is None:
        raise InputImageError("no image selected: choose an Image layer (or open an image / a folder)")
    if not isinstance(layer, Image):
        raise InputImageError(
            f"'{layer.name}' is a {type(layer).__name__} layer, not an Image layer: select the image to segment"
        )
    if getattr(layer, "multiscale", False):
        raise InputImageError(f"'{layer.name}' is multiscale: open its full-resolution level as an image")
    return spatial_shape(layer.data.shape, bool(layer.rgb))


class Workspace:
    """One Image layer and its companions in a viewer."""

    def __init__(self, viewer, image, adopt: tuple = (None, None, None)) -> None:
        self.spatial = check_image_layer(image)
        self.viewer = viewer
        self.image = image
        self.key = next(_KEYS)  # unique per workspace (a reused layer gets a new key: new pixels)
        self.is_stack = len(self.spatial) == 3
        self._normaliser: StackNormaliser | None = None
        self._suspended = 0
        self._labels = None
        self._points = None
        self._shapes = None
        self.prompt_positive = True
        self._zoom_watched = False
        self.mask_source: str | None = None  # "existing:<path>" when the labels came from a mask file
        labels, points, shapes = adopt
        if self._alive(labels) and tuple(labels.data.shape) == self.spatial:
            self._labels = labels
            labels.events.paint.connect(self._on_paint)
        if self._alive(points) and points.ndim == len(self.spatial):
            self._points = points
            points.events.data.connect(self._on_points)
        if self._alive(shapes) and shapes.ndim == len(self.spatial):
            self._shapes = shapes
            shapes.events.data.connect(self._on_shapes)
        if self._points is not None or self._shapes is not None:
            self._watch_zoom()
        self.dirty = False  # edits not sent to the store yet
        self.on_prompts: Callable[[str], None] | None = None  # called with the event action
        self.on_user_edit: Callable[[], None] | None = None

    # -- naming --------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.image.name

    @property
    def source(self) -> str:
        """Where the pixels came from: the file path if known, else the layer name."""
        meta = self.image.metadata or {}
        path = meta.get("samsp_path") or meta.get("path")
        if path:
            return str(path)
        src = getattr(getattr(self.image, "source", None), "path", None)
        return str(src) if src else self.image.name

    # -- images ----------------------------------------------------------------------
    def normaliser(self) -> StackNormaliser:
        """Contrast stretch of the whole image or stack (computed once; can be slow: call it in a worker)."""
        if self._normaliser is None or self._normaliser._data is not self.image.data:
            self._normaliser = StackNormaliser(self.image.data, rgb=bool(self.image.rgb))
        return self._normaliser

    @property
    def num_planes(self) -> int:
        return self.spatial[0] if self.is_stack else 1

    def current_z(self) -> int | None:
        """The slice shown in the viewer (None for a 2D image)."""
        if not self.is_stack:
            return None
        point = self.viewer.dims.point
        data = self.image.world_to_data(point[-self.image.ndim :])
        return int(np.clip(round(float(data[0])), 0, self.spatial[0] - 1))

    def raw_plane(self, z: int | None) -> np.ndarray:
        data = self.image.data
        return np.asarray(data[z] if self.is_stack else data)

    def model_plane(self, z: int | None) -> np.ndarray:
        return self.normaliser().plane(z)

    # -- companion layers -------------------------------------------------------------
    def _alive(self, layer) -> bool:
        return layer is not None and layer in self.viewer.layers

    def _geometry(self) -> dict:
        return {"scale": self.image.scale, "translate": self.image.translate}

    @property
    def labels(self):
        if not self._alive(self._labels):
            existing = self._find(f"{self.name} labels", "Labels")
            if existing is not None and tuple(existing.data.shape) == self.spatial:
                self._labels = existing
            else:
                self._labels = self.viewer.add_labels(
                    np.zeros(self.spatial, np.uint32), name=f"{self.name} labels", opacity=0.55, **self._geometry()
                )
            self._labels.events.paint.connect(self._on_paint)
        return self._labels

    def has_labels(self) -> bool:
        return self._alive(self._labels)

    @property
    def points(self):
        if not self._alive(self._points):
            size = self._screen_to_data(PROMPT_POINT_PX)
            layer = self.viewer.add_points(
                np.zeros((0, len(self.spatial))),
                name=f"{self.name} prompts",
                ndim=len(self.spatial),
                features={"sign": np.array([], dtype=object)},
                size=size,
                border_color="white",
                border_width=0.1,
                face_color=POSITIVE_COLOR if self.prompt_positive else NEGATIVE_COLOR,
                **self._geometry(),
            )
            layer.feature_defaults = {"sign": "positive" if self.prompt_positive else "negative"}
            layer.events.data.connect(self._on_points)
            layer.mode = "add"
            self._points = layer
            self._watch_zoom()
        return self._points

    @property
    def shapes(self):
        if not self._alive(self._shapes):
            layer = self.viewer.add_shapes(
                name=f"{self.name} boxes",
                ndim=len(self.spatial),
                edge_color="yellow",
                face_color=[0, 0, 0, 0],
                edge_width=self._screen_to_data(PROMPT_EDGE_PX),
                **self._geometry(),
            )
            layer.events.data.connect(self._on_shapes)
            layer.mode = "add_rectangle"
            self._shapes = layer
            self._watch_zoom()
        return self._shapes

    # -- screen-constant prompt sizes ----------------------------------------------------
    def _screen_to_data(self, pixels: float) -> float:
        """``pixels`` screen pixels in the image's data units at the current zoom."""
        zoom = float(self.viewer.camera.zoom) or 1.0
        return float(pixels) / (zoom * abs(float(self.image.scale[-1])) or 1.0)

    def _watch_zoom(self) -> None:
        if not self._zoom_watched:
            self.viewer.camera.events.zoom.connect(self._on_zoom)
            self._zoom_watched = True

    def _on_zoom(self, event=None) -> None:
        """Keep prompt points PROMPT_POINT_PX and box edges PROMPT_EDGE_PX wide on screen at any zoom
        (a point sized in data pixels is 80 px wide when zoomed into a 4000 px image)."""
        if self._alive(self._points):
            size = self._screen_to_data(PROMPT_POINT_PX)
            layer = self._points
            with layer.events.data.blocker():
                if len(layer.data):
                    layer.size = np.full(len(layer.data), size)
                layer.current_size = size
        if self._alive(self._shapes):
            width = self._screen_to_data(PROMPT_EDGE_PX)
            layer = self._shapes
            with layer.events.data.blocker():
                if layer.nshapes:
                    layer.edge_width = [width] * layer.nshapes
                layer.current_edge_width = width

    def _find(self, name: str, kind: str):
        for layer in self.viewer.layers:
            if layer.name == name and type(layer).__name__ == kind:
                return layer
        return None

    def companions(self) -> list:
        return [lay for lay in (self._labels, self._points, self._shapes) if self._alive(lay)]

    def disconnect(self) -> None:
        for layer, handler in ((self._points, self._on_points), (self._shapes, self._on_shapes)):
            if layer is not None:
                with contextlib.suppress(Exception):
                    layer.events.data.disconnect(handler)
        if self._labels is not None:
            with contextlib.suppress(Exception):
                self._labels.events.paint.disconnect(self._on_paint)
        if self._zoom_watched:
            with contextlib.suppress(Exception):
                self.viewer.camera.events.zoom.disconnect(self._on_zoom)
            self._zoom_watched = False
        self.on_prompts = None
        self.on_user_edit = None

    # -- events ----------------------------------------------------------------------
    @contextlib.contextmanager
    def suspended(self):
        """Programmatic changes to prompt layers inside this block do not trigger decoding."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def _action(self, event) -> str:
        action = getattr(event, "action", None)
        return str(getattr(action, "value", action) or "changed")

    def _on_points(self, event) -> None:
        action = self._action(event)
        if action in ("added", "changed", "removed"):
            self.recolor_points()
        if self._suspended or action not in ("added", "changed", "removed"):
            return
        if self.on_prompts is not None:
            self.on_prompts(action)

    def _on_shapes(self, event) -> None:
        action = self._action(event)
        if self._suspended or action not in ("added", "changed", "removed"):
            return
        if self.on_prompts is not None:
            self.on_prompts(action)

    def _on_paint(self, event=None) -> None:
        self.dirty = True
        if self.on_user_edit is not None:
            self.on_user_edit()

    # -- prompts ---------------------------------------------------------------------
    def signs(self) -> np.ndarray:
        layer = self._points
        if layer is None or len(layer.data) == 0:
            return np.zeros((0,), bool)
        feats = layer.features
        if "sign" not in feats:
            return np.ones(len(layer.data), bool)
        return np.asarray([str(s) != "negative" for s in feats["sign"]], bool)

    def recolor_points(self) -> None:
        layer = self._points
        if layer is None or len(layer.data) == 0:
            return
        colors = np.where(self.signs()[:, None], POSITIVE_COLOR[None], NEGATIVE_COLOR[None])
        if not np.allclose(layer.face_color, colors):
            layer.face_color = colors

    def set_prompt_sign(self, positive: bool) -> None:
        """Sign of the next point (toggled with the T key)."""
        self.prompt_positive = bool(positive)
        if self._alive(self._points):
            layer = self._points
            layer.feature_defaults = {"sign": "positive" if positive else "negative"}
            # current_face_color also recolours the selected points: deselect first.
            if layer.selected_data:
                layer.selected_data = set()
            layer.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR

    def prompts(self, z: int | None) -> PromptSet:
        pts = None if not self._alive(self._points) else np.asarray(self._points.data)
        boxes = [] if not self._alive(self._shapes) else list(self._shapes.data)
        return prompts_on_plane(pts, self.signs() if pts is not None else None, boxes, z)

    def clear_prompts(self) -> None:
        with self.suspended():
            if self._alive(self._points) and len(self._points.data):
                self._points.data = np.zeros((0, len(self.spatial)))
            if self._alive(self._shapes) and self._shapes.nshapes:
                self._shapes.data = []

    def add_point(self, row: float, col: float, positive: bool | None = None, z: int | None = None) -> None:
        """Add one prompt point (what a click in add mode does); triggers decoding."""
        if positive is not None and positive != self.prompt_positive:
            self.set_prompt_sign(positive)
        layer = self.points
        coords = [row, col] if not self.is_stack else [self.current_z() if z is None else z, row, col]
        layer.add(np.asarray([coords], np.float64))

    # -- labels ------------------------------------------------------------------------
    def check_labels(self) -> None:
        """The labels layer must still match the image (the user may have replaced its data)."""
        if not self._alive(self._labels):
            return
        shape = tuple(self._labels.data.shape)
        if shape != self.spatial:
            raise InputImageError(
                f"labels layer '{self._labels.name}' is {'x'.join(map(str, shape))} but image '{self.name}' is "
                f"{'x'.join(map(str, self.spatial))}: restore its shape (or delete it to start a new one); nothing was changed"
            )

    def labels_plane(self, z: int | None) -> np.ndarray:
        self.check_labels()
        data = self.labels.data
        return np.array(data[z] if self.is_stack else data, copy=True)

    def set_labels_plane(self, z: int | None, plane: np.ndarray, user_edit: bool = True) -> None:
        """Write one plane into the Labels layer; only changed pixels are written (and redrawn),
        through napari's ``data_setitem``, so napari's own undo (Ctrl+Z) covers it too."""
        self.check_labels()
        layer = self.labels
        plane = np.asarray(plane)
        if np.issubdtype(plane.dtype, np.integer) and plane.max(initial=0) > np.iinfo(layer.data.dtype).max:
            layer.data = layer.data.astype(np.uint64)
        current = layer.data[z] if self.is_stack else layer.data
        changed = np.nonzero(np.asarray(current) != plane)
        if changed[0].size:
            indices = ((np.full(changed[0].size, z, np.intp),) if self.is_stack else ()) + changed
            layer.data_setitem(indices, plane[changed].astype(layer.data.dtype, copy=False))
        if user_edit:
            self.dirty = True

    def set_labels(self, array: np.ndarray, user_edit: bool = False) -> None:
        self.check_labels()
        layer = self.labels
        array = np.asarray(array)
        if array.shape != self.spatial:
            raise InputImageError(f"labels are {array.shape}, the image is {self.spatial}")
        if array.max(initial=0) > np.iinfo(layer.data.dtype).max:
            layer.data = array.astype(np.uint64)
        else:
            layer.data[...] = array
            layer.refresh()
        if user_edit:
            self.dirty = True
