"""List the core's functions of ``--min`` lines or more (default 80), longest first.

The core is ``napari_samsp`` without the napari layer (``_ui/``, ``_widget.py``, ``_reader.py``,
``_writer.py``, ``_sample_data.py``). A function's length runs from its ``def`` (decorators
excluded) to its last line, docstring included. Usage::

    python scripts/longest_functions.py [--min 80] [ROOT]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_CORE = ("_ui/", "_widget.py", "_reader.py", "_writer.py", "_sample_data.py")


def core_files(package: Path) -> list[Path]:
    """The core's ``.py`` files under ``package``, sorted."""
    return sorted(p for p in package.rglob("*.py") if not p.relative_to(package).as_posix().startswith(NOT_CORE))


def long_functions(path: Path, minimum: int) -> list[tuple[int, str, int]]:
    """(lines, qualified name, first line) of each function of ``path`` with ``minimum`` lines or more."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: list[tuple[int, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                if lines >= minimum:
                    out.append((lines, name, child.lineno))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(REPO), help="repository root (default: this one)")
    ap.add_argument("--min", type=int, default=80, help="report functions of this many lines or more")
    args = ap.parse_args(argv)
    package = Path(args.root) / "napari_samsp"
    rows = []
    for path in core_files(package):
        rel = path.relative_to(Path(args.root)).as_posix()
        rows += [(n, f"{rel}:{name}", line) for n, name, line in long_functions(path, args.min)]
    for n, where, line in sorted(rows, reverse=True):
        print(f"{n:5d}  {where}  (line {line})")
    print(f"{len(rows)} core functions of {args.min} lines or more", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
