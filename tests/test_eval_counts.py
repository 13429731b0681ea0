"""Test metrics accumulated on the device (`metrics.EvalCounts`) against numpy."""

import numpy as np
import pytest

from ltjax import metrics
from ltjax.methods import get_recipe
from ltjax.training import evaluation

RNG = np.random.default_rng(0)


def numpy_summary(logits, labels, num_classes):
  """The summary written out in numpy: top-1 / top-5 hits, per-class accuracy, confusion,
  mean cross-entropy (float64)."""
  pred = logits.argmax(1)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  per_class = np.array([np.mean(pred[labels == k] == k) if np.any(labels == k) else np.nan
                        for k in range(num_classes)])
  confusion = np.zeros((num_classes, num_classes), int)
  np.add.at(confusion, (labels, pred), 1)
  z = logits.astype(np.float64)
  nll = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(len(z)),
                                                                           labels]
  return {"top1": np.mean(pred == labels), "top5": np.mean((top5 == labels[:, None]).any(1)),
          "per_class": per_class, "confusion": confusion, "loss": nll.mean()}


def linear_apply(variables, x, train):
  del train
  return {"logits": x.reshape(x.shape[0], -1) @ variables["params"]["w"]}


@pytest.mark.parametrize("batch_size", [5, 37, 64])
def test_device_counts_match_numpy_for_any_batch_padding(batch_size):
  num, k = 37, 7
  images = RNG.integers(0, 255, (num, 2, 2, 3), dtype=np.uint8)
  labels = RNG.integers(0, k, num)
  w = RNG.normal(size=(12, k)).astype(np.float32)
  normalize = lambda x: x.astype(np.float32) / 255.0
  eval_fn = evaluation.make_eval_fn(linear_apply, get_recipe("erm", num_epochs=1), batch_size,
                                    normalize)
  train_counts = np.array([300, 150, 80, 40, 25, 10, 5])
  got = evaluation.evaluate(eval_fn, {"w": w}, {}, images, labels, train_counts)
  want = numpy_summary(images.reshape(num, -1).astype(np.float32) / 255.0 @ w, labels, k)
  assert got["top1"] == pytest.approx(want["top1"])
  assert got["top5"] == pytest.approx(want["top5"])
  np.testing.assert_allclose(got["per_class"], want["per_class"])
  np.testing.assert_array_equal(got["confusion"], want["confusion"])
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
  many = train_counts > 100
  t = np.bincount(labels, minlength=k)
  acc = np.nan_to_num(want["per_class"])
  assert got["many"] == pytest.approx((t[many] * acc[many]).sum() / t[many].sum())


def test_no_confusion_matrix_above_the_class_limit():
  k = metrics.CONFUSION_MAX_CLASSES + 1
  logits = RNG.normal(size=(6, k)).astype(np.float32)
  labels = np.array([0, 5, 5, 17, k - 1, 3])
  counts = metrics.batch_counts(logits, labels)
  assert counts.confusion is None
  got = metrics.summarize_counts(counts, np.full(k, 50))
  want = numpy_summary(logits, labels, k)
  assert got["confusion"] is None
  np.testing.assert_allclose(got["per_class"], want["per_class"])
  assert got["top1"] == pytest.approx(want["top1"])


def test_masked_rows_count_nowhere():
  logits = RNG.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 1])
  mask = np.array([True, True, False, False])
  counts = metrics.batch_counts(logits, labels, mask)
  np.testing.assert_array_equal(counts.total, [1, 1, 0])
  np.testing.assert_array_equal(counts.confusion.sum(), 2)
  assert float(counts.loss) == pytest.approx(numpy_summary(logits[:2], labels[:2], 3)["loss"]
                                             * 2, rel=1e-6)
