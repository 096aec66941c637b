"""The real tfds builders, offline: tiny sources in the real formats, prepared by our loader, trained on.

Each test writes small source files in the formats tfds downloads (an
SVHN-cropped ``.mat``, the CIFAR-10 binary tarball, gzipped MNIST idx files),
routes tfds' download manager to them, and makes every socket connect and DNS
lookup fail, so nothing can reach the network. ``data.load_split`` then runs
the real builder's preparation (our split filter and install check included)
into a temp data dir, and ``python -m experiments.run`` trains on the result.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import socket
import sys
import tarfile

import jax
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from crp_jax import data
from tests import cli_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
SIZES = {"train": 40, "test": 16}  # examples per split we write
# A run small enough for a CPU: one method, a few steps, one short attack (as tests/test_bad_input.py).
TINY_RUN = ("--config.compare_with=", "--config.method=crp", "--config.model=lenet",
            "--config.num_perturbations=1", "--config.train_subset=0", "--config.batch_size=16",
            "--config.epochs=1", "--config.eval.attack_subset=8", "--config.eval.batch_size=8",
            "--config.eval.pgd_steps=(1,)", "--config.eval.extra_step_size=0",
            "--config.eval.strong=false", "--progress=false")
# An unreachable HTTPS proxy: the training run must need no network at all.
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}


@pytest.fixture
def offline(monkeypatch):
  """No socket can connect nor resolve a name; the data layer is told the network is up."""

  def refuse(*args, **kwargs):
    raise AssertionError("a test tried to reach the network")

  for name in ("connect", "connect_ex"):
    monkeypatch.setattr(socket.socket, name, refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: True)


def _images(rng: np.random.Generator, n: int, shape: tuple[int, int, int]) -> np.ndarray:
  """``n`` distinct random uint8 images, so each loaded image identifies its source row."""
  images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
  assert len({im.tobytes() for im in images}) == n
  return images


def _svhn_sources(folder: epath.Path, rng: np.random.Generator):
  """``train_32x32.mat`` and ``test_32x32.mat`` as the real ones: X (32, 32, 3, N) uint8, y (N, 1) in 1..10.

  No ``extra_32x32.mat``: a request for it fails the test. Returns
  ``({url: path}, {split: (images, labels)})`` with labels as tfds gives them
  (digit 0 is stored as 10 and read as 0).
  """
  urls, expected = {}, {}
  for split, n in SIZES.items():
    images = _images(rng, n, (32, 32, 3))
    y = np.arange(n, dtype=np.uint8) % 10 + 1  # every label 1..10 appears
    path = folder / f"{split}_32x32.mat"
    scipy.io.savemat(path, {"X": np.moveaxis(images, 0, -1), "y": y[:, None]})
    urls[SVHN_URL + path.name] = path
    expected[split] = images, (y % 10).astype(np.int32)
  return urls, expected


def _cifar10_sources(folder: epath.Path, rng: np.random.Generator):
  """``cifar-10-binary.tar.gz`` as the real one: records of 1 label byte + 3072 bytes (C, H, W).

  The train split is spread over ``data_batch_1..5.bin`` as the real one is.
  """
  files, expected = {"batches.meta.txt": "\n".join(f"class{c}" for c in range(10)).encode() + b"\n"}, {}
  for split, n in SIZES.items():
    images = _images(rng, n, (32, 32, 3))
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
    if split == "test":
      files["test_batch.bin"] = records.tobytes()
    else:
      for b, part in enumerate(np.array_split(records, 5)):
        files[f"data_batch_{b + 1}.bin"] = part.tobytes()
    expected[split] = images, labels.astype(np.int32)
  path = folder / "cifar-10-binary.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    for name, blob in files.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return {CIFAR_URL: path}, expected


def _mnist_sources(folder: epath.Path, rng: np.random.Generator):
  """The four gzipped idx files as the real ones: big-endian headers, then uint8 pixels or labels."""
  urls, expected = {}, {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    n = SIZES[split]
    images = _images(rng, n, (28, 28, 1))
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    blobs = {f"{prefix}-images-idx3-ubyte.gz": np.array([2051, n, 28, 28], ">u4").tobytes() + images.tobytes(),
             f"{prefix}-labels-idx1-ubyte.gz": np.array([2049, n], ">u4").tobytes() + labels.tobytes()}
    for name, blob in blobs.items():
      (folder / name).write_bytes(gzip.compress(blob))
      urls[MNIST_URL + name] = folder / name
    expected[split] = images, labels.astype(np.int32)
  return urls, expected


SOURCES = {"svhn": _svhn_sources, "cifar10": _cifar10_sources, "mnist": _mnist_sources}
# What the progress line says is downloaded: the sizes tfds registers for the real files (the README quotes them).
DOWNLOADS = {
    "svhn": "downloading 234.9 MiB", "cifar10": "downloading 162.2 MiB", "mnist": "downloading 11.1 MiB",
}


def _route_downloads(monkeypatch, urls: dict[str, epath.Path]) -> list[str]:
  """Serves tfds' downloads from ``urls`` (an unknown URL fails); returns the list of URLs requested.

  ``download_and_extract`` keeps tfds' real extraction of the served files.
  """
  requested: list[str] = []

  def download(self, url_or_urls):
    def serve(url):
      requested.append(str(url))
      if str(url) not in urls:
        raise AssertionError(f"the builder asked for a file this test does not serve: {url}")
      return urls[str(url)]
    return jax.tree.map(serve, url_or_urls)

  def download_and_extract(self, url_or_urls):
    return self.extract(download(self, url_or_urls))

  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
  return requested


def _assert_same_examples(split: data.Split, images: np.ndarray, labels: np.ndarray) -> None:
  """``split`` holds exactly the written (image, label) pairs; tfds shuffles their order."""
  assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
  assert split.images.shape == images.shape and split.num_examples == labels.shape[0]
  written = {im.tobytes(): int(label) for im, label in zip(images, labels)}
  loaded = {im.tobytes(): int(label) for im, label in zip(split.images, split.labels)}
  assert loaded == written


def _train_one_run(dataset: str, data_dir: epath.Path, workdir: epath.Path) -> dict:
  """``python -m experiments.run`` on the prepared data, offline; returns its results.json."""
  cmd = [sys.executable, "-m", "experiments.run", f"--dataset={dataset}", f"--tfds_data_dir={data_dir}",
         f"--workdir={workdir}", *TINY_RUN]
  proc = cli_server.run(cmd[2], cmd[3:], env={**os.environ, **OFFLINE, "CRP_CPU_DEVICES": "1"}, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "tfds: preparing" not in proc.stderr  # read, not prepared again
  return json.loads((workdir / "crp" / "results.json").read_text())


@pytest.mark.parametrize("dataset", ["svhn", "cifar10", "mnist"])
def test_real_builder_prepares_offline_and_trains(dataset, offline, monkeypatch, tmp_path, capsys):
  tmp_path = epath.Path(tmp_path)
  (tmp_path / "sources").mkdir()
  urls, expected = SOURCES[dataset](tmp_path / "sources", np.random.default_rng(0))
  requested = _route_downloads(monkeypatch, urls)
  if dataset == "mnist":  # its builder reads a fixed 60,000/10,000 examples; shrink them as tfds' mnist_test does
    monkeypatch.setattr(tfds_mnist, "_TRAIN_EXAMPLES", SIZES["train"])
    monkeypatch.setattr(tfds_mnist, "_TEST_EXAMPLES", SIZES["test"])
  data_dir = tmp_path / "tfds"

  for split in data.SPLIT_NAMES:
    _assert_same_examples(data.load_split(dataset, split, data_dir=str(data_dir)), *expected[split])

  assert sorted(requested) == sorted(urls)  # each source once, and nothing else (no svhn `extra`)
  builder = tfds.builder(data.dataset_info(dataset).tfds_name, data_dir=str(data_dir))
  assert builder.is_prepared() and set(builder.info.splits) == set(data.SPLIT_NAMES)
  assert builder.info.file_format.value == "array_record"
  progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tfds: preparing")]
  assert len(progress) == 1, progress  # prepared once, for the first split
  print(progress[0])  # shown by pytest -rP
  assert DOWNLOADS[dataset] in progress[0] and str(builder.data_dir) in progress[0]
  if dataset == "svhn":  # tfds registers 182,040,794 and 64,275,384 bytes, and 1,329,278,602 for extra
    assert "train_32x32.mat (173.6 MiB)" in progress[0] and "test_32x32.mat (61.3 MiB)" in progress[0]
    assert "not downloading extra_32x32.mat (1.24 GiB)" in progress[0]

  result = _train_one_run(dataset, data_dir, tmp_path / "run")
  assert result["training"]["steps"] == SIZES["train"] * 2 // 16  # K = 1 draw plus the clean image
  assert result["evaluation"]["paper"]["num_test"] == SIZES["test"]


def test_missing_tensorflow_is_one_line_before_any_download(offline, monkeypatch, tmp_path):
  requested = _route_downloads(monkeypatch, {})
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
  with pytest.raises(data.DataError) as err:
    data.load_split("svhn", "train", data_dir=str(tmp_path / "tfds"))
  message = str(err.value)
  print(message)  # shown by pytest -rP
  assert "\n" not in message
  assert "'svhn_cropped'" in message and "tensorflow" in message and "pip install 'crp_jax[tfds]'" in message
  assert requested == []
  assert not (tmp_path / "tfds").exists()  # nothing downloaded, nothing half-written
