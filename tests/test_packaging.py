"""Install paths, the CLI entry points, and the README/CI contract."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tunemv.cli import main

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("geometry", "data", "neus", "adapters", "sampling", "training", "tinyif", "evaluation", "cli")


def readme_quick_start() -> list[str]:
    section = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = readme_quick_start()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    main_job, tests = commands
    assert "tunemv" in main_job and "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()
    assert "pip install torch==2.13.0" in main_job and "pip install torch==2.13.0" in tests


def test_editable_install_maps_folders_to_subpackages():
    import tunemv
    for name in SUBPACKAGES:
        module = __import__(f"tunemv.{name}", fromlist=["_"])
        assert Path(module.__file__).parent == REPO / name
    assert tunemv.Cameras.__module__ == "tunemv.geometry.cameras"


def test_built_wheel_contains_and_imports_every_subpackage(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("tunemv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in SUBPACKAGES:
        assert f"tunemv/{name}/__init__.py" in names
    assert "tunemv/data/format.py" in names and "tunemv/geometry/cameras.py" in names
    assert not any(n.startswith(("tests/", "data/", "neus/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import tunemv.data.format, tunemv.geometry.cameras, tunemv.adapters, tunemv.sampling, tunemv.cli; "
            "print(tunemv.data.format.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith(str(site))


def test_import_is_cheap_and_runs_nothing():
    code = ("import sys, tunemv, tunemv.cli, tunemv.data, tunemv.neus; "
            "print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"] and out.stderr == ""


def test_help_imports_no_torch():
    """`tunemv --help` and each command's --help build the whole parser: they took 3.5-5 s when the data
    commands' category list imported torch through data/procedural (issue 19)."""
    code = ("import sys\nfrom tunemv.cli import main\n"
            "for argv in (['--help'], ['data', 'procedural', '--help'], ['sample', '--help'], ['evaluate', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "False"


def test_every_imported_third_party_package_is_declared():
    """Modules the library imports (not the tests) are dependencies, by their distribution names."""
    declared = (REPO / "pyproject.toml").read_text().lower()
    for distribution in ("pyyaml", "sentencepiece", "protobuf", "accelerate"):
        assert f'"{distribution}' in declared, distribution


def test_the_shipped_tokenizer_names_a_class_transformers_4_and_5_both_have():
    import json

    config = json.loads((REPO / "models/tiny-if/tokenizer/tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in config


def test_python_dash_m_and_console_script_agree():
    via_module = subprocess.run([sys.executable, "-m", "tunemv", "data", "--help"], capture_output=True, text=True)
    script = Path(sys.executable).with_name("tunemv")
    via_script = subprocess.run([str(script), "data", "--help"], capture_output=True, text=True)
    assert via_module.returncode == via_script.returncode == 0
    for command in ("check", "import-transforms", "procedural"):
        assert command in via_module.stdout
    assert via_module.stdout.replace("__main__.py", "tunemv") == via_script.stdout


def test_cli_end_to_end_generate_then_check(tmp_path, capsys):
    root = tmp_path / "demo"
    args = ["data", "procedural", "--out", str(root), "--objects", "3", "--views", "4", "--resolution", "16",
            "--categories", "vase", "torus", "--seed", "1", "--quiet"]
    assert main(args) == 0
    assert main(["data", "check", str(root), "--min-views", "4"]) == 0
    assert "OK: 3 objects, 12 views" in capsys.readouterr().out
    assert main(args) == 2  # refuses to overwrite silently
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "procedural", "--out", "x", "--categories", "spaceship"]])
def test_cli_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(ruff), "check", "--no-cache", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_every_public_name_resolves():
    import tunemv
    import tunemv.data
    import tunemv.neus

    for module in (tunemv, tunemv.data, tunemv.neus):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
    with pytest.raises(AttributeError):
        tunemv.NotAThing  # noqa: B018


def test_configs_keep_data_and_outputs_out_of_the_source_folders():
    """A config's dataset and run folders sit under datasets/ or outputs/, which .gitignore covers (data/ is
    the tunemv.data source folder); models/ holds the shipped models they start from."""
    import yaml

    ignored = (REPO / ".gitignore").read_text().split()
    assert "datasets/" in ignored and "outputs/" in ignored
    keys = ("root", "reference_root", "cache_dir", "latent_cache_dir", "default_root_dir", "dirpath")

    def paths(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in keys and isinstance(value, str):
                    yield key, value
                yield from paths(value)
        elif isinstance(node, list):
            for item in node:
                yield from paths(item)

    found = 0
    for config in sorted((REPO / "configs").rglob("*.yaml")):
        for key, value in paths(yaml.safe_load(config.read_text()) or {}):
            found += 1
            assert Path(value).parts[0] in ("datasets", "outputs", "models"), f"{config.name}: {key}: {value}"
    assert found > 20
