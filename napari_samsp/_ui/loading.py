"""Loading a model into the session in a worker: the one helper the model and fine-tune panels share.

The model and its predictor come from the session's :class:`~napari_samsp.project.Project`
(``project.load`` / ``project.predictor``), so the plugin and ``samsp --project`` build them alike.
"""

from __future__ import annotations

from collections.abc import Callable

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
