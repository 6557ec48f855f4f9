"""The package's house rules: the import rule between rooms, module sizes, and the grader's reference table."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sdlearn"
MAX_LINES = 500  # "a few hundred lines each" (the house style); the grader was split to keep to it


def _lint_imports(config: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (it comes with the test extra: pip install -e '.[test]')")
    return subprocess.run([exe, "--no-cache", "--no-logo", str(config)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_imports_flow_one_way_through_the_rooms():
    """pyproject.toml's layers contract: a module imports only from rooms below its own (function-level imports too)."""
    result = _lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_a_wrong_way_import(tmp_path):
    """The same layers turned upside down must break: the linter really reads sdlearn's imports."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = config["contracts"][0]["layers"][::-1]
    upside_down = tmp_path / "upside_down.toml"
    upside_down.write_text('[tool.importlinter]\nroot_package = "sdlearn"\n\n[[tool.importlinter.contracts]]\n'
                           'name = "upside down"\ntype = "layers"\nlayers = [\n'
                           + "".join(f'    "{layer}",\n' for layer in layers) + "]\n")
    result = _lint_imports(upside_down)
    assert result.returncode != 0
    assert "sdlearn.pipelines is not allowed to import sdlearn.models" in result.stdout


def test_every_room_is_in_the_contract():
    """Each folder (and top-level module) of the package sits in a layer, so none escapes the rule."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    named = {name.strip() for layer in config["contracts"][0]["layers"] for name in layer.split("|")}
    rooms = {f"sdlearn.{p.name}" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    rooms |= {f"sdlearn.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert rooms == named, (sorted(rooms - named), sorted(named - rooms))


def test_no_module_is_over_about_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules by concern: {long}"


def test_every_reference_the_grader_blocks_exists():
    """A stale "module:function" path in REFERENCES or BLOCKED_CALLABLES would be skipped silently during grading, and
    a student calling the library would score full points: every path must import and name a function or method."""
    from sdlearn.course.grader.references import BLOCKED_CALLABLES, REFERENCES

    paths = sorted({p for refs in [*REFERENCES.values(), *BLOCKED_CALLABLES.values()] for p in refs})
    assert paths
    for path in paths:
        module_name, _, qualname = path.partition(":")
        owner = importlib.import_module(module_name)
        for part in qualname.split("."):
            assert hasattr(owner, part), f"{path}: {module_name} has no {qualname}"
            owner = getattr(owner, part)
        assert callable(owner), path


def test_the_public_face():
    """The main classes and loaders import from the top of the package, as diffusers' do."""
    import sdlearn

    for name in ("UNet2DModel", "AutoencoderKL", "DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                 "DPMSolverMultistepScheduler", "DDPMPipeline", "LatentDiffusionPipeline", "load_digits", "load_shapes"):
        assert hasattr(sdlearn, name), name
    assert sdlearn.UNet2DModel.__module__ == "sdlearn.models.unet_2d"


def test_tests_mirror_the_package():
    """Each room of the package has its tests in the folder of the same name."""
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms <= {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
