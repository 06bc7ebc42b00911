"""`import rlef_jax` registers the builders with TFDS without importing TFDS itself."""
import subprocess
import sys


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_is_lazy_and_registers_on_tfds_import():
    out = _run(
        "import sys, rlef_jax\n"
        "print('tensorflow_datasets' in sys.modules)\n"
        "import tensorflow_datasets as tfds\n"
        "print(sorted(n for n in tfds.list_builders(with_community_datasets=False)\n"
        "             if n in ('code_contests', 'humaneval_plus', 'mbpp_plus', 'synthetic')))\n"
        "import importlib.resources\n"
        "print(importlib.resources.files('tensorflow_datasets').is_dir())\n"
    )
    assert out.splitlines() == [
        "False", "['code_contests', 'humaneval_plus', 'mbpp_plus', 'synthetic']", "True"]


def test_registers_when_tfds_was_imported_first():
    out = _run(
        "import tensorflow_datasets as tfds, rlef_jax\n"
        "print(tfds.builder_cls('mbpp_plus').__module__)\n"
    )
    assert out.strip() == "rlef_jax.data.evalplus"


def test_a_builder_module_imported_first_is_no_circular_import():
    # Importing a builder module imports TFDS, whose import hook registers the builders: the module
    # still running its body must not be imported again (it was: ImportError, partially initialised).
    for module in ("rlef_jax.data.synthetic", "rlef_jax.data.code_contests", "rlef_jax.data.evalplus"):
        out = _run(
            f"import {module}\n"
            "import tensorflow_datasets as tfds\n"
            "print(sorted(n for n in tfds.list_builders(with_community_datasets=False)\n"
            "             if n in ('code_contests', 'humaneval_plus', 'mbpp_plus', 'synthetic')))\n"
        )
        assert out.strip() == "['code_contests', 'humaneval_plus', 'mbpp_plus', 'synthetic']", module
