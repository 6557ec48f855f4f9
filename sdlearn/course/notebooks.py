"""Run the chapter notebooks headlessly, and make student copies of them.

- :func:`execute_notebook` runs one notebook with nbclient (the ``python3`` kernel of the environment
  sdlearn is installed in) and writes the executed ``.ipynb`` plus an HTML page (nbconvert).
- :func:`run_course` does that for every ``chapters/*.ipynb`` in order: what ``make course`` runs.
- :func:`release_notebook` writes a student copy: the chapters' exercise markup (nbgrader's)
  with every solution replaced by ``raise NotImplementedError()`` and hidden tests removed.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import os
import sys
import time
from pathlib import Path

import nbformat
from tqdm import tqdm

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"
END_HIDDEN_TESTS = "### END HIDDEN TESTS"


class NotebookError(RuntimeError):
    """A chapter notebook failed; the message names the notebook, the cell and the error."""


@dataclasses.dataclass
class NotebookRun:
    """What :func:`execute_notebook` did: where the outputs are and how long it took."""

    source: Path  # the notebook that was run
    notebook: Path  # the executed copy (.ipynb, with outputs)
    html: Path  # the same as an HTML page
    seconds: float  # wall time of the execution (kernel start to last cell)
    fast: bool | None  # SDLEARN_FAST given to the kernel; None: the notebook decided (FAST without a GPU)


# ---------------------------------------------------------------------------------------------
# Running notebooks
# ---------------------------------------------------------------------------------------------

def _kernel_env(fast: bool | None) -> dict[str, str]:
    """The kernel's environment: ours, plus SDLEARN_FAST when asked, plus the sdlearn we run from."""
    env = dict(os.environ)
    if fast is not None:
        env["SDLEARN_FAST"] = "1" if fast else "0"
    # The kernel imports the same sdlearn as this process, even when it is not pip-installed
    # (the kernel runs in chapters/, so a relative PYTHONPATH=. would not reach it).
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds sdlearn/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures into the outputs, not a window
    # The CPU threads, chosen in one place (sdlearn.device.num_threads, SDLEARN_THREADS): set for OpenMP and MKL
    # before the kernel starts, so their pools are this size from the first operation on.
    from ..device import num_threads

    threads = str(num_threads())
    env["SDLEARN_THREADS"] = threads
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def _describe_failure(cell, error: Exception, timeout: int) -> str:
    """One line saying what went wrong in the cell that was running."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
    if isinstance(error, CellTimeoutError):
        what = f"took longer than {timeout} s (pass a larger timeout)"
    elif isinstance(error, DeadKernelError):
        what = "the kernel died (out of memory?)"
    else:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        what = f"{errors[0].ename}: {errors[0].evalue}" if errors else str(error).strip().splitlines()[-1]
    return f"{what} (cell starts: {first_line[:70]!r})"


def write_html(nb, path: str | os.PathLike) -> Path:
    """Write an executed notebook as a standalone HTML page."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    path = Path(path)
    path.write_text(body, encoding="utf-8")
    return path


def execute_notebook(path: str | os.PathLike, out_dir: str | os.PathLike = "build/course",
                     fast: bool | None = None, timeout: int = 1200, progress: bool = False) -> NotebookRun:
    """Execute one notebook and write ``out_dir/NAME.ipynb`` (with outputs) and ``out_dir/NAME.html``.

    path: the notebook; it runs with its own folder (``chapters/``) as working directory.
    fast: sets ``SDLEARN_FAST`` in the kernel (True -> 1, False -> 0); None leaves the choice to the
        notebook's ``parameters`` cell (FAST when there is no GPU).
    timeout: the most seconds one cell may take.
    progress: show a progress bar over the cells (on stderr).
    Raises :class:`NotebookError` naming the failing cell; the partly executed notebook and its HTML
    page are still written, so the traceback can be read there.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    source = Path(path).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"No notebook at {source}; give the path of a .ipynb file.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}},
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no kernel start-up chatter
    bar = tqdm(total=len(nb.cells), desc=source.stem, unit="cell", leave=False, disable=not progress)
    current = {"index": 0}  # the cell being run, for the error message

    def on_cell_start(cell, cell_index, **kwargs):
        current["index"] = cell_index
        bar.update(cell_index - bar.n)

    client.on_cell_start = on_cell_start
    started = time.perf_counter()
    error = None
    try:
        client.execute(env=_kernel_env(fast))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        error = exc
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    executed = out_dir / source.name
    nbformat.write(nb, executed)
    page = write_html(nb, executed.with_suffix(".html"))
    if error is not None:
        index = current["index"]
        what = _describe_failure(nb.cells[index], error, timeout)
        raise NotebookError(f"{source.name} failed at cell {index + 1} of {len(nb.cells)}: {what}\n"
                            f"The executed notebook with the full traceback: {executed}") from error
    return NotebookRun(source, executed, page, seconds, fast)


def find_notebooks(chapters_dir: str | os.PathLike = "chapters") -> list[Path]:
    """The chapter notebooks in course order (by file name: 01_..., 02_...)."""
    folder = Path(chapters_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder.resolve()}; run this from the sdlearn repository root "
                                "(the folder that holds chapters/), or pass the chapters folder.")
    return sorted(folder.glob("*.ipynb"))


def _write_index(runs: list[NotebookRun], failures: dict[str, str], out_dir: Path) -> Path:
    """A small index.html linking the chapter pages, with their run times."""
    rows = [f'<li><a href="{html.escape(r.html.name)}">{html.escape(r.source.stem)}</a> ({r.seconds:.0f} s)</li>'
            for r in runs]
    rows += [f"<li>{html.escape(name)}: <b>failed</b> ({html.escape(msg.splitlines()[0])})</li>"
             for name, msg in failures.items()]
    page = out_dir / "index.html"
    page.write_text("<!doctype html><meta charset='utf-8'><title>sdlearn course</title>"
                    "<h1>sdlearn: executed chapters</h1><ul>\n" + "\n".join(rows) + "\n</ul>\n", encoding="utf-8")
    return page


def run_course(chapters_dir: str | os.PathLike = "chapters", out_dir: str | os.PathLike = "build/course",
               fast: bool | None = None, timeout: int = 1200, notebooks: list | None = None) -> int:
    """Execute every chapter notebook in order; print progress, times and where the outputs are.

    Returns an exit status: 0 when every notebook ran, 1 when any failed (each failure is printed
    with the cell it failed at; the remaining chapters still run).
    """
    paths = [Path(p) for p in notebooks] if notebooks else find_notebooks(chapters_dir)
    if not paths:
        print(f"No notebooks found in {Path(chapters_dir).resolve()}.", file=sys.stderr)
        return 1
    out_dir = Path(out_dir)
    mode = {None: "FAST on a CPU, full on a GPU", True: "FAST (SDLEARN_FAST=1)", False: "full (SDLEARN_FAST=0)"}[fast]
    print(f"Running {len(paths)} notebook(s), mode: {mode}")
    runs: list[NotebookRun] = []
    failures: dict[str, str] = {}
    for number, path in enumerate(paths, 1):
        try:
            run = execute_notebook(path, out_dir, fast=fast, timeout=timeout, progress=True)
        except NotebookError as exc:
            print(f"[{number}/{len(paths)}] {path.name}: FAILED", flush=True)
            failures[path.name] = str(exc)
            continue
        runs.append(run)
        print(f"[{number}/{len(paths)}] {path.name}: done in {run.seconds:.0f} s", flush=True)
    index = _write_index(runs, failures, out_dir)
    print(f"\nExecuted notebooks and HTML pages are in {out_dir.resolve()}")
    print(f"Open {index.resolve()} in a browser for the list of chapters.")
    print(f"Total: {sum(r.seconds for r in runs):.0f} s")
    if failures:
        print(f"\n{len(failures)} notebook(s) failed:", file=sys.stderr)
        for message in failures.values():
            print(f"- {message}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Student copies (nbgrader's markup: ### BEGIN SOLUTION .. ### END SOLUTION, ### BEGIN HIDDEN TESTS ..)
# ---------------------------------------------------------------------------------------------

def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def strip_solutions(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """The student version of one cell's source.

    Code: each ``### BEGIN SOLUTION`` .. ``### END SOLUTION`` region (markers included) becomes
    ``# YOUR CODE HERE`` and ``raise NotImplementedError()`` at the indent of the BEGIN line.
    Markdown: the region becomes ``YOUR ANSWER HERE``. ``### BEGIN HIDDEN TESTS`` ..
    ``### END HIDDEN TESTS`` regions are removed. Everything else is kept as it is.
    """
    out: list[str] = []
    inside = None  # None, "solution" or "hidden"
    for line in source.splitlines(keepends=True):
        marker = line.strip()
        if inside is None and marker == BEGIN_SOLUTION:
            indent = _indent_of(line)
            if cell_type == "code":
                out += [f"{indent}# YOUR CODE HERE\n", f"{indent}raise NotImplementedError()\n"]
            else:
                out.append(f"{indent}YOUR ANSWER HERE\n")
            inside = "solution"
        elif inside is None and marker == BEGIN_HIDDEN_TESTS:
            inside = "hidden"
        elif inside == "solution" and marker == END_SOLUTION:
            inside = None
        elif inside == "hidden" and marker == END_HIDDEN_TESTS:
            inside = None
        elif marker in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN_TESTS, END_HIDDEN_TESTS):
            raise ValueError(f"{where}: unexpected {marker!r} (inside a {inside or 'no'} region); "
                             "BEGIN and END markers must come in pairs, not nested.")
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: a {inside} region is never closed; add the matching '### END ...' line.")
    text = "".join(out)
    return text if source.endswith("\n") else text.rstrip("\n")


def release_notebook(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write the student copy of notebook ``src`` to ``dst`` (a file, or a folder to put it in).

    Solutions are replaced (see :func:`strip_solutions`), hidden tests removed, outputs and
    execution counts cleared; cell and notebook metadata are kept, so nbgrader still sees the markup.
    """
    src = Path(src)
    dst = Path(dst)
    if dst.is_dir() or dst.suffix != ".ipynb":
        dst = dst / src.name
    nb = nbformat.read(src, as_version=4)
    student = copy.deepcopy(nb)
    for index, cell in enumerate(student.cells):
        cell.source = strip_solutions(cell.source, cell.cell_type, where=f"{src.name}, cell {index}")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student, dst)
    return dst


def release(paths: list, out_dir: str | os.PathLike) -> list[Path]:
    """Student copies of notebooks and of every ``*.ipynb`` in the given folders, into ``out_dir``."""
    notebooks: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            notebooks += sorted(p.glob("*.ipynb"))
        elif p.suffix == ".ipynb" and p.is_file():
            notebooks.append(p)
        else:
            raise FileNotFoundError(f"No notebook or folder at {p.resolve()}: give .ipynb files or folders of "
                                    "notebooks (chapters/ is in the sdlearn repository root).")
    return [release_notebook(nb, Path(out_dir)) for nb in notebooks]
