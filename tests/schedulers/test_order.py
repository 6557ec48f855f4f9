"""Every scheduler's ``order`` (diffusers' attribute: img2img starts at grid position t_start * order) is diffusers'."""

import pytest

from sdlearn.pipelines.ddpm import SCHEDULER_CLASSES

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", sorted(SCHEDULER_CLASSES))
def test_order_is_diffusers(name):
    assert SCHEDULER_CLASSES[name].order == getattr(diffusers, name).order == 1
