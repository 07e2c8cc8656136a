"""Run the notebooks in fresh kernels and save them with their outputs.

The notebooks are committed with their outputs, so that they render where the project is hosted.
After editing one, refresh its outputs with::

    .venv/bin/python notebooks/build.py                          # every notebook
    .venv/bin/python notebooks/build.py 02_surrogate_gradients   # one, by name

The notebooks that train or sweep (02 and 03) read ``GLIF_NOTEBOOKS_FULL``: unset or ``0``, they
run at small settings that finish in seconds (what the test suite runs,
``tests/notebooks/test_notebooks.py``); ``1``, at the full sizes shown in the committed outputs. This script sets it to ``1`` unless given ``--small``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import nbclient
import nbformat

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent
FULL_SIZE_VARIABLE = "GLIF_NOTEBOOKS_FULL"
# The kernel inherits the caller's environment; a non-interactive backend such as Agg (which
# tests set) would leave the notebooks without figures, so the inline backend is forced.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebook_paths() -> list[pathlib.Path]:
    """Every notebook of ``notebooks/``, in name order."""
    return sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def execute(path: pathlib.Path, *, full: bool, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel, in its own directory.

    Args:
      path: the ``.ipynb`` file; it is read, not written.
      full: run at full size (``GLIF_NOTEBOOKS_FULL=1``) rather than at the small settings.
      timeout: seconds any one cell may take.

    Returns:
      The notebook with its new outputs.

    Raises:
      nbclient.exceptions.CellExecutionError: a cell raised; the message names the cell and shows
        the traceback.
    """
    notebook = nbformat.read(path, as_version=4)
    env = {**os.environ, "MPLBACKEND": INLINE_BACKEND, FULL_SIZE_VARIABLE: "1" if full else "0"}
    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",  # ipykernel's kernel, started with this interpreter
        resources={"metadata": {"path": str(path.parent)}},
        # Outputs that depend only on the code, so that a rebuild changes only what changed: no
        # timestamps in the cell metadata, and each cell's printed text in one piece.
        record_timing=False,
        coalesce_streams=True,
    )
    client.execute(env=env)
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: every notebook)")
    parser.add_argument("--small", action="store_true", help="run at the small test settings")
    args = parser.parse_args()
    paths = notebook_paths()
    if args.names:
        wanted = {pathlib.Path(name).stem for name in args.names}
        unknown = wanted - {path.stem for path in paths}
        if unknown:
            parser.error(
                f"no notebook named {sorted(unknown)} in {NOTEBOOKS_DIR}; "
                f"have {[path.stem for path in paths]}"
            )
        paths = [path for path in paths if path.stem in wanted]
    for path in paths:
        start = time.perf_counter()
        notebook = execute(path, full=not args.small)
        nbformat.write(notebook, path)
        seconds = time.perf_counter() - start
        print(f"{path.name}: {seconds:.0f} s, {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
