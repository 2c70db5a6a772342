"""Test-wide setup: an isolated BentoML model store (set before anything imports bentoml)."""

from __future__ import annotations

import os
import tempfile

import pytest

# Tests must never write the developer's model store (the Makefile points BENTOML_HOME into
# the project's data dir): every test session gets its own, removed with the temp dir.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="hrnn-test-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread is as fast, and far faster when other jobs share the cores.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the
    previous setting is restored after the module.
    """
    import torch  # noqa: PLC0415 - only modules that use torch pay for the import

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
