"""Start from existing masks: a queue image that already has a mask (Cellpose, StarDist, a colleague)
opens with that mask in its Labels layer, to be corrected and sent with its provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SamspError


def open_existing_mask(session, mask_path: Path | None) -> bool:
    """Put the mask at ``mask_path`` into the current workspace's labels; True when it did.

    Binary masks become label 1, instance masks keep their ids. The workspace remembers
    ``existing:<path>`` as the mask's source; sending records it in the store entry.
    A mask that cannot be read or has another size is reported and left out (False).
    """
    ws = session.workspace
    if mask_path is None or ws is None:
        return False
    from ..io import read_mask

    try:
        mask = read_mask(mask_path)
        if ws.is_stack or tuple(mask.shape) != tuple(ws.spatial):
            raise SamspError(
                f"existing mask {Path(mask_path).name} is {'x'.join(map(str, mask.shape))}, the image is "
                f"{'x'.join(map(str, ws.spatial))}: not used"
            )
        ws.check_labels()
        ws.set_labels(mask.astype(np.uint32), user_edit=False)
    except SamspError as exc:
        session.messages.exception(exc, "opening the existing mask")
        return False
    ws.mask_source = f"existing:{Path(mask_path).resolve()}"
    ws.labels.selected_label = int(mask.max(initial=0)) + 1
    n = int(mask.max(initial=0))
    session.messages.status(
        f"'{ws.name}': opened the existing mask {Path(mask_path).name} ({n} object{'s' if n != 1 else ''}); "
        "correct it and send it"
    )
    return True
