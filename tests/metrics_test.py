"""Tests for rlef_jax.metrics: the event files are read back with an independent TFRecord reader."""

import glob
import io
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from rlef_jax import metrics


def _crc32c(data: bytes) -> int:
  """Bitwise CRC-32C (Castagnoli), written out here so the check does not reuse the writer's code."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = _crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path):
  """Parses a TFRecord file of `Event` protos, checking both CRCs of every record."""
  events = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert length_crc == _masked_crc(header)
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert payload_crc == _masked_crc(payload)
    events.append(event_pb2.Event.FromString(payload))
    pos += 16 + length
  return events


def _tensorboard_scalars(logdir):
  """{tag: [(step, value), ...]} as TensorBoard shows it, applying its purge-on-restart rule."""
  series = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in _read_events(path):
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        series = {tag: [(s, v) for s, v in points if s < event.step]
                  for tag, points in series.items()}
      for value in event.summary.value:
        series.setdefault(value.tag, []).append((event.step, value.simple_value))
  return series


def _step_metrics(step):
  rng = np.random.default_rng(step)
  return {
      "reward/mean": jnp.float32(rng.normal()),
      "loss": np.float64(rng.normal()),
      "episodes": np.int32(step * 3),
      "kl": float(rng.normal()),
      "done": jnp.asarray(step % 2 == 0),
  }


def _expected_python(step):
  return {k: metrics.to_scalar(k, v) for k, v in _step_metrics(step).items()}


def test_jsonl_and_tensorboard_hold_exact_values(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), total_steps=4, enabled=True,
                             stream=io.StringIO()) as writer:
    for step in range(1, 5):
      writer.write(step, _step_metrics(step))

  lines = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [line["step"] for line in lines] == [1, 2, 3, 4]
  for line in lines:
    expected = _step_metrics(line["step"])
    assert line["reward/mean"] == float(np.float32(expected["reward/mean"]))
    assert line["loss"] == float(expected["loss"])
    assert line["episodes"] == int(expected["episodes"]) and isinstance(line["episodes"], int)
    assert line["kl"] == expected["kl"]
    assert line["done"] == int(line["step"] % 2 == 0)

  series = _tensorboard_scalars(str(tmp_path / "tensorboard"))
  assert set(series) == {"reward/mean", "loss", "episodes", "kl", "done"}
  for tag, points in series.items():
    assert [step for step, _ in points] == [1, 2, 3, 4]
    for step, value in points:
      assert value == np.float32(_expected_python(step)[tag])


def test_resume_drops_later_steps_and_matches_uninterrupted_run(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  with metrics.MetricsWriter(str(straight), total_steps=6, enabled=True,
                             stream=io.StringIO()) as writer:
    for step in range(1, 7):
      writer.write(step, _step_metrics(step))

  with metrics.MetricsWriter(str(resumed), total_steps=6, enabled=True,
                             stream=io.StringIO()) as writer:
    for step in range(1, 6):
      writer.write(step, {k: v * 100 if step > 3 else v for k, v in _step_metrics(step).items()})
  with open(resumed / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "loss": 1.2')  # A crash in the middle of a line.
  with metrics.MetricsWriter(str(resumed), total_steps=6, enabled=True, resume_step=3,
                             stream=io.StringIO()) as writer:
    for step in range(4, 7):
      writer.write(step, _step_metrics(step))

  assert (resumed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
  assert (_tensorboard_scalars(str(resumed / "tensorboard"))
          == _tensorboard_scalars(str(straight / "tensorboard")))


def test_fresh_run_in_old_workdir_starts_a_new_log(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), total_steps=3, enabled=True,
                             stream=io.StringIO()) as writer:
    writer.write(1, {"a": 1.0})
    writer.write(2, {"a": 2.0})
  with metrics.MetricsWriter(str(tmp_path), total_steps=3, enabled=True,
                             stream=io.StringIO()) as writer:
    writer.write(1, {"a": 5.0})
  assert metrics.read_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 1, "a": 5.0}]


def test_corrupt_jsonl_line_is_an_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2 .*fresh workdir"):
    metrics.MetricsWriter(str(tmp_path), total_steps=3, enabled=True, resume_step=1)


def test_plain_console_lines_when_not_a_tty(tmp_path):
  stream = io.StringIO()
  with metrics.MetricsWriter(str(tmp_path), total_steps=5, enabled=True, log_every=2,
                             console_keys=["loss"], stream=stream) as writer:
    for step in range(1, 6):
      writer.write(step, {"loss": step / 8, "other": 1.0})
  lines = stream.getvalue().splitlines()
  assert [line.split()[1] for line in lines] == ["2/5", "4/5", "5/5"]
  assert "loss=0.25" in lines[0] and "other" not in lines[0]
  assert all("eta=" in line and "elapsed=" in line for line in lines)
  assert lines[-1].endswith("eta=0:00:00")


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_on_a_tty(tmp_path):
  stream = _Terminal()
  with metrics.MetricsWriter(str(tmp_path), total_steps=10, enabled=True, resume_step=2,
                             stream=stream) as writer:
    writer.write(3, {"reward/mean": 0.5, "loss": 2.0})
    writer.write(4, {"reward/mean": 0.75, "loss": 1.0})
  shown = stream.getvalue()
  assert "4/10" in shown and "reward/mean=0.75" in shown and "loss=1" in shown


def test_disabled_writer_touches_nothing(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path / "w"), total_steps=3, enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not (tmp_path / "w").exists()


def test_enabled_defaults_to_process_zero(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path), total_steps=1, stream=io.StringIO())
  assert writer.enabled == (jax.process_index() == 0)
  writer.close()
  writer.close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(total_steps=0), "total_steps must be a positive int"),
    (dict(total_steps=3, resume_step=4), r"resume_step must be an int in \[0, total_steps=3\]"),
    (dict(total_steps=3, log_every=0), "log_every"),
])
def test_bad_constructor_arguments(tmp_path, kwargs, match):
  kwargs = {"workdir": str(tmp_path), **kwargs}
  with pytest.raises(ValueError, match=match):
    metrics.MetricsWriter(kwargs.pop("workdir"), enabled=True, **kwargs)


def test_a_gs_workdir_gets_whole_files_mirrored_and_a_fresh_host_resumes_from_them(
    gcs, tmp_path, monkeypatch):
  """Issue 14 item 5: with `gs://` the writer stages locally and uploads metrics.jsonl and the event
  files whole (objects cannot be appended to); a resume on another host (empty staging directory)
  starts from the bucket's metrics.jsonl, cut at the resumed step."""
  import pathlib
  bucket = pathlib.Path(gcs.root) / "rlef-test" / "metrics"
  monkeypatch.setenv("HOME", str(tmp_path / "host1"))
  writer = metrics.MetricsWriter("gs://rlef-test/metrics", total_steps=4, enabled=True,
                                 stream=io.StringIO(), mirror_every_s=3600)
  assert writer.jsonl_path == str(tmp_path / "host1" / "rlef_metrics" / "gs" / "rlef-test" / "metrics"
                                  / "metrics.jsonl")
  writer.write(1, {"loss": 1.0})  # the first write uploads (nothing mirrored yet)
  writer.write(2, {"loss": 2.0})  # within mirror_every_s: not yet
  assert metrics.read_jsonl("gs://rlef-test/metrics/metrics.jsonl") == [{"step": 1, "loss": 1.0}]
  writer.write(3, {"loss": 3.0})
  writer.close()  # uploads everything
  assert metrics.read_jsonl(bucket / "metrics.jsonl") == [
      {"step": s, "loss": float(s)} for s in (1, 2, 3)]
  events = sorted((bucket / "tensorboard").iterdir())
  assert len(events) == 1 and events[0].read_bytes() == (
      pathlib.Path(writer.tensorboard_dir) / events[0].name).read_bytes()

  monkeypatch.setenv("HOME", str(tmp_path / "host2"))
  with metrics.MetricsWriter("gs://rlef-test/metrics", total_steps=4, enabled=True, resume_step=2,
                             stream=io.StringIO()) as resumed:
    resumed.write(3, {"loss": 30.0})
  assert metrics.read_jsonl("gs://rlef-test/metrics/metrics.jsonl") == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 30.0}]
  assert len(list((bucket / "tensorboard").iterdir())) == 2  # the old event file and the new one
  assert gcs.unknown == []


def test_bad_writes(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), total_steps=5, enabled=True,
                             stream=io.StringIO()) as writer:
    with pytest.raises(ValueError, match="'logits' must be a single real number.*shape \\(2,\\)"):
      writer.write(1, {"logits": jnp.zeros(2)})
    with pytest.raises(ValueError, match="'name' must be a single real number, got dtype <U4"):
      writer.write(1, {"name": "text"})
    with pytest.raises(ValueError, match="names must be non-empty strings other than 'step'"):
      writer.write(1, {"step": 1.0})
    writer.write(2, {"a": 1.0})
    with pytest.raises(ValueError, match="greater than the last written step 2"):
      writer.write(2, {"a": 1.0})
  with pytest.raises(RuntimeError, match="after close"):
    writer.write(3, {"a": 1.0})


def test_to_scalar_reads_sharded_replicated_arrays():
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  replicated = jax.device_put(jnp.float32(1.5), jax.NamedSharding(mesh, jax.P()))
  assert metrics.to_scalar("x", replicated) == 1.5
  assert metrics.to_scalar("x", np.int64(7)) == 7 and isinstance(metrics.to_scalar("x", 7), int)
  assert metrics.to_scalar("x", np.bool_(True)) == 1


def test_summarize_matches_numpy_on_random_lists():
  rng = np.random.default_rng(0)
  for size in range(1, 20):
    values = rng.normal(size=size)
    mixed = [jnp.float32(v) if i % 2 else float(v) for i, v in enumerate(values)]
    expected = np.asarray([float(np.float32(v)) if i % 2 else v for i, v in enumerate(values)])
    got = metrics.summarize(mixed, prefix="reward")
    assert got == {"reward/mean": pytest.approx(expected.mean(), rel=1e-12, abs=1e-12),
                   "reward/min": expected.min(), "reward/max": expected.max()}
  assert metrics.summarize([1, 2, 6]) == {"mean": 3.0, "min": 1.0, "max": 6.0}
  assert metrics.summarize([], prefix="turns") == {}


def test_timers_accumulate_per_phase(monkeypatch):
  clock = iter([10.0, 12.5, 20.0, 20.25, 30.0, 31.0])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  timers = metrics.Timers()
  with timers("rollout"):
    pass
  with timers("update"):
    pass
  with pytest.raises(KeyError):
    with timers("rollout"):
      raise KeyError("failure inside the phase is still timed")
  assert timers.report() == {"time/rollout": 3.5, "time/update": 0.25}
  assert timers.report() == {}
  with pytest.raises(ValueError, match="non-empty string"):
    with timers(""):
      pass


def test_local_metrics_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  assert metrics.local_metrics_dir("runs/tiny") == "runs/tiny"
  assert metrics.local_metrics_dir("gs://bucket/runs/8b/") == str(
      tmp_path / "rlef_metrics" / "gs" / "bucket" / "runs" / "8b")
  assert metrics.local_metrics_dir("gs://bucket/x", metrics_dir="/data/m") == "/data/m"
  with pytest.raises(ValueError, match="must be local"):
    metrics.local_metrics_dir("runs/x", metrics_dir="gs://b/m")
  with pytest.raises(ValueError, match="cannot derive"):
    metrics.local_metrics_dir("gs://")
