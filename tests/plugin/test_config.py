import pytest

from plugin.config import load_settings, with_overrides
from rewriters.errors import ConfigError


def test_precedence_overrides_env_toml_defaults(tmp_path, monkeypatch):
    toml = tmp_path / "u.toml"
    toml.write_text('workspace = "from-toml"\n[train]\nsteps = 77\nbatch_size = 3\n')
    monkeypatch.setenv("UDRL_TRAIN__BATCH_SIZE", "5")
    s = load_settings(toml)
    assert str(s.workspace) == "from-toml"  # TOML beats default
    assert s.train.steps == 77 and s.train.batch_size == 5  # env beats TOML
    assert s.train.lr == 2e-3  # default
    s2 = with_overrides(s, {"train.steps": 9, "teacher.kind": "openai", "workspace": None})
    assert s2.train.steps == 9 and s2.teacher.kind == "openai" and s2.train.batch_size == 5
    assert str(s2.workspace) == "from-toml"


def test_config_file_from_environment(tmp_path, monkeypatch):
    toml = tmp_path / "u.toml"
    toml.write_text("builtin_queries = 12\n")
    monkeypatch.setenv("UDRL_CONFIG", str(toml))
    assert load_settings().builtin_queries == 12


@pytest.mark.parametrize(
    "text, message",
    [("[train\n", "not valid TOML"), ("[train]\nsteps = -1\n", "setting train.steps"),
     ("[teacher]\nkind = 'gpt5'\n", "setting teacher.kind"), ("nonsense = 1\n", "nonsense")],
)
def test_bad_settings_are_config_errors(tmp_path, text, message):
    toml = tmp_path / "u.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(toml)


def test_secrets_do_not_print(monkeypatch):
    monkeypatch.setenv("UDRL_TEACHER__API_KEY", "sk-secret")
    s = load_settings()
    assert "sk-secret" not in repr(s) and s.teacher.api_key.get_secret_value() == "sk-secret"


def test_setting_choices_are_the_registries_names():
    """The settings list the plug-in names as typed choices; they must be the registries'."""
    from typing import get_args

    from indexers.template_backends import TEMPLATE_BACKENDS
    from plugin.config import IndexSettings, PipelineSettings
    from rewriters.engines import ENGINE_CHOICES

    assert get_args(PipelineSettings.model_fields["engine"].annotation) == ENGINE_CHOICES
    assert set(get_args(IndexSettings.model_fields["template_backend"].annotation)) == \
        set(TEMPLATE_BACKENDS)
