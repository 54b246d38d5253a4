from pathlib import Path

import pytest

# Offline copies of public data sit beside the repo root, for developers and CI alike.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA} is missing: tests expect ../shared/data beside the repo root")
    return SHARED_DATA
