"""Grain input pipeline over a problem data source (paper §3: problems are sampled for each PPO batch).

    source --[process_index::process_count]--> shard --shuffle(seed)--> repeat(num_epochs)
           --decode--> {"name", "source", "problem": dict} --batch--> list[dict]

* Sharding by `jax.process_index()`: each process reads a fixed, disjoint stride of the source, and the
  shards together cover it.
* Shuffling is a deterministic function of `seed` and is redrawn every epoch (Grain's per-epoch reseed),
  so two runs with the same seed see the same order.
* The iterator is a Grain `DatasetIterator`: `get_state()` is a small JSON-able dict that goes into the
  training checkpoint (e.g. `rlef_jax.checkpoint.Checkpointer.save(..., extra={"data": state})`) and
  `set_state(state)` on a freshly made iterator resumes exactly where the saved one stopped, epoch
  boundaries included (a lost or replayed data position silently changes a resumed run).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain

from rlef_jax.data import records


def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"make_iterator: {name} must be an int >= {minimum}, got {value!r}.")
    return value


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    _check_int("process_count", process_count, minimum=1)
    _check_int("process_index", process_index, minimum=0)
    if process_index >= process_count:
        raise ValueError(
            f"make_iterator: process_index {process_index} is not below process_count {process_count}."
        )
    return process_index, process_count


def make_dataset(
    data_source: Sequence[Any],
    *,
    seed: int,
    shuffle: bool,
    num_epochs: int | None = None,
    batch_size: int | None = None,
    drop_remainder: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """The pipeline as a `grain.MapDataset` (see the module docstring); `make_iterator` iterates it.

    `data_source` is any random-access sequence of stored examples, e.g.
    `tfds.data_source("code_contests", data_dir=..., split="train")`. `num_epochs=None` repeats forever.
    With `batch_size`, elements are lists of that many decoded examples (batches run across epoch
    boundaries; with a finite `num_epochs` the last one may be short unless `drop_remainder`).
    """
    _check_int("seed", seed, minimum=0)
    if num_epochs is not None:
        _check_int("num_epochs", num_epochs, minimum=1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, minimum=1)
    process_index, process_count = _process_shard(process_index, process_count)
    size = len(data_source)
    if size < process_count:
        raise ValueError(
            f"make_iterator: the data source has {size} examples, fewer than the {process_count} processes "
            "that each need a non-empty shard; use a larger split."
        )
    dataset = grain.MapDataset.source(data_source)[process_index::process_count]
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs).map(records.decode_example)
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
    return dataset


def make_iterator(
    data_source: Sequence[Any],
    *,
    seed: int,
    shuffle: bool,
    num_epochs: int | None = None,
    batch_size: int | None = None,
    drop_remainder: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 0,
) -> grain.DatasetIterator:
    """An iterator over the pipeline, with `get_state()` / `set_state()` for checkpointing.

    `read_threads=0` reads in the calling thread: an RL step needs only a batch of problems, and Grain's
    default 16 prefetch threads cost seconds to start and restart on 2 cores. Raise it for remote storage.
    """
    _check_int("read_threads", read_threads, minimum=0)
    dataset = make_dataset(
        data_source, seed=seed, shuffle=shuffle, num_epochs=num_epochs, batch_size=batch_size,
        drop_remainder=drop_remainder, process_index=process_index, process_count=process_count,
    )
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(8 * read_threads, 1))
    return iter(dataset.to_iter_dataset(options))
