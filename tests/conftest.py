import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTP_SHARED", REPO.parent / "shared"))


def need(path: Path) -> Path:
    """Return a path under ../shared; in CI a missing file fails the test, elsewhere it skips."""
    if not path.exists():
        msg = f"shared test data missing: {path}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return need(SHARED)


@pytest.fixture(scope="session")
def data_dir(shared) -> Path:
    return need(shared / "data")


@pytest.fixture(scope="session")
def fixtures_dir(shared) -> Path:
    return need(shared / "fixtures")


@pytest.fixture(scope="session")
def fixture_folder(fixtures_dir):
    """name -> ../shared/fixtures/<name>, through `need` (missing: a failure in CI, a skip elsewhere)."""
    return lambda name: need(fixtures_dir / name)


@pytest.fixture(scope="session")
def weights_dir(shared) -> Path:
    return need(shared / "weights")


@pytest.fixture
def one_thread():
    """Single-threaded torch for a test: small models run faster so on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
