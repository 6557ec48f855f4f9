"""Packaging: pyproject.toml and environment.yml list the same packages, and a wheel carries the models."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib  # Python 3.11+
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
yaml = pytest.importorskip("yaml")  # PyYAML comes with jupyterlab (through jupyter_events)

ROOT = Path(__file__).resolve().parent.parent
SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(#.*)?$")


def normalize(name: str) -> str:
    """PEP 503 names: case and runs of -_. do not matter (Pillow == pillow, jupyter_core == jupyter-core)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(lines: list[str], where: str) -> dict[str, str]:
    """{normalised name: version specifier ('' when unpinned)}; one name given twice must agree."""
    found: dict[str, str] = {}
    for line in lines:
        if line.strip().startswith("-"):  # pip options such as "-e ." (sdlearn itself)
            continue
        match = SPEC.match(line)
        assert match, f"{where}: cannot read the requirement {line!r}"
        name, version = normalize(match.group(1)), match.group(3).replace(" ", "")
        assert found.get(name, version) == version, f"{where}: {name} is given as {found[name]!r} and {version!r}."
        found[name] = version
    return found


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pyproject_requirements() -> dict[str, str]:
    project = pyproject()["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    return parse_requirements(lines, "pyproject.toml")


def environment() -> tuple[dict[str, str], dict[str, str]]:
    """(conda packages, pip packages) of environment.yml."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [item for d in env["dependencies"] if isinstance(d, dict) for item in d.get("pip", [])]
    return parse_requirements(conda, "environment.yml (conda)"), parse_requirements(pip, "environment.yml (pip)")


def test_environment_yml_and_pyproject_list_the_same_packages():
    conda, pip = environment()
    in_env = {**pip, **{k: v for k, v in conda.items() if k not in ("python", "pip")}}
    in_pyproject = pyproject_requirements()
    assert set(in_pyproject) - set(in_env) == set(), "in pyproject.toml but missing from environment.yml"
    assert set(in_env) - set(in_pyproject) == set(), "in environment.yml but missing from pyproject.toml"
    for name, version in in_pyproject.items():
        assert in_env[name] == version, f"{name}: pyproject.toml says {version!r}, environment.yml {in_env[name]!r}"


def test_python_versions_agree():
    conda, _ = environment()
    assert conda.get("python") == pyproject()["project"]["requires-python"] == ">=3.10"


def test_required_packages_are_declared():
    names = set(pyproject_requirements())
    for needed in ("torch", "transformers", "safetensors", "matplotlib", "ipywidgets", "pytest", "tqdm",
                   "mlxtend", "nbclient", "nbconvert", "ipykernel", "jupyterlab", "diffusers"):
        assert needed in names, f"{needed} is missing from pyproject.toml"
    test_extra = parse_requirements(pyproject()["project"]["optional-dependencies"]["test"], "test extra")
    assert re.fullmatch(r"==\d+\.\d+\.\*", test_extra["diffusers"]), "pin diffusers to a minor version: ==X.Y.*"


def test_console_script_and_version():
    import sdlearn
    from sdlearn import cli

    project = pyproject()["project"]
    assert project["scripts"]["sdlearn"] == "sdlearn.cli:main" and callable(cli.main)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", sdlearn.__version__)


@pytest.mark.slow
def test_wheel_contains_the_package_and_shipped_models(tmp_path):
    """Build a wheel (as `pip install .` would) and check that sdlearn/pretrained/** is inside it."""
    source = tmp_path / "src"  # a copy, so the build leaves no build/ or *.egg-info in the checkout
    shutil.copytree(ROOT / "sdlearn", source / "sdlearn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        assert (ROOT / name).is_file(), f"{name} is missing; pyproject.toml needs it to build"
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheel = next(tmp_path.glob("sdlearn-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sdlearn/__init__.py", "sdlearn/cli.py", "sdlearn/course/notebooks.py"} <= names
    assert any(n.startswith("sdlearn/schedulers/") for n in names) and any(n.startswith("sdlearn/pipelines/") for n in names)
    shipped = [p.relative_to(ROOT).as_posix() for p in (ROOT / "sdlearn" / "pretrained").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    missing = [p for p in shipped if p not in names]
    assert not missing, f"shipped model files left out of the wheel: {missing}"
    assert not any(n.startswith(("tests/", "chapters/", "runs/")) for n in names)
