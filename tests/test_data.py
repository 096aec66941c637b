"""Tests for crp_jax.data: offline mnist5k, TFDS loading on mock data, fast failures."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from crp_jax import data

TFDS_NAMES = ("mnist", "svhn", "cifar10")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Fails any test that would probe the network; tests opt in to a fake answer."""

  def probe(*args, **kwargs):
    raise AssertionError("the network probe must not run in tests")

  monkeypatch.setattr(data, "_network_reachable", probe)


@pytest.fixture
def online(monkeypatch):
  """Pretends the network is up; safe only under tfds.testing.mock_data, whose download is a no-op."""
  monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: True)


@pytest.fixture(scope="module")
def mnist5k():
  return data.load_split("mnist5k", "train"), data.load_split("mnist5k", "test")


def test_registry_metadata():
  assert data.DATASET_NAMES == ("mnist", "mnist5k", "svhn", "cifar10")
  for name in data.DATASET_NAMES:
    assert data.dataset_info(name).num_classes == 10
  assert data.dataset_info("mnist5k").image_shape == (28, 28, 1)
  assert data.dataset_info("cifar10").image_shape == (32, 32, 3)
  assert data.dataset_info("svhn").tfds_name == "svhn_cropped"


def test_mnist5k_shapes_and_dtypes(mnist5k):
  for split, n in zip(mnist5k, (4000, 1000)):
    assert split.images.shape == (n, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.shape == (n,) and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.ids, np.arange(n, dtype=np.int32))
    assert split.ids.dtype == np.int32
    assert split.num_examples == n and split.num_classes == 10 and split.image_shape == (28, 28, 1)


def test_mnist5k_stratified(mnist5k):
  train, test = mnist5k
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), np.full(10, 400))
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.full(10, 100))
  # Shuffled across classes, unlike the label-sorted source.
  assert np.any(np.diff(train.labels) < 0)


def test_mnist5k_deterministic_and_independent_of_global_rng(mnist5k):
  np.random.seed(123)
  again = data.load_split("mnist5k", "train")
  np.testing.assert_array_equal(again.images, mnist5k[0].images)
  np.testing.assert_array_equal(again.labels, mnist5k[0].labels)


def test_mnist5k_train_test_disjoint(mnist5k):
  train_rows = {img.tobytes() for img in mnist5k[0].images}
  test_rows = {img.tobytes() for img in mnist5k[1].images}
  assert len(train_rows) == 4000 and len(test_rows) == 1000
  assert not train_rows & test_rows


def test_mnist5k_pixel_range(mnist5k):
  images = mnist5k[0].images
  assert images.min() == 0 and images.max() == 255
  assert 20 < images.mean() < 50  # MNIST: mostly black background


@pytest.mark.parametrize("split", data.SPLIT_NAMES)
@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_on_mock_data(name, split, online, tmp_path):
  info = data.dataset_info(name)
  with tfds.testing.mock_data(num_examples=16):
    loaded = data.load_split(name, split, data_dir=str(tmp_path))
  assert loaded.images.shape == (16, *info.image_shape) and loaded.images.dtype == np.uint8
  assert loaded.labels.shape == (16,) and loaded.labels.dtype == np.int32
  assert np.all((loaded.labels >= 0) & (loaded.labels < 10))
  np.testing.assert_array_equal(loaded.ids, np.arange(16, dtype=np.int32))
  assert not any(tmp_path.iterdir())  # nothing was downloaded or prepared


def test_unknown_dataset():
  with pytest.raises(data.DataError, match="'imagenet'.*mnist5k"):
    data.load_split("imagenet", "train")
  with pytest.raises(data.DataError, match="'imagenet'"):
    data.dataset_info("imagenet")


def test_unknown_split():
  with pytest.raises(data.DataError, match="'validation'"):
    data.load_split("mnist5k", "validation")


def test_unprepared_offline_fails_fast(monkeypatch, tmp_path):
  monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: False)
  start = time.monotonic()
  with pytest.raises(data.DataError) as err:
    data.load_split("svhn", "train", data_dir=str(tmp_path))
  assert time.monotonic() - start < 10
  message = str(err.value)
  assert "\n" not in message
  assert "tfds build svhn_cropped " in message and "--tfds_data_dir" in message and str(tmp_path) in message


def test_empty_split(online, tmp_path):
  with tfds.testing.mock_data(num_examples=0), pytest.raises(data.DataError, match="'cifar10'.*'test'.*empty"):
    data.load_split("cifar10", "test", data_dir=str(tmp_path))


def test_labels_out_of_range(online, tmp_path):
  def source(self, split, **kwargs):
    return [{"image": np.zeros((28, 28, 1), np.uint8), "label": 10}]

  with tfds.testing.mock_data(as_data_source_fn=source), pytest.raises(data.DataError, match=r"outside \[0, 10\)"):
    data.load_split("mnist", "train", data_dir=str(tmp_path))


def test_tfrecord_only_data_is_explained(online, tmp_path):
  def source(self, split, **kwargs):
    raise NotImplementedError("Random access data source for file format FileFormat.TFRECORD is not supported.")

  with tfds.testing.mock_data(as_data_source_fn=source), pytest.raises(data.DataError, match="array_record"):
    data.load_split("mnist", "test", data_dir=str(tmp_path))


@pytest.mark.parametrize("jit", [False, True])
def test_to_float(jit):
  images = jnp.arange(256, dtype=jnp.uint8).reshape(4, 8, 8, 1)
  fn = jax.jit(data.to_float) if jit else data.to_float
  out = fn(images)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  assert float(out.min()) == 0.0 and float(out.max()) == 1.0
  np.testing.assert_allclose(out, np.asarray(images, np.float32) / 255)
