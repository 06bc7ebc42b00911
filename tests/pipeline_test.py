"""The Grain pipeline: determinism, per-epoch reshuffle, process sharding, exact resume from a checkpoint."""
import json

import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

import rlef_jax  # noqa: F401  (registers the builders)
from rlef_jax.data import assets, pipeline, records

HUMANEVAL_PLUS = assets.benchmark_file(assets.HUMANEVAL_PLUS)  # shipped: rlef_jax/assets/benchmarks
SIZE = 401  # Grain's index_shuffle costs ~130/SIZE ms per element: tiny sources are slow


@pytest.fixture(scope="module")
def source():
    """Stored examples as the TFDS data source returns them (bytes values)."""
    out = []
    for i in range(SIZE):
        example = records.encode_example("synthetic", f"p{i}", {"name": f"p{i}", "index": i})
        out.append({k: v.encode() for k, v in example.items()})
    return out


def _names(elements):
    return [e["name"] for e in elements]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_elements_are_decoded_dicts(source):
    first = next(pipeline.make_iterator(source, seed=0, shuffle=False, process_index=0, process_count=1))
    assert first == {"name": "p0", "source": "synthetic", "problem": {"name": "p0", "index": 0}}


def test_seeded_shuffle_is_deterministic_and_reshuffled_per_epoch(source):
    def run(seed):
        it = pipeline.make_iterator(source, seed=seed, shuffle=True, num_epochs=3, process_index=0,
                                    process_count=1)
        return _names(list(it))

    a, b, c = run(7), run(7), run(8)
    assert a == b and a != c
    epochs = [a[i * SIZE:(i + 1) * SIZE] for i in range(3)]
    assert len(a) == 3 * SIZE
    assert all(sorted(e) == sorted(f"p{i}" for i in range(SIZE)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    unshuffled = pipeline.make_iterator(source, seed=7, shuffle=False, num_epochs=2, process_index=0,
                                        process_count=1)
    assert _names(unshuffled) == [f"p{i}" for i in range(SIZE)] * 2


@pytest.mark.parametrize("process_count", [1, 2, 3, 5])
def test_process_shards_are_disjoint_and_cover(source, process_count):
    shards = [
        _names(pipeline.make_iterator(source, seed=1, shuffle=True, num_epochs=1, process_index=p,
                                      process_count=process_count))
        for p in range(process_count)
    ]
    everything = [name for shard in shards for name in shard]
    assert sorted(everything) == sorted(f"p{i}" for i in range(SIZE))
    assert len(everything) == len(set(everything))


def test_default_shard_is_this_jax_process(source):
    it = pipeline.make_iterator(source, seed=3, shuffle=True, num_epochs=1)
    explicit = pipeline.make_iterator(source, seed=3, shuffle=True, num_epochs=1, process_index=0,
                                      process_count=1)
    assert _names(it) == _names(explicit)


@pytest.mark.parametrize("batch_size", [None, 64])
def test_resume_matches_uninterrupted_run(source, batch_size):
    def make():
        return pipeline.make_iterator(source, seed=5, shuffle=True, batch_size=batch_size, process_index=0,
                                      process_count=1)

    # Unbatched: stop exactly at the first and second epoch boundary; batched: before and after the batch
    # that straddles the first boundary (6 * 64 < 401 < 7 * 64).
    total = 2 * SIZE + 20 if batch_size is None else 15
    reference = _take(make(), total)
    stops = [0, 1, SIZE - 1, SIZE, SIZE + 1, 2 * SIZE] if batch_size is None else [0, 6, 7, 13]
    for stop in stops:
        first = make()
        _take(first, stop)
        state = json.loads(json.dumps(first.get_state()))
        resumed = make()
        resumed.set_state(state)
        assert _take(resumed, total - stop) == reference[stop:], stop
    if batch_size:
        assert [len(b) for b in reference] == [batch_size] * total


def test_state_round_trips_through_the_training_checkpoint(source, tmp_path):
    from rlef_jax import checkpoint

    def make():
        return pipeline.make_iterator(source, seed=9, shuffle=True, batch_size=100, process_index=0,
                                      process_count=1)

    reference = _take(make(), 12)
    it = make()
    _take(it, 5)  # 500 elements: past the first epoch
    state = {"step": jnp.asarray(5, jnp.int32)}
    with checkpoint.Checkpointer(tmp_path / "ckpt", async_save=False) as ckpt:
        ckpt.save(5, state, extra={"data": it.get_state()})
        _, extra = ckpt.restore(None, checkpoint.abstract_like(state))
    resumed = make()
    resumed.set_state(extra["data"])
    assert _take(resumed, 7) == reference[5:]


def test_over_a_tfds_data_source(tmp_path):
    tfds.builder("humaneval_plus", data_dir=str(tmp_path),
                 source_file=str(HUMANEVAL_PLUS)).download_and_prepare()
    data_source = tfds.data_source("humaneval_plus", data_dir=str(tmp_path), split="test")
    batches = list(pipeline.make_iterator(data_source, seed=0, shuffle=False, num_epochs=1, batch_size=50,
                                          process_index=1, process_count=2))
    assert [len(b) for b in batches] == [50, 32]
    assert [e["name"] for b in batches for e in b] == [f"HumanEval/{i}" for i in range(1, 164, 2)]
    assert batches[0][0]["problem"]["entry_point"] == "separate_paren_groups"


def test_bad_arguments_name_the_problem(source):
    with pytest.raises(ValueError, match="process_index 2 is not below process_count 2"):
        pipeline.make_iterator(source, seed=0, shuffle=True, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="fewer than the 500 processes"):
        pipeline.make_iterator(source, seed=0, shuffle=True, process_index=0, process_count=500)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        pipeline.make_iterator(source, seed=0, shuffle=True, batch_size=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="seed must be an int"):
        pipeline.make_iterator(source, seed=1.5, shuffle=True, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="num_epochs must be an int >= 1"):
        pipeline.make_iterator(source, seed=0, shuffle=True, num_epochs=0, process_index=0, process_count=1)
