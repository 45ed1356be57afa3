"""The settings object: environment fallbacks, validation, and what reaches Faust."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud.settings import Settings
from fraud.worker.app import _faust_app


def test_standby_replicas_come_from_the_environment_and_reach_faust(tmp_path: Path) -> None:
    settings = Settings.from_env({"FRAUD_STANDBY_REPLICAS": "0"})
    assert settings.standby_replicas == 0
    assert Settings.from_env({}).standby_replicas == 1  # Faust's own default
    app = _faust_app(settings.with_overrides(data_dir=tmp_path, web_port=None))
    assert app.conf.table_standby_replicas == 0
    app = _faust_app(Settings(data_dir=tmp_path, web_port=None, standby_replicas=2))
    assert app.conf.table_standby_replicas == 2


def test_a_negative_standby_count_is_refused() -> None:
    with pytest.raises(ValueError, match="standby replicas"):
        Settings(standby_replicas=-1)
