"""The folders import one way (README, Development): a part may import its own modules and the parts below
it, never a part above it or beside it. Imports are read from every module's source (function-local ones
too), with the package-dir mapping of pyproject.toml."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
# Bottom to top: (part, the modules it is made of); parts on one row are peers and may not import each other.
# The cellar, tunemv/ (errors, atomic writes, warning filters, the lazy API), sits under everything; the roof,
# cli/ (the command, tunemv sample, the demo, the app) and __main__, on top, where no part may import it.
LAYERS = (
    (("base", ("tunemv", "tunemv.errors", "tunemv.atomic", "tunemv._lazy", "tunemv.warning_filters")),),
    (("geometry", ("tunemv.geometry",)),),
    (("data", ("tunemv.data",)), ("neus", ("tunemv.neus",))),
    (("adapters", ("tunemv.adapters",)),),
    (("sampling", ("tunemv.sampling",)),),
    (("training", ("tunemv.training",)), ("tinyif", ("tunemv.tinyif",))),
    (("evaluation", ("tunemv.evaluation",)),),
    (("cli", ("tunemv.cli", "tunemv.__main__")),),
)
PART = {prefix: part for row in LAYERS for part, prefixes in row for prefix in prefixes}
LEVEL = {part: level for level, row in enumerate(LAYERS) for part, _ in row}


def package_dirs() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in config["package-dir"].items()}


def part_of(module: str) -> str:
    """The layered part a dotted module name belongs to (by the longest module prefix that names it)."""
    for prefix in sorted(PART, key=len, reverse=True):
        if module == prefix or (module.startswith(prefix + ".") and prefix != "tunemv"):
            return PART[prefix]
    raise AssertionError(f"{module}: in no layer of tests/test_layering.py (add its part to LAYERS)")


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every tunemv import in ``source``, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            if base == "tunemv":  # from tunemv import x: the submodule x when it is one, else the root
                found += [(node.lineno, f"tunemv.{alias.name}") if any(
                    f"tunemv.{alias.name}" == p or p.startswith(f"tunemv.{alias.name}.") for p in PART)
                    else (node.lineno, "tunemv") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "tunemv" or name.startswith("tunemv.")]


def violations(module: str, source: str, where: str) -> list[str]:
    own = part_of(module)
    problems = []
    for line, target in imported_modules(source, module):
        other = part_of(target)
        if other != own and (LEVEL[other] > LEVEL[own] or LEVEL[other] == LEVEL[own]):
            kind = "beside" if LEVEL[other] == LEVEL[own] else "above"
            problems.append(f"{where}:{line}: {own}/ imports {target}, which is {kind} it")
    return problems


def modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in package_dirs().items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found.append((name, path))
    return found


def test_every_import_runs_down_the_layers():
    problems = [problem for name, path in modules()
                for problem in violations(name, path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not problems, "\n".join(problems)


def test_every_folder_is_in_a_layer():
    for name, _ in modules():
        part_of(name)


def test_no_part_imports_the_roof():
    """cli/ is only ever entered from the command line: a library user's import never pulls in argparse
    handlers, the demo or Gradio."""
    roof = [name for name, _ in modules() if part_of(name) == "cli"]
    assert "tunemv.cli.sample" in roof and "tunemv.cli.app" in roof
    problems = [f"{path.relative_to(REPO)}:{line}: imports {target}" for name, path in modules() if part_of(name) != "cli"
                for line, target in imported_modules(path.read_text(encoding="utf-8"), name) if part_of(target) == "cli"]
    assert not problems, "\n".join(problems)


def test_the_cellar_holds_only_what_every_part_imports():
    """tunemv/ is the cellar: its modules import no part of tunemv but each other."""
    cellar = [(name, path) for name, path in modules() if path.parent.name == "tunemv" and name != "tunemv.__main__"]
    assert {name for name, _ in cellar} >= {"tunemv", "tunemv.errors", "tunemv.atomic", "tunemv.warning_filters"}
    for name, path in cellar:
        assert part_of(name) == "base", f"{path.relative_to(REPO)}: in tunemv/ but not in the cellar's layer"
        for line, target in imported_modules(path.read_text(encoding="utf-8"), name):
            assert part_of(target) == "base", f"{path.relative_to(REPO)}:{line}: the cellar imports {target}"


def test_the_check_catches_an_upward_import():
    assert violations("tunemv.evaluation.evaluate", "from tunemv.cli.sample import read_prompts\n", "e.py")
    bad = "from tunemv.sampling import MultiviewPipeline\n"
    assert violations("tunemv.adapters.denoiser", bad, "adapters/denoiser.py") == [
        "adapters/denoiser.py:1: adapters/ imports tunemv.sampling, which is above it"]
    local = "def f():\n    from tunemv.training.export import export_adapter\n"
    assert violations("tunemv.sampling.pipeline", local, "p.py")  # function-local imports count
    assert violations("tunemv.training.system", "import tunemv.tinyif.model\n", "s.py")  # peers too
    assert not violations("tunemv.sampling.pipeline", "from tunemv.adapters.formats import read_checkpoint\n", "p")
    assert not violations("tunemv.sampling.denoising_loop", "from .score import MultiviewScore\n", "j")


def test_tunemv_sample_calls_only_down_the_layers(tmp_path):
    """Following ``tunemv sample`` as it runs: every call from one tunemv module into another goes down the
    layers or stays in its folder (none climbs back to a folder it has left), and the parsed arguments never
    leave cli/. Both paths: one process, and the data engine (``--filter``, one device, in this process)."""
    import argparse
    import sys

    from sampling_fixtures import adapter_pipeline, save_adapter, save_backbones

    from tunemv.cli import main

    adapter = save_adapter(adapter_pipeline(save_backbones(tmp_path / "backbones")["if"]), tmp_path / "adapter")
    climbs, leaks, parts_seen = set(), set(), []

    def part(frame) -> str | None:
        name = frame.f_globals.get("__name__", "") if frame is not None else ""
        return part_of(name) if name == "tunemv" or name.startswith("tunemv.") else None

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = part(frame)
        if callee is None:
            return
        if not parts_seen or parts_seen[-1] != callee:
            parts_seen.append(callee)
        caller = part(frame.f_back)
        if caller is not None and LEVEL[callee] > LEVEL[caller]:
            climbs.add(f"{caller} -> {callee} ({frame.f_globals['__name__']}.{frame.f_code.co_name})")
        if callee != "cli" and any(isinstance(value, argparse.Namespace) for value in frame.f_locals.values()):
            leaks.add(f"{frame.f_globals['__name__']}.{frame.f_code.co_name}")

    common = ["sample", "--adapter", str(adapter), "--prompt", "a red chair", "--num-views", "2", "--steps", "2",
              "--turntable-frames", "2", "--quiet"]
    sys.setprofile(profile)
    try:
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
        assert main([*common, "--out", str(tmp_path / "engine"), "--filter", "0.0"]) == 0
    finally:
        sys.setprofile(None)
    assert {"cli", "sampling", "adapters", "neus", "geometry", "data", "evaluation"} <= set(parts_seen)
    assert not climbs, sorted(climbs)
    assert not leaks, sorted(leaks)
