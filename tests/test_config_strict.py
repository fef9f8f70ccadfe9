"""No silent coercions in a run config: each is an error naming the field."""

import pytest

from selfimprove.pipeline.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("override", ["sample.n=true", "sample.temperature=false", "dedup.max_per_problem=true"])
def test_true_or_false_for_a_number_is_refused(override):
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["sample.temperature=inf", "sample.temperature=.inf", "sample.top_p=nan",
                                      "train.learning_rate=.nan"])
def test_infinity_and_nan_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config(None, [override])


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    path = write(tmp_path, "sample:\n  n: 4\n  temperature: 0.8\n  n: 8\n")
    with pytest.raises(ConfigError, match=r"'n' appears twice.*line 2"):
        load_config(path)
    path = write(tmp_path, "sample:\n  n: 4\nsample:\n  n: 8\n")
    with pytest.raises(ConfigError, match="'sample' appears twice"):
        load_config(path)


def test_plain_values_still_load(tmp_path):
    cfg = load_config(write(tmp_path, "sample:\n  n: 8\n  temperature: 1\ndedup:\n  paths: false\n"), ["sample.top_p=0.9"])
    assert (cfg.sample.n, cfg.sample.temperature, cfg.sample.top_p, cfg.dedup.paths) == (8, 1.0, 0.9, False)
