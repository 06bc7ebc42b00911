"""A local Google Cloud Storage double, for running commands with `--workdir=gs://bucket/path` offline.

Both clients a run uses talk to the same objects, kept as files under one root directory
(`<root>/<bucket>/<object name>`):

* `FakeGCSServer`: the subset of the GCS JSON API that TensorStore's `gcs` driver uses (object media
  and metadata reads with generation preconditions and byte ranges, media uploads, deletes, listings),
  and the bucket metadata google-cloud-storage reads for orbax. Orbax writes and reads checkpoint
  arrays through it when `TENSORSTORE_GCS_HTTP_URL` points at it (`STORAGE_EMULATOR_HOST` for the
  google-cloud-storage client).
* `FakeGCSFileSystem`: an fsspec file system for the `gs`/`gcs` protocols (what etils.epath uses for
  `gs://` paths when TensorFlow is absent), installed by `install()`: manifests, metrics, evaluation
  records and orbax's metadata files go through it. Like an object store, it has no directories of its
  own (a "directory" is a prefix of some object) and no rename.

Generations are the objects' modification times in nanoseconds, so both views agree without shared
state, and a command run in a subprocess (`run_module`) sees what the test wrote and vice versa.
"""
from __future__ import annotations

import collections
import datetime
import http.server
import json
import os
import runpy
import sys
import tempfile
import threading
import urllib.parse

import fsspec
from fsspec.spec import AbstractFileSystem

ROOT_ENV = "RLEF_FAKE_GCS_ROOT"


def _object_file(root: str, bucket: str, name: str) -> str:
  if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")[:-1]):
    raise ValueError(f"bad object name {name!r}")
  return os.path.join(root, bucket, *name.split("/"))


def _generation(path: str) -> int:
  return os.stat(path).st_mtime_ns


def _metadata(bucket: str, name: str, path: str) -> dict:
  st = os.stat(path)
  return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(st.st_size),
          "generation": str(st.st_mtime_ns), "metageneration": "1",
          "updated": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat()}


def _write_object(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".upload-")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)  # a reader sees the old object or the new one, never half of one


def _delete_object(root: str, bucket: str, path: str) -> None:
  os.remove(path)
  parent, top = os.path.dirname(path), os.path.join(root, bucket)
  while parent != top and not os.listdir(parent):  # no empty "directories" left behind
    os.rmdir(parent)
    parent = os.path.dirname(parent)


def _all_objects(root: str, bucket: str) -> list[str]:
  top = os.path.join(root, bucket)
  names = []
  for dirpath, _, files in os.walk(top):
    for f in files:
      if not f.startswith(".upload-"):
        names.append(os.path.relpath(os.path.join(dirpath, f), top).replace(os.sep, "/"))
  return sorted(names)


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  root: str = ""
  unknown: list = []
  served: collections.Counter = collections.Counter()

  def log_message(self, *args):
    pass

  def _reply(self, status: int, body: bytes = b"", headers: dict | None = None,
             content_type: str = "application/json"):
    self.send_response(status)
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.command != "HEAD":
      self.wfile.write(body)

  def _json(self, status: int, value: dict, headers: dict | None = None):
    self._reply(status, json.dumps(value).encode(), headers)

  def _error(self, status: int, message: str):
    self._json(status, {"error": {"code": status, "message": message}})

  def _route(self):
    url = urllib.parse.urlsplit(self.path)
    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    parts = url.path.split("/")
    self.served[self.command] += 1
    # /storage/v1/b/<bucket>/o[/<object>]  or  /upload/storage/v1/b/<bucket>/o
    if parts[1:4] == ["storage", "v1", "b"] and len(parts) == 5:
      return "bucket_metadata", parts[4], None, query
    if parts[1:4] == ["storage", "v1", "b"] and len(parts) >= 6 and parts[5] == "o":
      name = urllib.parse.unquote("/".join(parts[6:])) if len(parts) > 6 else None
      return "object" if name else "bucket", parts[4], name, query
    if parts[1:5] == ["upload", "storage", "v1", "b"] and len(parts) >= 7 and parts[6] == "o":
      return "upload", parts[5], query.get("name"), query
    return None, None, None, query

  def _precondition_failed(self, path: str, query: dict) -> int | None:
    exists = os.path.isfile(path)
    generation = _generation(path) if exists else 0
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
      return 412
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
      return 304
    return None

  def do_GET(self):
    kind, bucket, name, query = self._route()
    if kind == "bucket":
      return self._list(bucket, query)
    if kind == "bucket_metadata":  # google-cloud-storage's get_bucket (orbax: hierarchical namespace?)
      return self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                              "metageneration": "1", "location": "LOCAL",
                              "hierarchicalNamespace": {"enabled": False}})
    if kind != "object":
      return self._unknown()
    path = _object_file(self.root, bucket, name)
    if not os.path.isfile(path):
      return self._error(404, f"No such object: {bucket}/{name}")
    failed = self._precondition_failed(path, query)
    if failed:
      return self._reply(failed) if failed == 304 else self._error(failed, "precondition failed")
    meta = _metadata(bucket, name, path)
    headers = {"x-goog-generation": meta["generation"], "x-goog-metageneration": "1",
               "ETag": f'"{meta["generation"]}"'}
    if query.get("alt") != "media":
      return self._json(200, meta, headers)
    with open(path, "rb") as f:
      data = f.read()
    rng = self.headers.get("Range")
    if rng and rng.startswith("bytes="):
      first, _, last = rng[len("bytes="):].partition("-")
      if first == "":  # suffix range
        start, end = max(0, len(data) - int(last)), len(data)
      else:
        start, end = int(first), len(data) if last == "" else min(len(data), int(last) + 1)
      if start >= len(data) and len(data) > 0:
        return self._error(416, "range not satisfiable")
      headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
      return self._reply(206, data[start:end], headers, "application/octet-stream")
    self._reply(200, data, headers, "application/octet-stream")

  def _list(self, bucket: str, query: dict):
    prefix = query.get("prefix", "")
    start, end = query.get("startOffset", ""), query.get("endOffset", "")
    delimiter = query.get("delimiter", "")
    items, prefixes = [], set()
    for name in _all_objects(self.root, bucket):
      if not name.startswith(prefix) or name < start or (end and name >= end):
        continue
      if delimiter and delimiter in name[len(prefix):]:
        prefixes.add(name[:len(prefix) + name[len(prefix):].index(delimiter) + 1])
        continue
      items.append(_metadata(bucket, name, _object_file(self.root, bucket, name)))
    self._json(200, {"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)})

  def do_HEAD(self):
    self.do_GET()

  def do_POST(self):
    kind, bucket, name, query = self._route()
    length = int(self.headers.get("Content-Length") or 0)
    data = self.rfile.read(length) if length else b""
    if kind != "upload" or query.get("uploadType") != "media" or not name:
      return self._unknown()
    path = _object_file(self.root, bucket, name)
    if self._precondition_failed(path, query):
      return self._error(412, "precondition failed")
    _write_object(path, data)
    self._json(200, _metadata(bucket, name, path))

  def do_PUT(self):
    self._unknown()

  def do_DELETE(self):
    kind, bucket, name, query = self._route()
    if kind != "object":
      return self._unknown()
    path = _object_file(self.root, bucket, name)
    if not os.path.isfile(path):
      return self._error(404, f"No such object: {bucket}/{name}")
    if self._precondition_failed(path, query):
      return self._error(412, "precondition failed")
    _delete_object(self.root, bucket, path)
    self._reply(204)

  def _unknown(self):
    self.unknown.append(f"{self.command} {self.path}")
    self._error(501, f"the GCS double does not implement {self.command} {self.path}")


class FakeGCSServer:
  """The double's HTTP side, serving `root` on 127.0.0.1 from a daemon thread (a context manager).

  `env()` is what a process needs to use it: TensorStore's endpoint and the fsspec double's root.
  `unknown` lists the requests it could not serve (a test asserts it stays empty); `served` counts
  the requests by method."""

  def __init__(self, root: str):
    self.root = str(root)
    os.makedirs(self.root, exist_ok=True)
    handler = type("Handler", (_Handler,), {"root": self.root, "unknown": [],
                                            "served": collections.Counter()})
    self.unknown = handler.unknown
    self.served = handler.served  # requests by HTTP method
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self._server.daemon_threads = True
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self._server.server_port}"

  def env(self) -> dict:
    return {"TENSORSTORE_GCS_HTTP_URL": self.url, "STORAGE_EMULATOR_HOST": self.url,
            "GOOGLE_CLOUD_PROJECT": "rlef-test", ROOT_ENV: self.root}

  def __enter__(self) -> "FakeGCSServer":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._server.shutdown()
    self._server.server_close()


class FakeGCSFileSystem(AbstractFileSystem):
  """fsspec `gs://` over the double's root directory (see the module docstring)."""

  protocol = ("gs", "gcs")
  root_marker = ""

  def __init__(self, *args, **kwargs):
    super().__init__()
    self.root = os.environ[ROOT_ENV]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for p in ("gs://", "gcs://"):
      if path.startswith(p):
        path = path[len(p):]
    return path.rstrip("/")

  def _split(self, path: str) -> tuple[str, str]:
    bucket, _, name = self._strip_protocol(path).partition("/")
    return bucket, name

  def _local(self, path: str) -> str:
    bucket, name = self._split(path)
    return os.path.join(self.root, bucket, *[p for p in name.split("/") if p])

  def ls(self, path, detail=True, **kwargs):
    bucket, name = self._split(path)
    local = self._local(path)
    if os.path.isfile(local):
      entries = [self.info(path)]
    elif os.path.isdir(local) and (os.listdir(local) or not name):
      entries = [self.info(f"{bucket}/{name}/{e}".replace("//", "/")) for e in sorted(os.listdir(local))
                 if not e.startswith(".upload-")]
    else:
      raise FileNotFoundError(path)
    return entries if detail else [e["name"] for e in entries]

  def info(self, path, **kwargs):
    local = self._local(path)
    name = self._strip_protocol(path)
    if os.path.isfile(local):
      st = os.stat(local)
      return {"name": name, "size": st.st_size, "type": "file", "generation": st.st_mtime_ns,
              "mtime": st.st_mtime}
    if os.path.isdir(local) and (os.listdir(local) or "/" not in name):  # a prefix of some object
      return {"name": name, "size": 0, "type": "directory"}
    raise FileNotFoundError(path)

  def _open(self, path, mode="rb", **kwargs):
    local = self._local(path)
    if "r" in mode:
      if not os.path.isfile(local):
        raise FileNotFoundError(path)
      return open(local, "rb")
    if "a" in mode:
      raise OSError(f"objects cannot be appended to: {path}")
    return _Upload(local)

  def mkdir(self, path, create_parents=True, **kwargs):
    pass  # an object store has no directories

  def makedirs(self, path, exist_ok=False):
    pass

  def rm_file(self, path):
    local = self._local(path)
    if not os.path.isfile(local):
      raise FileNotFoundError(path)
    bucket, _ = self._split(path)
    _delete_object(self.root, bucket, local)

  def _rm(self, path):
    self.rm_file(path)

  def rm(self, path, recursive=False, maxdepth=None):
    paths = path if isinstance(path, list) else [path]
    for p in paths:
      local = self._local(p)
      if os.path.isdir(local):
        if not recursive:
          raise IsADirectoryError(p)
        for dirpath, _, files in os.walk(local, topdown=False):
          for f in files:
            bucket, _ = self._split(p)
            _delete_object(self.root, bucket, os.path.join(dirpath, f))
      else:
        self.rm_file(p)

  def cp_file(self, path1, path2, **kwargs):
    with open(self._local(path1), "rb") as f:
      _write_object(self._local(path2), f.read())

  def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
    # GCS has no rename: a copy, then a delete (not atomic, like gcsfs).
    if os.path.isdir(self._local(path1)):
      for dirpath, _, files in os.walk(self._local(path1)):
        for f in files:
          rel = os.path.relpath(os.path.join(dirpath, f), self._local(path1)).replace(os.sep, "/")
          self.cp_file(f"{path1}/{rel}", f"{path2}/{rel}")
      self.rm(path1, recursive=True)
    else:
      self.cp_file(path1, path2)
      self.rm_file(path1)


class _Upload:
  """A write handle whose object appears, whole, on close (like a GCS upload)."""

  def __init__(self, local: str):
    self.local = local
    self._tmp = tempfile.SpooledTemporaryFile()
    self.closed = False

  def write(self, data) -> int:
    return self._tmp.write(data)

  def flush(self):
    pass

  def writable(self):
    return True

  def readable(self):
    return False

  def seekable(self):
    return False

  def close(self):
    if not self.closed:
      self.closed = True
      self._tmp.seek(0)
      _write_object(self.local, self._tmp.read())
      self._tmp.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def install() -> None:
  """Registers the fsspec double for `gs://` and `gcs://` in this process (needs `ROOT_ENV`)."""
  fsspec.register_implementation("gs", FakeGCSFileSystem, clobber=True)
  fsspec.register_implementation("gcs", FakeGCSFileSystem, clobber=True)


def run_module(module: str, argv: list[str]) -> None:
  """`python -m module argv...` with the double installed (for subprocesses:
  `python tests/gcs_double.py rlef_jax.train --config=... --workdir=gs://...`)."""
  install()
  sys.argv = [module, *argv]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  run_module(sys.argv[1], sys.argv[2:])
