"""Loading a model into the session, and embedding a plane with it, in workers: helpers the panels share.

The model and its predictor come from the session's :class:`~napari_samsp.project.Project`
(``project.load`` / ``project.predictor``), so the plugin and ``samsp --project`` build them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .embeddings import plane_key
from .notify import describe


def load_into_session(session, target, device: str, trust: bool, label: str,
                      on_loaded: Callable[[object], None] | None = None, remember_base: bool = True):
    """Start a worker that loads ``target`` (None: the embedded default) and installs it with a fresh predictor.

    ``remember_base``: this is the user's base model (what a rollback past the first
    fine-tuned version returns to), not a project version. Returns the task or None.
    """
    project = session.project

    def work(ctx):
        loaded = project.load(target, device=device, trust=trust)
        return loaded, project.predictor(loaded)

    def done(result):
        loaded, predictor = result
        session.device = device
        if remember_base:
            session.base_target = (target, trust)
        session.set_model(loaded, predictor)
        msg = f"model loaded: {label} ({loaded.model_card.config_name or '?'}, on {predictor.device})"
        if loaded.is_random:
            session.messages.warning(msg + " — random weights: masks are meaningless until trained")
        else:
            session.messages.info(msg)
        if on_loaded is not None:
            on_loaded(loaded)

    def failed(exc):
        kept = "" if session.loaded is None else " (the previous model stays loaded)"
        session.messages.error(f"could not load {label}: {describe(exc)}{kept}")

    return session.tasks.start("model", f"loading model {label}", work, on_done=done, on_error=failed)


def require_model(session) -> bool:
    """True when a model is loaded; otherwise tells the user to load one and returns False."""
    if session.predictor is None:
        session.messages.error("no model loaded: load one in the Model section first")
        return False
    return True


def ensure_embedding(session, ws, z: int | None, then=None, window=None):
    """The :class:`~napari_samsp.embedding.Embedding` of plane ``z`` of ``ws`` (or of its ``window``,
    a :class:`~napari_samsp.local_prompts.Window`; None: the whole plane) when the session has it.

    Otherwise returns None and starts a worker (cache lookup or encoder) that keeps it in
    ``session.embeddings`` and calls ``then()`` when it is done.
    """
    key = plane_key(ws.key, z, window)
    emb = session.embeddings.get(session.predictor, key)
    if emb is not None:
        return emb
    if not require_model(session):
        return None
    predictor = session.predictor

    def work(ctx):
        t0 = time.perf_counter()
        plane = ws.model_plane(z)
        return predictor.embed(plane if window is None else plane[window.slices]), time.perf_counter() - t0

    def done(result):
        emb, seconds = result
        session.embeddings.put(predictor, key, emb)
        where = "" if z is None else f" of slice {z}"
        session.messages.status(f"embedding{where} {'from the cache' if emb.from_cache else 'computed'} in {seconds:.2f} s")
        if then is not None:
            then()

    where = "" if z is None else f" (slice {z})"
    session.tasks.start("model", f"computing the image embedding{where}", work, on_done=done)
    return None
