"""The model card as a typed value: what a model file says about its weights (issue 12, point 2).

A card is stored as JSON (the ``samsp_card`` safetensors metadata and a ``<stem>.json``
sidecar, see :mod:`napari_samsp.models.checkpoints`). :class:`ModelCard` is its one reader
and writer: :meth:`ModelCard.from_dict` fills the documented defaults of fields an old card
lacks (this module is the only place those defaults live), :meth:`ModelCard.to_dict` writes it
back, and keys it does not know are kept in :attr:`ModelCard.extra`, so old and foreign
cards round-trip without loss. :meth:`ModelCard.child` makes the card of a new version
(fine-tuning, self-improvement, export) and :meth:`SegmentOptions.from_card` turns a card into
the options of prompt-free segmentation.

Pure: no Qt, no tensors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..transforms import LEGACY_PREPROCESSING, check_preprocessing

__all__ = [
    "CARD_FORMAT",
    "CARD_MODES",
    "DEFAULT_MODE",
    "DEFAULT_NUM_PASSES",
    "DEFAULT_PREPROCESSING",
    "DEFAULT_REFINE_INSTANCES",
    "ModelCard",
    "SegmentOptions",
    "as_model_card",
]

CARD_FORMAT = "samsp-1"
# "everything": a point-grid automatic mode (napari_samsp.everything) for weights never trained to self-prompt.
CARD_MODES = ("semantic", "instance", "everything")
# The documented defaults of a card that does not name a field:
DEFAULT_MODE = "semantic"
DEFAULT_NUM_PASSES = 2  # SAM-SP's self-prompting passes K; a card without it describes a model trained with 2
DEFAULT_REFINE_INSTANCES = True  # instance mode re-decodes each object with its own box + point
DEFAULT_FLIP_VIEWS = 1  # prompt-free: the image alone, no test-time mirror images
FLIP_VIEWS = (1, 2, 4)
# Every card written before the field existed describes a model prepared the napari-samsp v1 way.
DEFAULT_PREPROCESSING = LEGACY_PREPROCESSING

# Keys of the typed fields (JSON name -> attribute name); anything else goes to ``extra``.
_FIELDS = {
    "format": "format",
    "config": "config",
    "input_size": "input_size",
    "mode": "mode",
    "num_passes": "num_passes",
    "refine_instances": "refine_instances",
    "flip_views": "flip_views",
    "prompt_flip_views": "prompt_flip_views",
    "everything": "everything",
    "preprocessing": "preprocessing",
    "version": "version",
    "parent": "parent",
    "created": "created",
    "origin": "origin",
    "training_data": "training_data",
    "steps": "steps",
    "metrics": "metrics",
    "random": "random",
}
# Unknown keys that describe one version's own history, not its descendants (dropped by ``child``).
PER_VERSION_KEYS = ("note", "train_seconds", "checkpoint", "recipe", "finetune", "self_improve")


def _freeze(value: Any) -> Any:
    """JSON value -> read-only: dicts become mapping proxies, lists tuples (recursively)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The inverse of :func:`_freeze`: plain dicts and lists, ready for ``json.dump``."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _json_normalised(d: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(_thaw(d)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model card is not JSON-serialisable: {exc}") from None


@dataclass(frozen=True)
class ModelCard:
    """A ``samsp-1`` model card; immutable (use :func:`dataclasses.replace` or :meth:`child`).

    Attributes:
        format: the card format, ``"samsp-1"``.
        config: the architecture (``SamConfig.to_dict()``); :attr:`config_name` is its name.
        input_size: the model's input side in pixels (None: the config's ``img_size``).
        mode: automatic mode, one of :data:`CARD_MODES` (default ``"semantic"``);
            ``"everything"`` for weights never trained to self-prompt.
        num_passes: SAM-SP self-prompting passes K the model was trained with (default 2).
        refine_instances: instance mode re-decodes each object (default True).
        flip_views: prompt-free segmentation averages the logits of this many mirror images
            (1, 2 or 4; default 1, the image alone).
        prompt_flip_views: the same for prompted decodes (clicks, boxes; not propagation): the
            ``flip_views`` of the model's :class:`~napari_samsp.predictor.Predictor` (default 1).
        everything: :class:`~napari_samsp.everything.EverythingOptions` fields for everything-mode.
        preprocessing: ``"sam"`` or ``"samsp-v1"`` (default, the legacy one).
        version: this version's id (None until saved: the writer stamps a fresh one).
        parent: the version (or source) this one was trained from, or None.
        created: ISO time of creation (None until saved).
        origin: where foreign weights came from (official SAM, a SAM-UNet checkpoint, ...).
        training_data: ``{"name", "count"}`` entries.
        steps: training steps.
        metrics: free-form evaluation results (``before``/``after``/... ).
        random: the weights are a random initialisation.
        extra: every other key of the card, kept as is.
    """

    format: str = CARD_FORMAT
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    input_size: int | None = None
    mode: str = DEFAULT_MODE
    num_passes: int = DEFAULT_NUM_PASSES
    refine_instances: bool = DEFAULT_REFINE_INSTANCES
    flip_views: int = DEFAULT_FLIP_VIEWS
    prompt_flip_views: int = DEFAULT_FLIP_VIEWS
    everything: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    preprocessing: str = DEFAULT_PREPROCESSING
    version: str | None = None
    parent: str | None = None
    created: str | None = None
    origin: str | None = None
    training_data: tuple[Mapping[str, Any], ...] = ()
    steps: int = 0
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    random: bool = False
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.mode not in CARD_MODES:
            raise ValueError(f"card mode must be one of {CARD_MODES}, got {self.mode!r}")
        if isinstance(self.num_passes, bool) or not isinstance(self.num_passes, int) or self.num_passes < 1:
            raise ValueError(f"card num_passes must be an integer >= 1, got {self.num_passes!r}")
        for name in ("flip_views", "prompt_flip_views"):
            value = getattr(self, name)
            if isinstance(value, bool) or value not in FLIP_VIEWS:
                raise ValueError(f"card {name} must be one of {FLIP_VIEWS}, got {value!r}")
        check_preprocessing(self.preprocessing)
        for entry in self.training_data:
            if not isinstance(entry, Mapping) or "name" not in entry or "count" not in entry:
                raise ValueError(f"card training_data entries need 'name' and 'count', got {_thaw(entry)!r}")
        # Mutable containers handed in by a caller become read-only, so the card is frozen all through.
        for name in ("config", "everything", "metrics", "extra", "training_data"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))

    # -- reading and writing -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ModelCard:
        """The card a JSON dict describes; missing fields get the defaults documented above.

        Raises:
            ValueError: a field has an invalid value (mode, num_passes, preprocessing,
                training_data entries) or the dict is not JSON-serialisable.
        """
        if isinstance(d, ModelCard):
            return d
        raw = _json_normalised(d or {})
        given = {attr: raw[key] for key, attr in _FIELDS.items() if key in raw and raw[key] is not None}
        extra = {k: v for k, v in raw.items() if k not in _FIELDS}
        # Old cards wrote these as falsy placeholders (``"num_passes": 0``, ``"preprocessing": ""``).
        for name in ("num_passes", "preprocessing"):
            if name in given and not given[name]:
                del given[name]
        for name in ("steps", "num_passes", "input_size", "flip_views", "prompt_flip_views"):
            if name in given and isinstance(given[name], float) and given[name].is_integer():
                given[name] = int(given[name])
        if "steps" in given:
            given["steps"] = int(given["steps"])
        for name in ("refine_instances", "random"):
            if name in given:
                given[name] = bool(given[name])
        if "input_size" not in given and isinstance(raw.get("config"), Mapping) and "img_size" in raw["config"]:
            given["input_size"] = raw["config"]["img_size"]
        return cls(**given, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON dict of this card: every field a ``samsp-1`` card always has, the optional
        ones (origin, everything options, refine_instances, flip views, random) when not at their default,
        and :attr:`extra`. ``ModelCard.from_dict(card.to_dict()) == card``."""
        out: dict[str, Any] = dict(_thaw(self.extra))
        out.update(
            format=self.format,
            mode=self.mode,
            num_passes=self.num_passes,
            preprocessing=self.preprocessing,
            parent=self.parent,
            training_data=_thaw(self.training_data),
            steps=self.steps,
            metrics=_thaw(self.metrics),
        )
        if self.config:
            out["config"] = _thaw(self.config)
        if self.input_size is not None:
            out["input_size"] = self.input_size
        for name in ("version", "created", "origin"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.everything:
            out["everything"] = _thaw(self.everything)
        if self.refine_instances != DEFAULT_REFINE_INSTANCES:
            out["refine_instances"] = self.refine_instances
        for name in ("flip_views", "prompt_flip_views"):
            if getattr(self, name) != DEFAULT_FLIP_VIEWS:
                out[name] = getattr(self, name)
        if self.random:
            out["random"] = True
        return out

    # -- derived ---------------------------------------------------------------------------
    @property
    def config_name(self) -> str | None:
        """The architecture's name (``config["name"]``), or None for a card without a config."""
        name = self.config.get("name")
        return None if name is None else str(name)

    @property
    def official(self) -> bool:
        """The config is an official SAM architecture (``config["official"]``)."""
        return bool(self.config.get("official"))

    def child(self, **changes: Any) -> ModelCard:
        """The card of a new version trained from this one.

        Kept: what says how to run the model (config, input size, mode, passes, refine and
        everything options, preprocessing, origin) and unknown keys except this version's
        own history (:data:`PER_VERSION_KEYS`). Reset: ``version`` and ``created`` (stamped
        when saved), ``steps``, ``metrics``, ``training_data``, ``random``. ``parent`` is this
        card's version. ``changes``: field values; unknown names go into ``extra``.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        typed = {k: v for k, v in changes.items() if k in fields}
        extra = {k: v for k, v in self.extra.items() if k not in PER_VERSION_KEYS}
        extra.update(typed.pop("extra", {}))
        extra.update({k: v for k, v in changes.items() if k not in fields})
        base = dict(version=None, created=None, parent=self.version, steps=0, metrics={}, training_data=(),
                    random=False)
        return dataclasses.replace(self, **{**base, **typed, "extra": _json_normalised(extra)})


def as_model_card(card: ModelCard | Mapping[str, Any] | None) -> ModelCard:
    """``card`` as a :class:`ModelCard` (None: a card with every default)."""
    return card if isinstance(card, ModelCard) else ModelCard.from_dict(card)


@dataclass(frozen=True)
class SegmentOptions:
    """The prompt-free segmentation a model card asks for.

    Attributes:
        mode: "semantic", "instance" or "everything".
        num_passes: self-prompting passes (self-prompting modes).
        refine_instances: re-decode each object with its own box + point (instance mode).
        flip_views: test-time mirror images averaged (self-prompting modes; 1, 2 or 4).
        everything: :class:`~napari_samsp.everything.EverythingOptions` fields (everything-mode).
    """

    mode: str = DEFAULT_MODE
    num_passes: int = DEFAULT_NUM_PASSES
    refine_instances: bool = DEFAULT_REFINE_INSTANCES
    everything: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    flip_views: int = DEFAULT_FLIP_VIEWS

    @classmethod
    def from_card(cls, card: ModelCard | Mapping[str, Any] | None, mode: str | None = None) -> SegmentOptions:
        """The options of ``card``'s model in ``mode`` (default: the card's mode; "everything"
        for foreign weights, whose card the loader marks so)."""
        mc = as_model_card(card)
        chosen = mode or mc.mode
        if chosen not in CARD_MODES:
            raise ValueError(f"mode must be one of {CARD_MODES}, got {chosen!r}")
        return cls(chosen, mc.num_passes, mc.refine_instances, MappingProxyType(dict(mc.everything)), mc.flip_views)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``autoseg.segment_image`` (besides ``mode``): the self-prompting
        options, or in everything-mode the card's everything options."""
        if self.mode == "everything":
            return _thaw(self.everything)
        return {"num_passes": self.num_passes, "refine_instances": self.refine_instances, "flip_views": self.flip_views}
