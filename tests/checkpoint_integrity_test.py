"""Checkpoint integrity (issue 14): the sha256 manifest written with each checkpoint, and restores
that refuse a corrupted, truncated or incomplete checkpoint by name, offering the previous one."""

import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlef_jax import checkpoint, errors


def _state(step):
  keys = jax.random.split(jax.random.key(step), 2)
  return {"w": jax.random.normal(keys[0], (64, 32)), "b": jax.random.normal(keys[1], (32,)),
          "step": jnp.int32(step), "rng": jax.random.key(step)}


def _save(root, steps, **kwargs):
  with checkpoint.Checkpointer(root, max_to_keep=None, **kwargs) as ckpt:
    for step in steps:
      ckpt.save(step, _state(step), extra={"position": step})
    ckpt.wait()


def _restore(root, step=None, **kwargs):
  with checkpoint.Checkpointer(root, **kwargs) as ckpt:
    return ckpt.restore(step, checkpoint.abstract_like(_state(0)))


def _largest_data_file(step_dir):
  files = [p for p in pathlib.Path(step_dir).rglob("*") if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def _flip_middle(path, n=64):
  data = bytearray(path.read_bytes())
  mid = len(data) // 2 - n // 2
  data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
  path.write_bytes(bytes(data))


def _rel(path, step_dir):
  return os.path.relpath(path, step_dir)


@pytest.fixture
def two_steps(tmp_path):
  root = tmp_path / "ckpt"
  _save(root, [4, 6])
  return root


def test_manifest_lists_every_data_file(two_steps):
  step_dir = two_steps / "6"
  manifest = json.loads((step_dir / checkpoint.MANIFEST).read_text())
  files = manifest["files"]
  on_disk = {_rel(p, step_dir) for p in step_dir.rglob("*") if p.is_file()}
  assert set(files) == on_disk - {checkpoint.MANIFEST, "_CHECKPOINT_METADATA", "commit_success.txt"}
  data = [f for f in files if "/d/" in f]
  assert any(f.startswith("state/ocdbt.process_0/d/") for f in data)
  for rel, entry in files.items():
    assert entry["size"] == (step_dir / rel).stat().st_size
    assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
  assert not list(step_dir.rglob(checkpoint.MANIFEST + ".tmp"))
  assert not list((step_dir / "state").rglob(checkpoint.MANIFEST))  # one per step, not per item


def test_clean_checkpoint_restores_bitwise_equal(two_steps):
  restored, extra = _restore(two_steps)
  expected = _state(6)
  assert extra == {"position": 6}
  for key in ("w", "b", "step"):
    np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(expected[key]))
  np.testing.assert_array_equal(jax.random.key_data(restored["rng"]),
                                jax.random.key_data(expected["rng"]))


def test_flipped_bytes_in_the_largest_data_file_are_refused_by_name(two_steps):
  target = _largest_data_file(two_steps / "6")
  _flip_middle(target)
  with pytest.raises(errors.InputError) as e:
    _restore(two_steps)
  message = str(e.value)
  assert f"checkpoint {two_steps / '6'} is corrupt: {_rel(target, two_steps / '6')}: checksum mismatch" in message
  assert f"the previous checkpoint, step 4, verifies: delete {two_steps / '6'} to resume from it" in message
  # Without verification the corruption goes through unnoticed (what issue 14 reported).
  restored, _ = _restore(two_steps, verify=False)
  assert restored["w"].shape == (64, 32)
  # The previous step restores as offered.
  older, extra = _restore(two_steps, 4)
  assert extra == {"position": 4}
  np.testing.assert_array_equal(np.asarray(older["w"]), np.asarray(_state(4)["w"]))


def test_truncated_file_is_refused(two_steps):
  target = _largest_data_file(two_steps / "6")
  size = target.stat().st_size
  with open(target, "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(errors.InputError,
                     match=rf"{re.escape(_rel(target, two_steps / '6'))}: size {size // 2} bytes, "
                           rf"expected {size}; the previous checkpoint, step 4, verifies"):
    _restore(two_steps)


def test_deleted_file_is_refused(two_steps):
  target = two_steps / "6" / "state" / "_METADATA"
  target.unlink()
  with pytest.raises(errors.InputError, match=r"corrupt: state/_METADATA: missing; the previous "
                                              r"checkpoint, step 4, verifies"):
    _restore(two_steps)


def test_deleted_manifest_is_refused_when_older_steps_have_one(two_steps):
  (two_steps / "6" / checkpoint.MANIFEST).unlink()
  with pytest.raises(errors.InputError, match=rf"corrupt: {checkpoint.MANIFEST}: missing; the "
                                              r"previous checkpoint, step 4, verifies"):
    _restore(two_steps)


def test_previous_step_is_offered_only_if_it_verifies(tmp_path):
  root = tmp_path / "ckpt"
  _save(root, [2, 4, 6])
  _flip_middle(_largest_data_file(root / "6"))
  _flip_middle(_largest_data_file(root / "4"))
  with pytest.raises(errors.InputError,
                     match=rf"the previous checkpoint, step 2, verifies: delete {re.escape(str(root / '4'))} "
                           rf"{re.escape(str(root / '6'))} to resume from it"):
    _restore(root)
  # A corrupt older step, asked for explicitly, is refused too and the one before it offered.
  with pytest.raises(errors.InputError, match=r"checkpoint .*/4 is corrupt: .*step 2, verifies: "
                                              r"restore that step instead"):
    _restore(root, 4)
  _flip_middle(_largest_data_file(root / "2"))
  with pytest.raises(errors.InputError, match=r"no older checkpoint verifies"):
    _restore(root)


def test_checkpoints_without_manifests_restore_with_a_warning(two_steps, capsys):
  for step in (4, 6):
    (two_steps / str(step) / checkpoint.MANIFEST).unlink()
  restored, _ = _restore(two_steps)
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(_state(6)["w"]))
  assert "has no rlef_manifest.json" in capsys.readouterr().err


def test_synchronous_saves_write_the_manifest_too(tmp_path):
  _save(tmp_path / "ckpt", [1], async_save=False)
  assert (tmp_path / "ckpt" / "1" / checkpoint.MANIFEST).is_file()


def test_params_directory_manifest(tmp_path):
  params = {"w": jnp.arange(12.0).reshape(3, 4)}
  checkpoint.save_params(tmp_path / "p", params, metadata={"a": 1})
  files = json.loads((tmp_path / "p" / checkpoint.MANIFEST).read_text())["files"]
  assert any(f.startswith("params/") for f in files) and "metadata/metadata" in files
  restored, _ = checkpoint.restore_params(tmp_path / "p")
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(params["w"]))
  _flip_middle(_largest_data_file(tmp_path / "p"))
  with pytest.raises(errors.InputError, match=rf"params directory {re.escape(str(tmp_path / 'p'))} "
                                              r"is corrupt: params/.*: checksum mismatch"):
    checkpoint.restore_params(tmp_path / "p")


def test_a_save_killed_before_its_rename_leaves_the_previous_step_to_resume_from(two_steps):
  """A SIGKILL after the manifest is written but before orbax renames the temporary directory: the
  step does not exist for orbax, the run resumes from the previous one and can save the step again."""
  os.rename(two_steps / "6", two_steps / "6.orbax-checkpoint-tmp")
  with checkpoint.Checkpointer(two_steps, max_to_keep=None) as ckpt:
    assert ckpt.latest_step() == 4
    restored, extra = ckpt.restore(None, checkpoint.abstract_like(_state(0)))
    assert extra == {"position": 4}
    ckpt.save(6, _state(6), extra={"position": 6})
    ckpt.wait()
  assert (two_steps / "6" / checkpoint.MANIFEST).is_file()
  assert _restore(two_steps)[1] == {"position": 6}


# -- Object-store directories (issue 14 item 5), through the GCS double (tests/gcs_double.py): the
# objects live as files under gcs.root, so corruption is injected there. --------------------------

def _bucket(gcs, name):
  """(the gs:// URL, the local files behind it) of a fresh prefix."""
  return f"gs://rlef-test/{name}", pathlib.Path(gcs.root) / "rlef-test" / name


def test_gs_checkpoints_commit_with_their_manifest_restore_and_refuse_corruption(gcs):
  url, local = _bucket(gcs, "ckpt-a")
  _save(url, [4, 6])
  assert gcs.unknown == []
  step_dir = local / "6"
  on_disk = {_rel(p, step_dir) for p in step_dir.rglob("*") if p.is_file()}
  assert "commit_success.txt" in on_disk and not list(local.glob("*orbax-checkpoint-tmp*"))
  files = json.loads((step_dir / checkpoint.MANIFEST).read_text())["files"]
  assert set(files) == on_disk - {checkpoint.MANIFEST, "_CHECKPOINT_METADATA", "commit_success.txt"}
  assert any(f.startswith("state/ocdbt.process_0/d/") for f in files)

  restored, extra = _restore(url)
  assert extra == {"position": 6}
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(_state(6)["w"]))
  w = checkpoint.Checkpointer(url).restore_part(6, "w", checkpoint.abstract_like(_state(0)["w"]))
  np.testing.assert_array_equal(np.asarray(w), np.asarray(_state(6)["w"]))

  target = _largest_data_file(step_dir)
  _flip_middle(target)
  with pytest.raises(errors.InputError) as e:
    _restore(url)
  assert (f"checkpoint {url}/6 is corrupt: {_rel(target, step_dir)}: checksum mismatch" in str(e.value)
          and f"the previous checkpoint, step 4, verifies: delete {url}/6 to resume from it" in str(e.value))
  assert _restore(url, 4)[1] == {"position": 4}


def test_gs_a_save_killed_before_its_commit_file_leaves_the_previous_step(gcs):
  """On an object store a step is committed by `commit_success.txt`, written after the manifest: a
  step without it (the writer killed first) is not listed, and the run resumes from the one before."""
  url, local = _bucket(gcs, "ckpt-b")
  _save(url, [4, 6])
  (local / "6" / "commit_success.txt").unlink()
  with checkpoint.Checkpointer(url, max_to_keep=None) as ckpt:
    assert ckpt.latest_step() == 4
    assert ckpt.restore(None, checkpoint.abstract_like(_state(0)))[1] == {"position": 4}
    ckpt.save(6, _state(6), extra={"position": 6})  # the resumed run reaches step 6 again
    ckpt.wait()
  assert _restore(url)[1] == {"position": 6}


def test_gs_params_directory(gcs):
  url, local = _bucket(gcs, "params-a")
  params = {"w": jnp.arange(12.0).reshape(3, 4)}
  checkpoint.save_params(url, params, metadata={"a": 1})
  assert (local / checkpoint.MANIFEST).is_file() and (local / "commit_success.txt").is_file()
  restored, metadata = checkpoint.restore_params(url)
  assert metadata == {"a": 1}
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(params["w"]))
  with pytest.raises(FileExistsError, match=f"save_params: {url} already exists"):
    checkpoint.save_params(url, params, metadata={})
  _flip_middle(_largest_data_file(local))
  with pytest.raises(errors.InputError, match=rf"params directory {re.escape(url)} is corrupt: params/.*: "
                                              r"checksum mismatch"):
    checkpoint.restore_params(url)


def test_restore_part_reads_one_field_bitwise_and_verifies_first(two_steps):
  """`restore_part`: what an evaluation restores (the policy alone, not the whole train state)."""
  abstract = checkpoint.abstract_like(_state(0)["w"])
  w = checkpoint.Checkpointer(two_steps).restore_part(None, "w", abstract)
  np.testing.assert_array_equal(np.asarray(w), np.asarray(_state(6)["w"]))
  assert w.sharding == abstract.sharding
  w4 = checkpoint.Checkpointer(two_steps).restore_part(4, "w", abstract)
  np.testing.assert_array_equal(np.asarray(w4), np.asarray(_state(4)["w"]))
  with pytest.raises(errors.InputError, match=r"its state has no 'nope' \(it holds \['b', 'rng', 'step', 'w'\]\)"):
    checkpoint.Checkpointer(two_steps).restore_part(6, "nope", abstract)
  with pytest.raises(errors.InputError, match=r"its 'w' differs from the model's: missing \[\"\['x'\]\"\]"):
    checkpoint.Checkpointer(two_steps).restore_part(6, "w", {"x": abstract})
  _flip_middle(_largest_data_file(two_steps / "6"))
  with pytest.raises(errors.InputError, match=rf"checkpoint {re.escape(str(two_steps / '6'))} is corrupt"):
    checkpoint.Checkpointer(two_steps).restore_part(6, "w", abstract)
