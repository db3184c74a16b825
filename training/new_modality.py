"""The loop on a new modality (fluorescence -> H&E nuclei): now ``training/loop_curve.py new-modality``.

    python training/new_modality.py [options]   ==   python training/loop_curve.py new-modality [options]

Kept so the command lines in docs and old notes still work; see ``loop_curve.py`` for the recipe.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loop_curve import kinds_split, main_new_modality  # noqa: E402, F401  (kinds_split: the old import path)


def main(argv: list[str] | None = None) -> int:
    return main_new_modality(argv)


if __name__ == "__main__":
    sys.exit(main())
