"""The run config: validation errors name the field and what is allowed; overrides work."""

import pytest

from selfimprove.pipeline.config import ConfigError, load_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["sample.n=8", "task.arithmetic.count=10", "verify.verifier=math"])
    assert cfg.sample.n == 8 and cfg.task.arithmetic.count == 10 and cfg.verify.verifier == "math"
    assert cfg.run_dir.as_posix() == "data/runs/builtin", "not make run's directory (configs/default.yaml)"
    assert load_config("configs/default.yaml").run_dir.as_posix() == "data/runs/default"
    # the measured recipe is the default (README): a higher learning rate, completions cut after the answer
    assert cfg.train.learning_rate == 2e-4 and cfg.export.trim_after_answer


def test_default_yaml_loads_and_names_the_run():
    cfg = load_config("configs/default.yaml")
    assert cfg.run.name == "default" and cfg.task.name == "arithmetic"


def test_unknown_field_names_field_and_allowed_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sample:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "sample.temprature" in str(e.value) and "temperature" in str(e.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["task.name=gsm9k"])
    msg = str(e.value)
    assert "task.name" in msg and "arithmetic" in msg and "gsm8k" in msg and "gsm9k" in msg


def test_out_of_range_value_is_reported():
    with pytest.raises(ConfigError, match=r"sample\.n"):
        load_config(None, ["sample.n=0"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["sample.n"])


def test_config_hash_changes_with_content_not_with_run_dir():
    a = load_config(None, ["run.dir=/tmp/a"])
    b = load_config(None, ["run.dir=/tmp/b"])
    c = load_config(None, ["sample.n=5"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_bare_on_and_off_mean_the_words_not_booleans(tmp_path):
    """YAML 1.1 reads `off` as false: the documented `per_request_seed: off` must still work."""
    p = tmp_path / "c.yaml"
    p.write_text("sample:\n  per_request_seed: off\n")
    assert load_config(p).sample.per_request_seed == "off"
    assert load_config(None, ["sample.per_request_seed=on"]).sample.per_request_seed == "on"
