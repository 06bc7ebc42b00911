"""`synthetic`: the project's synthetic task family (`rlef_jax.synthetic`) as a TFDS dataset.

Records are in the CodeContests schema (docs/DESIGN.md "Data records") and are produced by
`rlef_jax.synthetic.generate_problems(num_problems, seed)`; each split has its own size and fixed seed
(builder config), so a split is the same set of problems on every machine. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from rlef_jax.data import base, records


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Split sizes and generator seeds of one synthetic dataset (distinct seeds keep splits apart)."""

    sizes: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 20_000, "valid": 500, "test": 500}
    )
    seeds: dict[str, int] = dataclasses.field(default_factory=lambda: {"train": 0, "valid": 1, "test": 2})

    def __post_init__(self):
        if set(self.sizes) != set(self.seeds):
            raise ValueError(
                f"SyntheticConfig {self.name!r}: sizes has splits {sorted(self.sizes)} but seeds has "
                f"{sorted(self.seeds)}; give both for the same splits."
            )
        bad = {k: v for k, v in self.sizes.items() if not isinstance(v, int) or v <= 0}
        if bad:
            raise ValueError(f"SyntheticConfig {self.name!r}: split sizes must be positive ints, got {bad}.")


class Synthetic(base.ProblemBuilder):
    """Synthetic CodeContests-like problems from rlef_jax.synthetic, train/valid/test."""

    name = "synthetic"
    SOURCE = "synthetic"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", description="train 20000 / valid 500 / test 500, seeds 0/1/2"),
    ]

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self.builder_config.sizes}

    def _generate_examples(self, split: str):
        from rlef_jax import synthetic

        config = self.builder_config
        problems = synthetic.generate_problems(config.sizes[split], config.seeds[split])
        if len(problems) != config.sizes[split]:
            raise RuntimeError(
                f"rlef_jax.synthetic.generate_problems returned {len(problems)} problems for the "
                f"{split} split, asked for {config.sizes[split]}."
            )
        names = set()
        for i, problem in enumerate(problems):
            record = records.validate_contest_record(problem, where=f"synthetic {split} problem {i}")
            if record["name"] in names:
                raise RuntimeError(f"synthetic {split}: duplicate problem name {record['name']!r}.")
            names.add(record["name"])
            yield i, records.encode_example(self.SOURCE, record["name"], record)
