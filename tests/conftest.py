"""Test-wide set-up: 8 forced CPU devices (before JAX starts) so sharding tests see a real mesh."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402  (after the environment above is set)


@pytest.fixture(scope="module")
def synthetic_tok():
  """The synthetic family's chat tokenizer (rlef_jax/assets/synthetic_tokenizer)."""
  from rlef_jax import synthetic_tokenizer
  from rlef_jax.tokenizer import ChatTokenizer
  return ChatTokenizer.load(synthetic_tokenizer.DEFAULT_DIR)


@pytest.fixture(scope="module")
def synthetic_pool():
  """A 2-worker execution pool (default sandbox) shared by a test module."""
  from rlef_jax.execution import ExecutionPool
  with ExecutionPool(workers=2) as p:
    yield p
