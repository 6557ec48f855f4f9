"""While a check runs the learner's function, sdlearn's own answer to the exercise is unavailable.

The grader (``sdlearn grade``) takes away sdlearn's implementation of each exercise's equation (the paths in
``sdlearn.course.grader.references.REFERENCES``): an answer that only calls ``predicted_original`` earns nothing
there. The check cell in the notebook must give the same verdict, so :func:`references_unavailable` does the same
for the length of one check: while the learner's function runs (:func:`learner_running`, entered by
``core._call``), calling one of those references raises :class:`ReferenceUnavailable`, which the check turns into
feedback that says why. The references are wrapped where sdlearn holds them and where the learner's function
finds them (its module's globals: the notebook's namespace), and put back afterwards. Other libraries' functions
that answer an exercise in one call (``BLOCKED_CALLABLES``: torch's fused attention, transformers' CLIP loss) are
taken away the same way, in their own module too, with a message that says to compute the equation by hand.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import sys


class ReferenceUnavailable(RuntimeError):
    """The learner's code called sdlearn's own implementation of the exercise's equation."""


_RUNNING = [0]  # > 0 while the learner's function runs


@contextlib.contextmanager
def learner_running():
    _RUNNING[0] += 1
    try:
        yield
    finally:
        _RUNNING[0] -= 1


def unavailable_message(name: str) -> str:
    return (f"your function calls {name}, sdlearn's own implementation of this exercise's equation. The grader "
            "takes it away, so an answer that calls it scores nothing there; write the equation yourself with torch "
            "operations (the notebook compares your version with sdlearn's after the check).")


def library_message(name: str) -> str:
    return (f"your function calls {name}, a library function that computes this exercise's whole equation in one "
            "call. It is unavailable while this exercise is checked (and in the grader): compute the equation by "
            "hand, step by step, with basic torch operations (matmul, softmax, exp, ...).")


def guard(original, name: str, message, active, marker: str, on_block=None):
    """``original`` wrapped so that it raises ReferenceUnavailable(message(name)) whenever ``active()`` is true (and
    calls ``on_block(name)`` first); otherwise it behaves as ``original``. ``marker`` is set to True on the wrapper,
    so a second guard can tell the function is already guarded. The check cell and the grader share this."""

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        if active():
            if on_block is not None:
                on_block(name)
            raise ReferenceUnavailable(message(name))
        return original(*args, **kwargs)

    setattr(guarded, marker, True)
    return guarded


def _guard(original, name: str, message=unavailable_message):
    return guard(original, name, message, active=lambda: _RUNNING[0] > 0, marker="__sdlearn_check_guard__")


def _resolve(path: str):
    """'module:function' or 'module:Class.method' -> (owner, attribute, the callable), or None."""
    module_name, _, qualname = path.partition(":")
    try:
        owner = importlib.import_module(module_name)
    except ImportError:
        return None
    *parents, attr = qualname.split(".")
    for part in parents:
        owner = getattr(owner, part, None)
    original = vars(owner).get(attr) if owner is not None else None
    return (owner, attr, original) if callable(original) else None


def _checks_helpers() -> list:
    """(module, name, function) for the private functions of sdlearn.course.checks's modules: the grader takes them
    away too (an answer that returns the check's own reference earns nothing)."""
    import pkgutil

    checks = importlib.import_module(__package__)  # sdlearn.course.checks
    modules = [checks] + [importlib.import_module(f"{checks.__name__}.{m.name}") for m in pkgutil.iter_modules(checks.__path__)]
    return [(m, n, f) for m in modules for n, f in vars(m).items()
            if n.startswith("_") and not n.startswith("__") and inspect.isfunction(f) and f.__module__ == m.__name__]


@contextlib.contextmanager
def references_unavailable(exercise_id: str, namespaces=()):
    """Within the block, the exercise's references raise ReferenceUnavailable when the learner's function calls them.

    The references: the exercise's paths in the grader's REFERENCES, and the checks' own private helpers.
    namespaces: dicts the learner's function reads names from (``fn.__globals__``), patched too.
    Where the grader has already put its own guards in place (``__sdlearn_guarded__``), nothing is changed.
    """
    from ..grader.references import BLOCKED_CALLABLES, REFERENCES  # the one list of what the grader takes away

    targets = [(*r, unavailable_message) for r in map(_resolve, REFERENCES.get(exercise_id, ())) if r is not None]
    targets += [(*r, library_message) for r in map(_resolve, BLOCKED_CALLABLES.get(exercise_id, ())) if r is not None]
    targets += [(*r, unavailable_message) for r in _checks_helpers()]
    undo: list = []
    try:
        replace = {}  # id(original) -> guarded, for the module-level functions
        owners = []  # the modules that define them (another library's module is not among sdlearn's below)
        for owner, attr, original, message in targets:
            if getattr(original, "__sdlearn_guarded__", False) or getattr(original, "__sdlearn_check_guard__", False):
                continue
            where = f"{owner.__module__}.{owner.__qualname__}" if inspect.isclass(owner) else owner.__name__
            guarded = _guard(original, f"{where}.{attr}", message)
            if inspect.isclass(owner):
                setattr(owner, attr, guarded)
                undo.append(functools.partial(setattr, owner, attr, original))
            else:
                replace[id(original)] = (original, guarded)
                owners.append(owner)
        holders = [vars(m) for n, m in list(sys.modules.items()) if n.split(".")[0] == "sdlearn" and m is not None]
        holders += [vars(m) for m in dict.fromkeys(owners) if not m.__name__.startswith("sdlearn")]
        for ns in [*holders, *namespaces]:
            for name, value in list(ns.items()):  # also the copies made by `from .x import f`
                hit = replace.get(id(value))
                if hit is not None and hit[0] is value:
                    ns[name] = hit[1]
                    undo.append(functools.partial(ns.__setitem__, name, value))
        yield
    finally:
        for restore in reversed(undo):
            restore()
