"""Shared pytest fixtures: real data locations and tiny synthetic volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_HUMERUS = REPO.parent / "shared" / "data" / "totalseg-humerus"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def slicerio_data() -> Path:
    """Folder of the real chest CT and segmentation shipped by slicerio."""
    import slicerio
    return Path(slicerio.__file__).parent / "data"


@pytest.fixture
def shared_humerus() -> Path:
    """../shared/data/totalseg-humerus (real CT + TotalSegmentator output); skip if absent."""
    if not (SHARED_HUMERUS / "ct.nii.gz").exists():
        pytest.skip(f"real TotalSegmentator humerus data not found at {SHARED_HUMERUS} "
                    f"(it sits beside the repository in the shared/ folder)")
    return SHARED_HUMERUS


def ellipsoid(shape=(24, 28, 32), radii=(8, 9, 11), centre=None) -> np.ndarray:
    """A uint8 ellipsoid mask, a handy tiny test object."""
    zz, yy, xx = np.indices(shape, dtype=float)
    c = [s / 2 - 0.5 for s in shape] if centre is None else centre
    r = ((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((xx - c[2]) / radii[2]) ** 2
    return (r <= 1.0).astype(np.uint8)


@pytest.fixture
def ellipsoid_mask():
    return ellipsoid


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is far faster than many on shared cores. The previous
    setting is restored after the module. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
