"""Test-wide setup: an isolated BentoML model store (set before anything imports bentoml)."""

from __future__ import annotations

import os
import tempfile

# Tests must never write the developer's model store (the Makefile points BENTOML_HOME into
# the project's data dir): every test session gets its own, removed with the temp dir.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="hrnn-test-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
