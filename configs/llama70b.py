"""RLEF on Llama 3.1 70B Instruct (arXiv 2410.02089, App. A.1): the 8B recipe, 8,000 updates.

  python -m rlef_jax.train --config configs/llama70b.py ...
"""

import importlib.util
import os


def _llama8b():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama8b.py")
  spec = importlib.util.spec_from_file_location("rlef_configs_llama8b", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  c = _llama8b().get_config()  # same hyperparameters as 8B (paper App. A.1)

  c.model.preset = "llama3.1-70b"  # Llama 3.1 70B Instruct (paper §3)
  c.model.init_checkpoint = "checkpoints/llama3.1-70b-instruct"  # RL from Instruct (paper §3); HF or orbax dir
  c.tokenizer.path = "checkpoints/llama3.1-70b-instruct"  # the Instruct model's tokenizer (paper §2.1)

  c.mesh.data = 1  # our choice: no pure data parallelism
  c.mesh.fsdp = -1  # our choice: params/optimizer state sharded over all remaining devices (8 on 64 GPUs, 128 on the paper's 1024)
  c.mesh.tensor = 8  # our choice: heads/MLP split within an 8-GPU host (8 kv heads; paper: 1024 training H100s)
  # The 8B recipe's memory choices carry over (one episode per data-parallel shard per gradient and
  # scoring pass, bf16 reference, prompts prefilled 512 tokens at a time).
  c.sampling.max_concurrent_episodes = 16  # [U] our choice: 16 episodes per host at once (a 70B KV cache of
  # 8192 slots is 335 MB per episode per GPU at tensor = 8); on 1024 GPUs each host runs its 8 at once

  c.train.num_updates = 8000  # paper App. A.1 (70B)
  return c
