"""``tunemv data check``: validate a dataset root (or a single object folder) and report every problem."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunemv.data.format import (
    SPLITS,
    Problem,
    inspect_object,
    is_object_dir,
    list_objects,
    read_split_file,
    split_files_problem,
)


@dataclass
class CheckReport:
    root: Path
    num_objects: int = 0
    num_views: int = 0
    problems: list[Problem] = field(default_factory=list)
    broken_objects: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.num_objects} objects, {self.num_views} views in {self.root}"
        count, broken = len(self.problems), len(self.broken_objects)
        return (f"FAILED: {count} problem{'s' if count != 1 else ''} in {broken} of {self.num_objects} "
                f"object{'s' if self.num_objects != 1 else ''} under {self.root}")


def check_dataset(root: str | Path, min_views: int = 1) -> CheckReport:
    """Check every object under ``root`` (or ``root`` itself, when it is one object folder)."""
    root = Path(root)
    report = CheckReport(root)
    if not root.is_dir():
        report.problems.append(Problem(str(root), "dataset root does not exist or is not a folder"))
        return report
    if is_object_dir(root):
        object_dirs = [root]
    else:
        object_dirs = [root / name for name in list_objects(root, "all")]
        report.problems += _split_problems(root, {d.name for d in object_dirs})
        report.problems += _manifest_problems(root, object_dirs)
        if not object_dirs:
            report.problems.append(Problem(str(root), "contains no object folders"))

    for directory in object_dirs:
        record, problems = inspect_object(directory, min_views=min_views, check_files=True)
        report.num_objects += 1
        report.num_views += record.num_views if record else 0
        if problems:
            report.problems += problems
            report.broken_objects.add(directory.name)
    return report


def _manifest_problems(root: Path, object_dirs: list[Path]) -> list[Problem]:
    """A procedural set (``procedural.json``, or objects with ``attributes.json``) that its generation did
    not finish: killed runs left sets without splits or manifest that otherwise checked OK."""
    manifest = root / "procedural.json"
    rerun = "rerun the same `tunemv data procedural` command to complete it"
    if manifest.is_file():
        try:
            recipe = json.loads(manifest.read_text())
        except ValueError as error:
            return [Problem(str(manifest), f"not valid JSON ({error})")]
        if recipe.get("complete") is False:
            return [Problem(str(manifest), f"the generation did not finish ({len(object_dirs)} of "
                                           f"{recipe.get('num_objects', '?')} objects written); {rerun}")]
        expected = recipe.get("num_objects")
        if isinstance(expected, int) and expected != len(object_dirs):
            return [Problem(str(manifest), f"lists {expected} objects, but {len(object_dirs)} are here")]
        return []
    procedural = [d for d in object_dirs if (d / "attributes.json").is_file()]
    if procedural and not any((root / f"{split}.txt").is_file() for split in SPLITS):
        return [Problem(str(root), f"{len(procedural)} procedural objects but no procedural.json, train.txt or "
                                   f"val.txt: an unfinished generation; {rerun}")]
    return []


def _split_problems(root: Path, object_ids: set[str]) -> list[Problem]:
    problems, listed = [], {}
    for split in SPLITS:
        path = root / f"{split}.txt"
        if not path.is_file():
            continue
        ids = read_split_file(path)
        listed[split] = set(ids)
        for object_id in sorted(set(ids) - object_ids):
            problems.append(Problem(str(path), f"lists {object_id!r}, which is not an object folder under {root}"))
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            problems.append(Problem(str(path), f"lists {duplicates} more than once"))
    unpaired = split_files_problem(root)
    if unpaired:
        problems.append(unpaired)
    overlap = sorted(listed.get("train", set()) & listed.get("val", set()))
    if overlap:
        problems.append(Problem(str(root / "val.txt"), f"shares objects with train.txt: {overlap[:5]}"))
    return problems
