"""The typed config: file + environment overrides, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from hrnn_core.config import load_config
from hrnn_core.errors import ConfigError


def test_defaults_and_file_and_env(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[paths]\ndata_dir = "/x"\n[ingest]\nsession_gap_seconds = 600\n')
    cfg = load_config(f, environ={"HRNN__INGEST__MAX_ID_LENGTH": "64"})
    assert cfg.paths.data_dir == Path("/x")
    assert cfg.paths.warehouse_path == Path("/x/warehouse.duckdb")
    assert cfg.ingest.session_gap_seconds == 600.0
    assert cfg.ingest.max_id_length == 64


def test_unknown_key_is_an_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[ingest]\nsesion_gap_seconds = 600\n")
    with pytest.raises(ConfigError, match="sesion_gap_seconds"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="nope"):
        load_config(environ={"HRNN__NOPE__X": "1"})


def test_bad_value_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="max_id_length"):
        load_config(environ={"HRNN__INGEST__MAX_ID_LENGTH": "lots"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_config_is_frozen():
    cfg = load_config(environ={})
    with pytest.raises(Exception):
        cfg.ingest.chunk_rows = 1  # type: ignore[misc]


def test_a_retired_setting_is_an_error_naming_it(tmp_path):
    """Settings whose chosen value became the code's behaviour (config.RETIRED_FIELDS) are refused by name."""
    f = tmp_path / "c.toml"
    f.write_text("[model]\nhidden_size = 8\n[train]\nshuffle_ties = false\nexclude_seen = true\n")
    with pytest.raises(ConfigError, match=r"config train: \['exclude_seen', 'shuffle_ties'\] no longer exist"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="user_id_output"):
        load_config(environ={"HRNN__MODEL__USER_ID_OUTPUT": "true"})
