"""Every code block of README.md, CONTRIBUTING.md and docs/*.md runs, on the shipped tiny models, or is checked.

- ``python`` blocks run with ``exec``, one namespace per page, in a temporary working folder whose
  ``models/``, ``configs/``, ``examples/`` and ``experiments/`` point at the repository's;
- shell blocks run line by line through ``tunemv.cli.main`` in-process (exit code 0), with heavy settings
  shrunk by the explicit tables below (``--steps 50`` runs 1 step), and inputs a page names but does not make
  (``prompts.txt``, ``ref.png``, ...) provided by ``PROVIDED``;
- ``yaml`` training configs print with ``tunemv fit --config ... --print_config``; ``toml`` blocks parse;
- a block marked ``<!-- doc-test: check-only (REASON) -->`` on the line before its fence is only checked:
  python compiles and its tunemv imports resolve; every tunemv command line parses with the real parser
  (``fit``/``validate``/``distill``: ``--print_config``), and the paths it names under configs/, models/,
  examples/ and experiments/ exist. ``<!-- doc-test: slow (REASON) -->`` is checked so by default and run
  for real under ``pytest -m slow``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
import yaml

from tunemv.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 220

LANGUAGES = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell",
             "console": "shell", "yaml": "yaml", "yml": "yaml", "toml": "toml"}
NOT_CODE = {"text", "plain"}  # diagrams and layouts
MARKER = re.compile(r"<!--\s*doc-test:\s*(?P<mode>[\w-]+)\s*(?:\((?P<reason>.*)\))?\s*-->")
MODES = ("check-only", "slow")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
LINKED_FOLDERS = ("models", "configs", "examples", "experiments", "benchmarks")  # the repository's, read only
CHECKED_PATH_PREFIXES = ("configs/", "models/", "examples/", "experiments/", "benchmarks/")
DOC_MODULE = "tunemv_doc_block"  # __name__ of the namespace python blocks run in

# --------------------------------------------------------------------------- what runs, and how small
# `tunemv <command>` flags whose value is replaced when a line sets it, and appended when it does not
# (None: only replaced). Everything else runs as written.
SHRINK: dict[tuple[str, ...], dict[str, str | None]] = {
    ("sample",): {"--steps": "1", "--num-views": "2", "--mesh-resolution": "32", "--turntable-frames": "2"},
    ("demo",): {"--steps": "1", "--num-views": "2", "--mesh-resolution": "32", "--objects": "2", "--max-steps": "1"},
    ("data", "procedural"): {"--objects": "2", "--resolution": None, "--workers": "1"},
    ("evaluate",): {"--grid": "32", "--mesh-grid": "32", "--mesh-samples": "2000"},
    # Lightning runs: one optimizer step, no logger, no sanity validation.
    ("fit",): {"--trainer.max_steps": "1", "--trainer.logger": "false", "--trainer.num_sanity_val_steps": "0",
               "--trainer.enable_progress_bar": "false", "--trainer.enable_model_summary": "false"},
    ("validate",): {"--trainer.logger": "false", "--trainer.enable_progress_bar": "false",
                    "--trainer.limit_val_batches": "1"},
}
MAX_RESOLUTION = 32  # --resolution above this runs at this
QUIET = {("sample",), ("data", "procedural"), ("evaluate",)}  # commands that take --quiet
NOT_WITH = {"--num-views": "--cameras"}  # not appended when the line has the other flag
# Python blocks: (pattern, replacement), applied to the source before it runs.
PYTHON_SHRINK = [
    (r"\bsteps=\d+", "steps=1"),
    (r"\bnum_inference_steps=\d+", "num_inference_steps=1"),
    (r"\bnum_views=\d+", "num_views=2"),
    (r"\bresolution=(?:128|256)\b", "resolution=32"),
    (r"\bturntable\(\d+\)", "turntable(2)"),
]
# Programs other than tunemv that blocks name: not run, for this reason.
SKIPPED = {
    "pip": "installs packages",
    "python -m venv": "creates a virtualenv",
    "python -m pip": "installs packages",
    "python -m pytest": "runs pytest (this test runs inside it)",
    "ruff": "lint; tests/test_packaging.py runs it",
    "ns-train": "nerfstudio, a separate tool",
    "wandb": "syncs a run to wandb.ai",
    "git": "version control",
    "apt-get": "installs system packages",
}


# --------------------------------------------------------------------------------------------- blocks
@dataclass
class Block:
    path: Path
    index: int  # 0-based among the file's fenced blocks
    line: int  # 1-based line of the opening fence
    info: str  # the fence's tag
    code: str
    mode: str = "run"  # "run", "check-only" or "slow"
    reason: str = ""

    @property
    def language(self) -> str | None:
        return LANGUAGES.get(self.info.lower())

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"


def parse_blocks(text: str, path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the doc-test marker on the line before its fence."""
    lines, blocks, number = text.splitlines(), [], 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body, end = [], number + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][indent:] if lines[end][:indent].strip() == "" else lines[end])
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{number + 1}: unclosed code fence")
        block = Block(path, len(blocks), number + 1, opening["info"], "\n".join(body) + "\n")
        marker = MARKER.fullmatch(lines[number - 1].strip()) if number else None
        if marker:
            block.mode, block.reason = marker["mode"], (marker["reason"] or "").strip()
        blocks.append(block)
        number = end + 1
    return blocks


def inventory_problems(block: Block) -> list[str]:
    """Why a block would slip through untested: an unknown tag, or a marker without a known mode and a reason."""
    problems = []
    if block.language is None and block.info.lower() not in NOT_CODE:
        problems.append(f"{block.where}: code block tagged {block.info!r}; tag it python, bash, yaml or toml "
                        f"(run by tests/test_docs.py), or text for a diagram")
    if block.mode != "run" and (block.mode not in MODES or not block.reason):
        problems.append(f"{block.where}: a marker needs one of {MODES} and a reason: "
                        "<!-- doc-test: check-only (why it cannot run on a CPU in seconds) -->")
    if block.mode != "run" and block.language is None:
        problems.append(f"{block.where}: a {block.info or 'untagged'} block is not code; drop its marker")
    return problems


ALL_BLOCKS = [block for path in DOC_FILES for block in parse_blocks(path.read_text(encoding="utf-8"), path)]
CODE_BLOCKS = [block for block in ALL_BLOCKS if block.language is not None]


def block_id(block: Block) -> str:
    return f"{block.path.relative_to(REPO)}#{block.index}@L{block.line}"


# ------------------------------------------------------------------------------------------ shell lines
def shell_commands(code: str) -> list[tuple[str, list[str]]]:
    """(source line, argv) of every command of a shell block: continuations joined, comments dropped,
    `a && b` split, a leading `.venv/bin/` and environment assignments stripped."""
    commands = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            argv = tokens[: tokens.index("&&")] if "&&" in tokens else tokens
            tokens = tokens[len(argv) + 1:]
            while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
                argv = argv[1:]
            if argv:
                argv[0] = argv[0].removeprefix(".venv/bin/")
                commands.append((line.strip(), argv))
    return commands


def program(argv: list[str]) -> str:
    """`tunemv`, `script` (python path/to/script.py) or a SKIPPED key."""
    name = argv[0].removesuffix("3") if argv[0] in ("python", "python3") else argv[0]
    if name == "tunemv":
        return "tunemv"
    if name == "python" and len(argv) > 2 and argv[1] == "-m":
        return f"python -m {argv[2]}"
    if name == "python" and len(argv) > 1 and argv[1].endswith(".py"):
        return "script"
    return name


def subcommand(args: list[str]) -> tuple[str, ...]:
    """The key of SHRINK that a tunemv argv (without `tunemv`) belongs to."""
    return tuple(args[:2]) if args[:1] in (["data"], ["foundation"]) else tuple(args[:1])


def flag_index(args: list[str], flag: str) -> int | None:
    for index, arg in enumerate(args):
        if arg == flag or arg.startswith(flag + "="):
            return index
    return None


def shrink(args: list[str]) -> list[str]:
    """A tunemv argv with SHRINK's values: replaced where the line sets them, appended where it does not."""
    args, command = list(args), subcommand(args)
    for flag, value in SHRINK.get(command, {}).items():
        index = flag_index(args, flag)
        if index is not None and "=" in args[index]:
            given = args[index].split("=", 1)[1]
            args[index] = f"{flag}={value or min(int(given), MAX_RESOLUTION)}"
        elif index is not None:
            given = args[index + 1]
            args[index + 1] = value or str(min(int(given), MAX_RESOLUTION))
        elif value is not None and flag_index(args, NOT_WITH.get(flag, "\0")) is None:
            args += [flag, value]
    if command in QUIET and "--quiet" not in args:
        args.append("--quiet")
    return args


def named_paths(args: list[str]) -> list[str]:
    values = [arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg for arg in args]
    return [value for value in values if value.removeprefix("./").startswith(CHECKED_PATH_PREFIXES)]


def check_paths(args: list[str], where: str) -> None:
    for path in named_paths(args):
        assert (REPO / path).exists(), f"{where}: names {path}, which is not in the repository"


def check_script(argv: list[str], where: str) -> None:
    """`python path/to/script.py --flag ...`: the script exists and defines every flag the line passes."""
    script = REPO / argv[1]
    assert argv[1].startswith(CHECKED_PATH_PREFIXES) and script.is_file(), f"{where}: no script {argv[1]}"
    source = script.read_text(encoding="utf-8")
    for flag in (arg.split("=", 1)[0] for arg in argv[2:] if arg.startswith("--")):
        assert f'"{flag}"' in source, f"{where}: {argv[1]} takes no {flag}"
    check_paths(argv[2:], where)


def check_tunemv(args: list[str], where: str) -> None:
    """Parse a tunemv argv with the real parser; fit/validate/distill print their resolved config."""
    check_paths(args, where)
    args = [arg for arg in args if arg != "--debug"]
    if args[:1] in (["fit"], ["validate"], ["distill"]):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main([*args, "--print_config"])
        assert code == 0, f"{where}: `tunemv {shlex.join(args)} --print_config` exited {code}"
        return
    try:
        build_parser().parse_args(args)
    except SystemExit as exit_:
        raise AssertionError(f"{where}: `tunemv {shlex.join(args)}` does not parse (exit {exit_.code})") from None


def run_tunemv(args: list[str], where: str) -> None:
    check_paths(args, where)
    ran = shrink(args)
    code = main(ran)
    assert code == 0, f"{where}: `tunemv {shlex.join(ran)}` exited {code}"


def shell_block(block_or_code, where: str, run: bool) -> list[str]:
    """Check (or run) every command of a shell block; returns what was skipped, with the reason."""
    code = block_or_code.code if isinstance(block_or_code, Block) else block_or_code
    skipped = []
    commands = shell_commands(code)
    assert commands, f"{where}: a shell block with no command"
    for line, argv in commands:
        kind = program(argv)
        if kind == "tunemv":
            (run_tunemv if run else check_tunemv)(argv[1:], f"{where}: {line}")
        elif kind == "script":
            check_script(argv, f"{where}: {line}")
        elif kind in SKIPPED:
            skipped.append(f"{shlex.join(argv)}: {SKIPPED[kind]}")
        else:
            raise AssertionError(f"{where}: {line}: `{kind}` is neither tunemv nor in SKIPPED (add it, with why)")
    assert not run or len(skipped) < len(commands), \
        f"{where}: runs nothing ({'; '.join(skipped)}); mark it <!-- doc-test: check-only (REASON) -->"
    return skipped


# ----------------------------------------------------------------------------------------- python code
def tunemv_imports(source: str) -> list[tuple[str, str | None]]:
    """(module, name or None) of every tunemv import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "tunemv"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tunemv" and not node.level:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def check_python(source: str, where: str) -> None:
    compile(source, where, "exec")
    for module_name, name in tunemv_imports(source):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise AssertionError(f"{where}: imports {module_name}, which does not import ({error})") from None
        if name is not None and name != "*":
            try:
                getattr(module, name)
            except AttributeError:
                raise AssertionError(f"{where}: {module_name} has no {name}") from None


def shrink_python(source: str) -> str:
    for pattern, replacement in PYTHON_SHRINK:
        source = re.sub(pattern, replacement, source)
    return source


def run_python(source: str, where: str, namespace: dict) -> None:
    check_python(source, where)
    exec(compile(shrink_python(source), where, "exec"), namespace)


# --------------------------------------------------------------------------------------- yaml and toml
def yaml_block(block: Block, workspace: Path | None, run: bool) -> None:
    config = yaml.safe_load(block.code)
    assert isinstance(config, dict), f"{block.where}: not a YAML mapping"
    if {"model", "data", "trainer"} & set(config):
        for key in ("model", "data", "trainer"):
            assert key in config, f"{block.where}: a training config without `{key}:`"
        if run:
            path = workspace / f"doc-config-{block.index}.yaml"
            path.write_text(block.code, encoding="utf-8")
            check_tunemv(["fit", "--config", str(path)], block.where)


def toml_block(block: Block) -> None:
    data = tomllib.loads(block.code)
    groups = data.get("project", {}).get("entry-points", {})
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("entry-points", {})
    for group in groups:
        assert group in ours, f"{block.where}: entry-point group {group!r} is not one tunemv reads ({list(ours)})"


# ----------------------------------------------------------------------------------------- workspaces
@dataclass
class Workspace:
    """One page's working folder and python namespace; its blocks run in order, each at most once."""

    root: Path
    namespace: dict = field(default_factory=lambda: {"__name__": DOC_MODULE})
    done: dict[int, str] = field(default_factory=dict)  # block index -> "ok" or what went wrong


# Inputs that pages name but do not make, put in every workspace (built by the `provided` fixture).
PROVIDED = {"prompts.txt": "two prompts, one a line", "ref.png": "a 32 px procedural chair view (RGBA)",
            "outputs/demo/chairs": "3 procedural chairs as tunemv demo renders them (8 views, 32 px, 1 held out)",
            "renders": "two NeRF-synthetic transforms.json folders (renders/lego and one more)"}


@pytest.fixture(scope="session")
def provided(tmp_path_factory):
    """PROVIDED, built once per session and copied into every workspace."""
    from tunemv import generate_procedural_dataset

    root = tmp_path_factory.mktemp("doc-inputs")
    chairs = root / "outputs/demo/chairs"  # what `tunemv demo` renders: 3 chairs (1 held out), 8 views, 32 px
    generate_procedural_dataset(chairs, num_objects=3, num_views=8, resolution=32, categories=["chair"], seed=0,
                                val_fraction=0.34, workers=1, progress=False)
    assert main(["data", "export-transforms", str(chairs), str(root / "renders")]) == 0
    first = sorted(p for p in (root / "renders").iterdir() if p.is_dir())[0]
    first.rename(root / "renders/lego")  # a NeRF-synthetic folder, as Blender writes one
    shutil.copy(chairs / "00000_chair/images/000.png", root / "ref.png")  # a reference image (RGBA)
    (root / "prompts.txt").write_text("a red chair\na blue mug\n", encoding="utf-8")
    assert {p.name for p in root.iterdir()} == {name.split("/")[0] for name in PROVIDED}
    assert all((root / name).exists() for name in PROVIDED)
    return root



@pytest.fixture(scope="session")
def workspaces(tmp_path_factory, provided):
    import torch

    registry = importlib.import_module("tunemv.sampling.registry")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: one thread is fastest
    made: dict[Path, Workspace] = {}

    def get(path: Path) -> Workspace:
        if path not in made:
            root = tmp_path_factory.mktemp(path.stem)
            for name in LINKED_FOLDERS:
                (root / name).symlink_to(REPO / name, target_is_directory=True)
            shutil.copytree(provided, root, dirs_exist_ok=True)
            made[path] = Workspace(root)
        return made[path]

    yield get
    torch.set_num_threads(threads)
    samplers = getattr(registry, "_SAMPLERS", {})
    for name, factory in list(samplers.items()):  # samplers a page registered in this process
        if getattr(factory, "__module__", None) == DOC_MODULE:
            del samplers[name]


def execute(block: Block, workspace: Workspace, run: bool) -> list[str]:
    """Run (or check) one block in its page's workspace; returns the skipped lines with their reasons."""
    where = block.where
    if block.language == "python" and run:
        run_python(block.code, where, workspace.namespace)
    elif block.language == "python":
        check_python(block.code, where)
    elif block.language == "shell":
        return shell_block(block, where, run)
    elif block.language == "yaml":
        yaml_block(block, workspace.root, run)
    elif block.language == "toml":
        toml_block(block)
    return []


def run_in_order(block: Block, workspace: Workspace, modes: tuple[str, ...]) -> list[str]:
    """Run the page's earlier blocks of ``modes`` first (once each), then this one."""
    skipped = []
    for earlier in (b for b in CODE_BLOCKS if b.path == block.path and b.index <= block.index):
        if earlier.mode not in modes and earlier is not block:
            continue
        state = workspace.done.get(earlier.index)
        if state == "ok":
            continue
        if state is not None:
            pytest.fail(f"{earlier.where} failed before this block: {state}")
        try:
            skipped += execute(earlier, workspace, run=True)
        except BaseException as error:
            workspace.done[earlier.index] = f"{type(error).__name__}: {error}"
            raise
        workspace.done[earlier.index] = "ok"
    return skipped


@pytest.fixture(scope="module", autouse=True)
def _sampler_registry_restored():
    """Pages register samplers (the plugin example) in this process; later test modules see the registry as
    it was."""
    from tunemv.sampling import registry

    saved, loaded = dict(registry._SAMPLERS), registry._plugins_loaded
    yield
    registry._SAMPLERS.clear()
    registry._SAMPLERS.update(saved)
    registry._plugins_loaded = loaded


@pytest.fixture
def in_workspace(workspaces, monkeypatch, library_logs_to_stderr):
    def enter(block: Block) -> Workspace:
        workspace = workspaces(block.path)
        monkeypatch.chdir(workspace.root)
        return workspace

    return enter


@pytest.mark.parametrize("block", CODE_BLOCKS, ids=block_id)
def test_block(block, in_workspace):
    """A plain block runs; a marked one is checked (a slow one also runs under -m slow)."""
    workspace = in_workspace(block)
    if block.mode == "run":
        skipped = run_in_order(block, workspace, modes=("run",))
    else:
        skipped = execute(block, workspace, run=False)
    for line in skipped:
        print(f"not run: {line}")


SLOW_BLOCKS = [block for block in CODE_BLOCKS if block.mode == "slow"]


@pytest.mark.slow
@pytest.mark.parametrize("block", SLOW_BLOCKS, ids=block_id)
def test_slow_block_runs(block, in_workspace):
    run_in_order(block, in_workspace(block), modes=("run",))


# ------------------------------------------------------------------------------------- the inventory
def test_every_block_is_code_that_runs_or_is_marked_with_a_reason():
    problems = [problem for block in ALL_BLOCKS for problem in inventory_problems(block)]
    assert not problems, "\n".join(problems)
    assert len(CODE_BLOCKS) > 20
    # Every marker sits right before a fence: one anywhere else marks nothing.
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if MARKER.fullmatch(line.strip()):
                assert number + 1 < len(lines) and FENCE.match(lines[number + 1]), \
                    f"{path.relative_to(REPO)}:{number + 1}: a doc-test marker not on the line before a fence"


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move sections to docs/"


def test_quick_start_setup_commands_are_check_only():
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = parse_blocks(section, REPO / "README.md")
    assert len(blocks) == 2 and all(block.mode == "check-only" for block in blocks)


# ------------------------------------------------------------------------------------------- the links
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str, keep_code_spans: bool = False) -> str:
    """The Markdown outside fenced blocks (and inline code spans, unless ``keep_code_spans``)."""
    lines, inside, fence = [], False, ""
    for line in text.splitlines():
        opening = FENCE.match(line)
        if opening and not inside:
            inside, fence = True, opening["fence"]
        elif inside and line.strip().startswith(fence):
            inside = False
        elif not inside:
            lines.append(line)
    return "\n".join(lines) if keep_code_spans else re.sub(r"`[^`\n]*`", "", "\n".join(lines))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*$", prose(text, keep_code_spans=True), flags=re.M)}


def broken_links(path: Path, text: str | None = None) -> list[str]:
    text = path.read_text(encoding="utf-8") if text is None else text
    problems = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.name}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{path.name}: {target}: no heading with that anchor in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_images_exist(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page_and_contributing():
    linked = {Path(target.partition("#")[0]) for target in LINK.findall(prose((REPO / "README.md").read_text()))}
    for page in [REPO / "CONTRIBUTING.md", *(REPO / "docs").glob("*.md")]:
        assert page.relative_to(REPO) in linked, f"README.md does not link {page.relative_to(REPO)}"


# Files a page names in inline code (`tests/test_app.py`, `configs/tiny.yaml`): they exist. Lab records keep
# the paths of their time.
NAMED_FILE = re.compile(r"`((?:[a-z_]+/|\.ci/)+[\w.-]+\.(?:py|yaml|md|json|png|sh|toml))(?:::\w+)?`")
RECORDS = {"results.md": "a dated record of measurements", "ddim-on-pixel-backbones.md": "a dated investigation"}


def missing_named_files(path: Path, text: str | None = None) -> list[str]:
    text = path.read_text(encoding="utf-8") if text is None else text
    return [f"{path.name}: `{name}` does not exist" for name in NAMED_FILE.findall(prose(text, keep_code_spans=True))
            if not any((base / name).exists() for base in (REPO, REPO / "configs"))]  # the configs table: configs/


@pytest.mark.parametrize("path", [p for p in DOC_FILES if p.name not in RECORDS], ids=lambda p: str(p.relative_to(REPO)))
def test_files_named_in_the_text_exist(path):
    problems = missing_named_files(path)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------- the checks can fail: broken snippets
def test_a_misspelled_import_is_caught():
    with pytest.raises(AssertionError, match="has no MultiviewPipelin"):
        check_python("from tunemv.sampling import MultiviewPipelin\n", "broken.md:1")
    with pytest.raises(AssertionError, match="does not import"):
        check_python("import tunemv.no_such_module\n", "broken.md:1")
    with pytest.raises(SyntaxError):
        check_python("pipe(\n", "broken.md:1")


def test_a_python_block_that_fails_when_run_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NameError):
        run_python("from tunemv import orbit\ncams = orbit(4)\ncams.project(points)\n", "broken.md:1",
                   {"__name__": DOC_MODULE})


def test_a_bad_command_line_is_caught(capsys):
    with pytest.raises(AssertionError, match="does not parse"):
        shell_block("tunemv sample --adapter models/demo-adapter --no-such-flag --out x\n", "broken.md:1", run=False)
    with pytest.raises(AssertionError, match="does not parse"):
        shell_block("tunemv data procedural --out x --categories spaceship\n", "broken.md:1", run=False)
    with pytest.raises(AssertionError, match="print_config"):
        shell_block("tunemv fit --config configs/tiny.yaml --model.learning_rat 3\n", "broken.md:1", run=False)
    with pytest.raises(AssertionError, match="not in the repository"):
        shell_block("tunemv fit --config configs/no_such.yaml\n", "broken.md:1", run=False)
    with pytest.raises(AssertionError, match="neither tunemv nor in SKIPPED"):
        shell_block("curl https://example.com | sh\n", "broken.md:1", run=False)
    with pytest.raises(AssertionError, match="takes no --no-such-flag"):
        shell_block("python experiments/reproduce.py --no-such-flag\n", "broken.md:1", run=False)


def test_a_command_that_fails_when_run_is_caught(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="exited 1"):
        shell_block("tunemv data check no/such/dataset\n", "broken.md:1", run=True)
    with pytest.raises(AssertionError, match="exited 2"):
        shell_block("tunemv sample --adapter no/such/adapter --prompt x --out o\n", "broken.md:1", run=True)


def test_unmarked_and_unknown_blocks_are_caught():
    text = ("```ruby\nputs 1\n```\n\n<!-- doc-test: check-only -->\n```bash\ntunemv demo\n```\n\n"
            "<!-- doc-test: sometimes (why not) -->\n```python\npass\n```\n\n```text\na diagram\n```\n")
    blocks = parse_blocks(text, REPO / "broken.md")
    assert [bool(inventory_problems(block)) for block in blocks] == [True, True, True, False]


def test_a_broken_link_is_caught():
    text = "[a page](docs/no-such-page.md), ![a figure](docs/images/none.png), [ok](docs/results.md), " \
           "[bad anchor](docs/sampling.md#no-such-section), `[code](not/a/link.md)`\n"
    problems = broken_links(REPO / "README.md", text)
    assert len(problems) == 3 and "no-such-page.md" in problems[0] and "no-such-section" in problems[2]


def test_a_stale_file_name_is_caught():
    problems = missing_named_files(REPO / "README.md", "see `tests/test_predict.py` and `docs/results.md`\n")
    assert problems == ["README.md: `tests/test_predict.py` does not exist"]


def test_shrinking_is_what_the_table_says():
    assert shrink(["sample", "--adapter", "a", "--steps", "50", "--out", "o"]) == [
        "sample", "--adapter", "a", "--steps", "1", "--out", "o", "--num-views", "2", "--mesh-resolution", "32",
        "--turntable-frames", "2", "--quiet"]
    assert "--num-views" not in shrink(["sample", "--cameras", "c.json", "--out", "o"])
    assert shrink(["data", "procedural", "--out", "d", "--objects", "200", "--resolution", "64"]) == [
        "data", "procedural", "--out", "d", "--objects", "2", "--resolution", "32", "--workers", "1", "--quiet"]
    assert shrink_python("pipe(x, steps=50, num_views=8).field.turntable(24)") == \
        "pipe(x, steps=1, num_views=2).field.turntable(2)"
    assert shell_commands("a=1 .venv/bin/tunemv demo && pip install x  # note\n") == [
        ("a=1 .venv/bin/tunemv demo && pip install x  # note", ["tunemv", "demo"]),
        ("a=1 .venv/bin/tunemv demo && pip install x  # note", ["pip", "install", "x"])]
