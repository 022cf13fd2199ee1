"""The pieces of benchmarks/medical_cv.py that decide what it scores, without training: the leave-one-case-out
folders, and the refusal of a fold run found in place that was trained otherwise or on the held-out case."""
import importlib.util
from pathlib import Path

import pytest
import yaml

from mtp.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "medical_segmentation" / "segresnet_brats2015.yaml"


@pytest.fixture(scope="module")
def cv():
    spec = importlib.util.spec_from_file_location("medical_cv_under_test", REPO / "benchmarks" / "medical_cv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(root, names):
    for name in names:
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "Flair.nii.gz").write_bytes(b"")
    return root


def test_each_fold_holds_out_one_training_case(cv, tmp_path):
    root = cases(tmp_path / "data", ["a", "b", "c"])
    folds = cv.make_folds(root, tmp_path / "work")
    assert [f.name for f in folds] == ["fold0", "fold1", "fold2"]
    for fold, held_out in zip(folds, "abc"):
        assert sorted(p.name for p in (fold / "test").iterdir()) == [held_out]
        assert sorted(p.name for p in (fold / "train").iterdir()) == sorted(set("abc") - {held_out})
        assert (fold / "test" / held_out).resolve() == (root / "train" / held_out).resolve()
    assert cv.make_folds(root, tmp_path / "work") == folds           # a second call reuses the links
    with pytest.raises(SystemExit, match="at least two"):
        cv.make_folds(cases(tmp_path / "one", ["a"]), tmp_path / "work1")


def test_a_fold_run_trained_otherwise_or_on_the_held_out_case_is_refused(cv, tmp_path):
    root = cases(tmp_path / "data", ["a", "b"])
    fold0, fold1 = cv.make_folds(root, tmp_path / "work")
    run = tmp_path / "work" / "fold0"
    run.mkdir()

    def trained(overrides, data_root):
        recipe = load_recipe(RECIPE, [f"data.root={data_root}", "output.name=elsewhere", *overrides])
        (run / "config.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))

    expected = load_recipe(RECIPE).to_dict()
    held_out = fold0 / "test" / "a"
    trained([], fold0)
    cv.check_reusable(run, expected, held_out)                      # the same training, another data path: fine
    trained(["data.kwargs.affine_prob=0.3"], fold0)
    with pytest.raises(SystemExit, match="another recipe or overrides .*data"):
        cv.check_reusable(run, expected, held_out)
    trained([], fold1)                                               # fold1 trains on a, which fold0 holds out
    with pytest.raises(SystemExit, match="trained on a"):
        cv.check_reusable(run, expected, held_out)
