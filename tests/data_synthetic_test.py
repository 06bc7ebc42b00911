"""The synthetic builder: splits of rlef_jax.synthetic.generate_problems with fixed sizes and seeds."""
import json

import pytest
import tensorflow_datasets as tfds

import rlef_jax  # noqa: F401  (registers the builders)
from rlef_jax import synthetic
from rlef_jax.data import builders, records


def test_default_config_is_the_documented_one():
    config = builders.Synthetic.BUILDER_CONFIGS[0]
    assert config.sizes == {"train": 20_000, "valid": 500, "test": 500}
    assert len(set(config.seeds.values())) == 3


def test_small_config_builds_the_generator_output(tmp_path):
    config = builders.SyntheticConfig(
        name="small", sizes={"train": 6, "valid": 3, "test": 2}, seeds={"train": 10, "valid": 11, "test": 12})
    builders.Synthetic(config=config, data_dir=str(tmp_path)).download_and_prepare()
    sources = tfds.data_source("synthetic/small", data_dir=str(tmp_path))
    names = {}
    for split, size in config.sizes.items():
        expected = synthetic.generate_problems(size, config.seeds[split])
        got = [records.decode_example(sources[split][i]) for i in range(len(sources[split]))]
        assert [g["problem"] for g in got] == json.loads(json.dumps(expected))
        assert all(g["source"] == "synthetic" for g in got)
        names[split] = {g["name"] for g in got}
    assert not (names["train"] & names["valid"]) and not (names["train"] & names["test"])


def test_config_errors():
    with pytest.raises(ValueError, match="sizes has splits"):
        builders.SyntheticConfig(name="x", sizes={"train": 1}, seeds={"train": 0, "test": 1})
    with pytest.raises(ValueError, match="positive ints"):
        builders.SyntheticConfig(name="x", sizes={"train": 0}, seeds={"train": 0})
