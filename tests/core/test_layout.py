"""The shape of the code, enforced: imports point one way, inference never loads the training stack or another
domain's heavy dependencies, every package folder ships in the wheel, every recipe validates."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"mtp": "mtp", "backbones": "mtp.backbones", "kernels": "mtp.kernels", "pipelines": "mtp.pipelines",
         "datasets": "mtp.datasets"}
# folder -> packages its modules must not import
FORBIDDEN = {
    "mtp": ("mtp.backbones", "mtp.kernels", "mtp.pipelines", "mtp.datasets"),
    "kernels": ("mtp.backbones", "mtp.pipelines", "mtp.datasets"),
    "datasets": ("mtp.pipelines", "mtp.backbones"),
    "backbones": ("mtp.pipelines", "mtp.datasets"),
}
HEAVY = ("lightning", "pytorch_lightning", "mtp.engine", "monai", "torchaudio", "diffusers", "open3d", "aeon")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_one_way(folder):
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}"
           for path in sorted((REPO / folder).rglob("*.py"))
           for line, name in imported_modules(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder])]
    assert not bad, "\n".join(bad)


def test_only_the_engine_imports_lightning():
    bad = [f"{path.relative_to(REPO)}:{line}" for folder in ROOTS for path in sorted((REPO / folder).rglob("*.py"))
           if path.name != "engine.py" for line, name in imported_modules(path)
           if name.split(".")[0] in ("lightning", "pytorch_lightning")]
    assert not bad, bad


def test_every_task_builds_for_inference_without_training_stack_or_other_domains():
    """For every registered task: the default pipeline builds, and nothing heavy of training or of another
    domain was imported (each task in its own interpreter)."""
    from mtp.registry import TASKS

    script = ("import sys, json, warnings; warnings.simplefilter('ignore'); from mtp import Pipeline; "
              "p = Pipeline(sys.argv[1], pretrained=False, device='cpu'); "
              f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    for task in TASKS.names():
        result = subprocess.run([sys.executable, "-c", script, task], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{task}: {result.stderr[-2000:]}"
        loaded = json.loads(result.stdout.strip().splitlines()[-1])
        own_extra = {"medical_segmentation": "monai", "speech_recognition": "torchaudio",
                     "speech_separation": "torchaudio", "video_generation": "diffusers",
                     "point_cloud_classification": "open3d", "point_cloud_segmentation": "open3d",
                     "ts_classification": "aeon"}.get(task)
        assert [m for m in loaded if m != own_extra] == [], f"{task} imported {loaded}"


def test_import_mtp_is_light():
    code = ("import time, sys; t = time.perf_counter(); import mtp; dt = time.perf_counter() - t; "
            "print(dt, 'torch' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    assert min(float(seconds) for seconds, _ in runs) < 0.3 and all(torch == "False" for _, torch in runs)


def test_every_package_folder_is_a_package_and_ships_in_the_wheel(tmp_path):
    folders = []
    for root, package in ROOTS.items():
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.parent.relative_to(REPO / root)
            if "__pycache__" in rel.parts:
                continue
            assert (path.parent / "__init__.py").is_file(), f"{path.parent} holds modules but no __init__.py"
            folders.append(".".join((package, *rel.parts)))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    shipped = {str(Path(n).parent).replace("/", ".") for n in zipfile.ZipFile(wheel).namelist()
               if n.endswith("__init__.py")}
    missing = sorted(set(folders) - shipped)
    assert not missing, f"packages missing from the wheel: {missing}"


def test_every_recipe_validates_with_its_dataset_and_backbone_kwargs():
    from mtp.config import check_kwargs, load_recipe, recipe_files
    from mtp.registry import BACKBONES, DATASETS, TASKS

    recipes = [p.resolve() for p in recipe_files() if REPO / "recipes" in p.resolve().parents]
    assert len(recipes) >= 20
    for path in recipes:
        recipe = load_recipe(path)
        assert path.parent.name in ("forecasting", "image_restoration", "ts_classification", "speech_separation",
                                    "speech_recognition", "medical_segmentation", "point_cloud",
                                    "video_generation"), \
            f"{path}: recipes live in recipes/<domain>/"
        TASKS.get(recipe.task)
        backbone = BACKBONES.get(recipe.backbone.name or TASKS.get(recipe.task).load().default_backbone)
        assert recipe.task in backbone.tasks, path
        check_kwargs(backbone.load(), recipe.backbone.kwargs, "backbone.kwargs", str(path))
        TASKS.get(recipe.task).load().validate_options(recipe.options)
        for split in {"train", "val", "test", *recipe.data.splits}:
            source = recipe.data.for_split(split)
            if source.name:
                entry = DATASETS.get(source.name)
                assert recipe.task in entry.get("tasks"), f"{path}: {source.name} is not a {recipe.task} dataset"
                check_kwargs(entry.load(), {**entry.kwargs, **source.kwargs}, f"data.splits.{split}.kwargs", str(path))


def test_every_task_declares_a_complete_contract():
    """Options that validate at their defaults, metrics registered for the task, evaluation hooks, a monitor."""
    from mtp.pipeline import TaskPipeline
    from mtp.registry import METRICS, TASKS

    for entry in TASKS.entries():
        cls = entry.load()
        cls.validate_options({})
        assert cls.metrics, f"{entry.name}: no metrics"
        for name in cls.metrics:
            assert entry.name in METRICS.get(name).get("tasks"), f"{entry.name}: metric {name} is not registered for it"
        for hook in ("evaluation_dataset", "evaluation_step", "preprocess", "forward", "save", "training_loss"):
            assert getattr(cls, hook) is not getattr(TaskPipeline, hook), f"{entry.name} does not implement {hook}"
        assert cls.monitor[1] in ("min", "max") and cls.input_suffixes


def test_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from mtp.config import RecipeError, load_recipe

    monkeypatch.chdir(tmp_path)
    assert load_recipe("ett_dlinear").output.name == "ett_dlinear"
    assert load_recipe("recipes/ett_itransformer.yaml").task == "forecasting"   # the design's own example
    with pytest.raises(RecipeError, match="Did you mean 'ett_dlinear'"):
        load_recipe("ett_dlinaer")


def test_readme_evaluate_example_exists(data_dir):
    import re

    paths = re.findall(r'pipe\.evaluate\("([^"]+)"\)', (REPO / "README.md").read_text())
    assert paths and all((data_dir / p).is_dir() for p in paths), paths
