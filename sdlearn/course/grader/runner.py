"""Running exercises in processes: a warm forking server on Linux, a fresh interpreter elsewhere; time limits."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .notebook import (ExerciseSpec, NotebookReadError, _check_calls, _expected_from_name, _imported_modules, _nbgrader,
                       collect_notebooks, find_exercises, read_notebook, setup_cells)
from .references import BLOCKED_CALLABLES, REFERENCES
from .report import ExerciseResult, NotebookResult, _points, format_table, results_json, write_csv
from .sandbox import BASE_IMPORTS, _preimport, _quiet, run_job

DEFAULT_TIMEOUT = 30.0  # seconds per exercise: the checks take well under one


STARTUP_TIMEOUT = 300.0  # seconds for a grading process to import torch (a cold disk can take a minute)


_PROTOCOL = "@@sdlearn-grader@@ "  # marks the grading process's answers among anything else it prints


class GraderError(RuntimeError):
    """The grader itself could not run (not a student's mistake): e.g. its grading process failed to start."""


_PROTOCOL_OUT = None  # the warm grading process's channel to the grader (closed in its children)


def _serve() -> int:
    """The warm grading process (Linux): imports once, then forks one child per exercise job read from stdin."""
    global _PROTOCOL_OUT
    _preimport(BASE_IMPORTS)
    _PROTOCOL_OUT = protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    print(_PROTOCOL + json.dumps({"ready": True}), file=protocol)
    while line := sys.stdin.readline():
        job = json.loads(line)
        paths = [*job.get("references", ()), *job.get("blocked", ())]
        _preimport([*job.get("preimport", ()), *(r.partition(":")[0] for r in paths)])
        print(_PROTOCOL + json.dumps(_fork_and_run(job)), file=protocol)
    return 0


def _fork_and_run(job: dict) -> dict:
    fd, result_path = tempfile.mkstemp(prefix="sdlearn-grade-", suffix=".json")
    os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: one exercise, then exit without running any of the parent's clean-up
        try:
            os.setpgid(0, 0)  # its own process group, so that whatever it starts is killed with it
            if _PROTOCOL_OUT is not None:
                os.close(_PROTOCOL_OUT.fileno())
            _quiet()
            _write_result(result_path, job)
        finally:
            os._exit(0)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    timed_out, status = False, 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > job["timeout"]:
            timed_out = True
            break
        time.sleep(0.005)
    _kill_group(pid)
    if timed_out:
        os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    result = _read_result(result_path)
    if timed_out:
        return {"status": "timeout", "seconds": seconds}
    if result is None:
        return {"status": "crashed", "seconds": seconds, "detail": _describe_exit(status)}
    return {**result, "status": "done", "seconds": seconds}


def _write_result(result_path: str, job: dict) -> None:
    """Run the job here and write its result; a failure of the grader itself is written too."""
    try:
        result = run_job(job)
    except BaseException as e:  # noqa: BLE001 - a bug of the grader, not the student's: say where
        result = {"internal_error": f"{type(e).__name__}: {e}",
                  "traceback": "".join(traceback.format_exception(e))[-2000:]}
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _read_result(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
    finally:
        try:
            os.remove(path)
        except OSError:
            pass


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig}" + (" (out of memory?)" if sig == signal.SIGKILL else "")
    return f"exit status {os.WEXITSTATUS(status)} (does the code call os._exit()?)"


def _run_one(result_path: str) -> int:
    """A fresh grading process for one job read from stdin (where fork is not available)."""
    job = json.loads(sys.stdin.readline())
    _preimport([*BASE_IMPORTS, *job.get("preimport", ())])
    print(_PROTOCOL + "ready", flush=True)  # the time limit starts now
    _quiet()
    _write_result(result_path, job)
    return 0


def _grading_env() -> dict[str, str]:
    """The grading processes' environment: CPU only, FAST, one thread, no display, this sdlearn importable."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])  # the folder that holds sdlearn/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update(SDLEARN_FAST="1", SDLEARN_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    return env


def _fork_available() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class _ForkServer:
    """A warm grading process that forks a child per exercise (Linux): no torch import per exercise."""

    def __init__(self):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "sdlearn.course.grader", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=_grading_env(), text=True,
                                     encoding="utf-8", bufsize=1)
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._answer(STARTUP_TIMEOUT, "start")

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(_PROTOCOL):
                self.answers.put(json.loads(line[len(_PROTOCOL):]))
        self.answers.put(None)  # the process ended

    def _answer(self, timeout: float, what: str) -> dict:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            answer = None
        if answer is None:
            self.close()
            self._stderr.seek(0)
            log = self._stderr.read().decode("utf-8", "replace").strip().splitlines()[-15:]
            raise GraderError(f"the grading process failed to {what}" + (":\n" + "\n".join(log) if log else "."))
        return answer

    def run(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._answer(job["timeout"] + 60, "grade an exercise")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class _SpawnRunner:
    """A fresh interpreter per exercise (Windows, macOS): slower to start; the time limit starts when it is ready."""

    def run(self, job: dict) -> dict:
        fd, result_path = tempfile.mkstemp(prefix="sdlearn-grade-", suffix=".json")
        os.close(fd)
        extra = {"start_new_session": True} if os.name == "posix" else {}
        proc = subprocess.Popen([sys.executable, "-m", "sdlearn.course.grader", "--run-job", result_path],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_grading_env(), text=True, encoding="utf-8", **extra)
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.close()
        ready: queue.Queue = queue.Queue()

        def read():
            for line in proc.stdout:
                if line.startswith(_PROTOCOL):
                    ready.put(True)
            ready.put(False)

        threading.Thread(target=read, daemon=True).start()
        try:
            if not ready.get(timeout=STARTUP_TIMEOUT):
                proc.wait()
                raise GraderError("a grading process failed to start (run "
                                  "`python -c \"import torch, sdlearn.course.checks\"` to see why).")
        except queue.Empty:
            proc.kill()
            raise GraderError(f"a grading process did not start within {STARTUP_TIMEOUT:.0f} s.") from None
        started = time.monotonic()
        try:
            proc.wait(timeout=job["timeout"])
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            if os.name == "posix":
                _kill_group(proc.pid)
            proc.kill()
            proc.wait()
        seconds = time.monotonic() - started
        result = _read_result(result_path)
        if timed_out:
            return {"status": "timeout", "seconds": seconds}
        if result is None:
            return {"status": "crashed", "seconds": seconds, "detail": f"exit status {proc.returncode}"}
        return {**result, "status": "done", "seconds": seconds}

    def close(self) -> None:
        pass


class Grader:
    """Grades notebooks; holds the warm grading processes between calls (use it as a context manager).

    timeout: seconds each exercise may take (set-up cells, exercise cell and check together).
    jobs: exercises graded at the same time (each in its own process).
    mode: "fork" (Linux default: a warm process forks a child per exercise) or "spawn" (a fresh
        interpreter per exercise; the default elsewhere).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1, mode: str | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}.")
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}.")
        self.timeout, self.jobs = float(timeout), jobs
        self.mode = mode or ("fork" if _fork_available() else "spawn")
        if self.mode not in ("fork", "spawn") or (self.mode == "fork" and not _fork_available()):
            raise ValueError(f"mode must be 'spawn' or, on Linux, 'fork'; got {mode!r}.")
        self._idle: queue.Queue = queue.Queue()
        self._runners: list = []
        self._lock = threading.Lock()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for runner in self._runners:
            runner.close()
        self._runners.clear()
        self._idle = queue.Queue()

    # ---------------------------------------------------------------------- running jobs
    def _take_runner(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            runner = _ForkServer() if self.mode == "fork" else _SpawnRunner()
            with self._lock:
                self._runners.append(runner)
            return runner

    def _run(self, job: dict) -> dict:
        runner = self._take_runner()
        try:
            answer = runner.run(job)
        except GraderError:
            with self._lock:
                if runner in self._runners:
                    self._runners.remove(runner)
            raise
        self._idle.put(runner)
        return answer

    # ---------------------------------------------------------------------- notebooks
    def _plan(self, path: Path, timeout: float, only=None):
        """(read error, [(spec, job or None)]) for one notebook; nothing runs yet."""
        try:
            nb = read_notebook(path)
        except NotebookReadError as e:
            return str(e), [(spec, None) for spec in _expected_from_name(path.name)]
        specs = find_exercises(nb, path.name)
        if only is not None:
            specs = [s for s in specs if s.exercise_id in only]
        code = {i: c for i, c in enumerate(nb.cells) if c.cell_type == "code"}
        exclude = {s.cell for s in specs if s.cell is not None}  # exercise cells, check cells, solution cells
        exclude |= {i for i, c in code.items() if _check_calls(c.source) or _nbgrader(c).get("solution")}
        setup = [(i, nb.cells[i].source) for i in setup_cells(nb, exclude)]
        preimport = _imported_modules([s for _, s in setup])
        plan = []
        for spec in specs:
            job = None
            if spec.cell is not None:
                job = {"exercise_id": spec.exercise_id, "function": spec.function, "setup": setup,
                       "cell": (spec.cell, nb.cells[spec.cell].source), "timeout": timeout,
                       "cwd": str(path.resolve().parent), "preimport": preimport,
                       "references": REFERENCES.get(spec.exercise_id, ()),
                       "blocked": BLOCKED_CALLABLES.get(spec.exercise_id, ())}
            plan.append((spec, job))
        return None, plan

    def _result(self, spec: ExerciseSpec, job: dict | None, timeout: float, read_error: str | None) -> ExerciseResult:
        def result(status, feedback, score=0, seconds=0.0):
            feedback = "\n  ".join(p for p in (feedback, spec.note) if p)
            return ExerciseResult(spec.exercise_id, spec.grade_id, score, spec.points, status, feedback, seconds)

        if read_error is not None:
            return result("missing", f"✗ {spec.exercise_id}: not graded: {read_error}")
        if job is None:
            return result("missing", f"✗ {spec.exercise_id}: the notebook has no cell that defines "
                                     f"`{spec.function}` and no check cell for this exercise. Were its cells deleted? "
                                     "Work in the notebook that was handed out, and keep the exercise and check cells.")
        answer = self._run(job)
        seconds = answer.get("seconds", 0.0)
        if answer["status"] == "timeout":
            return result("timeout", f"✗ {spec.exercise_id}: stopped after {timeout:g} s, the time limit of one "
                                     "exercise (the checks take well under a second). Look for a loop that never ends, "
                                     "or work that grows far beyond what the exercise asks. The other exercises were "
                                     "graded as usual.", seconds=seconds)
        if answer["status"] == "crashed":
            return result("crashed", f"✗ {spec.exercise_id}: the process grading this exercise ended without a "
                                     f"result ({answer.get('detail', 'unknown')}); does your code exit, or "
                                     "allocate far too much memory?", seconds=seconds)
        if "internal_error" in answer:
            raise GraderError(f"grading {spec.exercise_id} failed inside the grader (a bug in sdlearn, not the "
                              f"student's): {answer['internal_error']}\n{answer.get('traceback', '')}")
        passed = bool(answer.get("passed"))
        return result("passed" if passed else "failed", answer.get("feedback", ""),
                      spec.points if passed else 0, seconds)

    def grade(self, paths, timeout: float | None = None, progress=None) -> list[NotebookResult]:
        """Grade notebooks (paths, in order). ``progress(done, total, result)`` is called after each one."""
        timeout = float(timeout or self.timeout)
        paths = [Path(p) for p in paths]
        plans = [self._plan(p, timeout) for p in paths]
        tasks = [(n, k) for n, (_, plan) in enumerate(plans) for k in range(len(plan))]
        outcomes: dict[tuple[int, int], ExerciseResult] = {}
        remaining = [len(plan) for _, plan in plans]
        results: list[NotebookResult | None] = [None] * len(paths)
        started = [time.monotonic()] * len(paths)
        done = [0]
        lock = threading.Lock()

        def finish(n: int) -> None:
            read_error, plan = plans[n]
            results[n] = NotebookResult(str(paths[n]), [outcomes[(n, k)] for k in range(len(plan))], read_error,
                                        time.monotonic() - started[n])
            done[0] += 1
            if progress is not None:
                progress(done[0], len(paths), results[n])

        def work(task) -> None:
            n, k = task
            read_error, plan = plans[n]
            spec, job = plan[k]
            outcome = self._result(spec, job, timeout, read_error)
            with lock:
                outcomes[task] = outcome
                remaining[n] -= 1
                if remaining[n] == 0:
                    finish(n)

        for n, (_, plan) in enumerate(plans):
            if not plan:
                finish(n)
        if self.jobs == 1:
            for task in tasks:
                work(task)
        else:
            with ThreadPoolExecutor(self.jobs) as pool:
                list(pool.map(work, tasks))
        return results

    def grade_notebook(self, path, timeout: float | None = None, only=None) -> NotebookResult:
        """Grade one notebook; ``only``: a set of exercise ids to grade (the others are left out)."""
        timeout = float(timeout or self.timeout)
        started = time.monotonic()
        read_error, plan = self._plan(Path(path), timeout, only)
        exercises = [self._result(spec, job, timeout, read_error) for spec, job in plan]
        return NotebookResult(str(path), exercises, read_error, time.monotonic() - started)


def grade_notebooks(paths, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1) -> list[NotebookResult]:
    """Grade notebooks with a fresh :class:`Grader` (see the module docstring)."""
    with Grader(timeout=timeout, jobs=jobs) as grader:
        return grader.grade(paths)


def run_grade_command(paths, json_path=None, csv_path=None, timeout: float = DEFAULT_TIMEOUT, jobs: int = 1) -> int:
    """``sdlearn grade``: 0 when grading ran (whatever the scores), 2 for a usage error, 1 if the grader broke."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # ✓ and ✗ on a terminal that cannot show them
    try:
        notebooks = collect_notebooks(paths)
        if not notebooks:
            raise FileNotFoundError(f"No notebooks (.ipynb) in {', '.join(map(str, paths))}.")
        grader = Grader(timeout=timeout, jobs=jobs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"grading {len(notebooks)} notebook(s): each exercise in its own process, at most {timeout:g} s each; "
          "sdlearn's own implementations of the exercises are unavailable to the answers.", file=sys.stderr)

    def progress(done, total, result):
        if total > 1:
            print(f"[{done}/{total}] {result.notebook}: {_points(result.score)}/{_points(result.max_score)}",
                  file=sys.stderr, flush=True)

    try:
        with grader:
            results = grader.grade(notebooks, progress=progress)
    except GraderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(results), end="")
    if json_path:
        Path(json_path).write_text(json.dumps(results_json(results, timeout), indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
        print(f"grades written to {json_path}", file=sys.stderr)
    if csv_path:
        write_csv(results, csv_path)
        print(f"grades written to {csv_path}", file=sys.stderr)
    return 0


def _entry(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        return _serve()
    if argv[:1] == ["--run-job"] and len(argv) == 2:
        return _run_one(argv[1])
    print("sdlearn.course.grader is run by `python -m sdlearn grade NOTEBOOK...`.", file=sys.stderr)
    return 2
