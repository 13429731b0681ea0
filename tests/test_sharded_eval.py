"""Evaluation split over a mesh of 4 simulated CPU devices, against a numpy reference of the
counts (run in a subprocess, since the device count must be set before JAX starts)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np
    import pytest

    from ltjax import methods, metrics, models
    from ltjax.training import evaluation, sharding

    assert jax.device_count() == 4
    K, N, BATCH = 7, 37, 8  # 4 full batches and a last one of 5 real rows and 3 padded
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, K, N).astype(np.int32)
    labels[:K] = np.arange(K)  # every class in the test set
    normalize = lambda x: x.astype(np.float32) / 255.0 - 0.5
    model = models.get_model("small_cnn", K)
    variables = model.init(jax.random.key(1), normalize(images[:1]), train=False)
    mesh = sharding.make_mesh()
    params, batch_stats = sharding.replicate(
        (variables["params"], variables["batch_stats"]), mesh)
    rcp = methods.get_recipe("erm", num_epochs=1)

    # Reference: the logits of the whole set in one call on one device, counted in numpy.
    outputs = model.apply(variables, normalize(images), train=False)
    logits = np.asarray(outputs["logits"], np.float64)
    predicted = logits.argmax(1)
    top5 = (np.argsort(-logits, axis=1)[:, :5] == labels[:, None]).any(1).sum()
    shifted = logits - logits.max(1, keepdims=True)
    nll = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(N), labels]
    confusion = np.zeros((K, K), np.int64)
    np.add.at(confusion, (labels, predicted), 1)

    eval_fn = evaluation.make_eval_fn(model.apply, rcp, BATCH, normalize, mesh=mesh)
    counts = eval_fn.counts(params, batch_stats, images, labels)
    for leaf in jax.tree.leaves(counts):
      assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4
    np.testing.assert_array_equal(counts.total, np.bincount(labels, minlength=K))
    np.testing.assert_array_equal(
        counts.correct, np.bincount(labels[predicted == labels], minlength=K))
    np.testing.assert_array_equal(counts.confusion, confusion)
    assert int(counts.top5) == top5 and 0 < top5 < N
    np.testing.assert_allclose(float(counts.loss), nll.sum(), rtol=1e-5)

    # The summary, and the logits of the whole set, as without a mesh.
    train_counts = np.array([300, 150, 90, 40, 20, 9, 3])  # many, medium, few
    summary = evaluation.evaluate(eval_fn, params, batch_stats, images, labels, train_counts)
    assert summary["top1"] == pytest.approx((predicted == labels).mean())
    np.testing.assert_allclose(eval_fn(params, batch_stats, images), logits, rtol=1e-5,
                               atol=1e-5)
    single = evaluation.make_eval_fn(model.apply, rcp, BATCH, normalize)
    unsharded = evaluation.evaluate(single, variables["params"], variables["batch_stats"],
                                    images, labels, train_counts)
    assert unsharded.keys() == summary.keys()
    for name, value in summary.items():
      np.testing.assert_allclose(np.asarray(unsharded[name], np.float64),
                                 np.asarray(value, np.float64), rtol=1e-5, err_msg=name)

    # This process feeds every row of a batch; a batch the mesh cannot split is refused.
    assert sharding.process_rows(BATCH, mesh) == slice(0, BATCH)
    with pytest.raises(ValueError, match="divisible"):
      evaluation.make_eval_fn(model.apply, rcp, 6, normalize, mesh=mesh)
    print("SHARDED-EVAL-OK")
""")


def test_sharded_evaluation_counts_match_numpy_on_four_devices():
  tests_dir = pathlib.Path(__file__).resolve().parent
  path = os.pathsep.join([str(tests_dir.parent), os.environ.get("PYTHONPATH", "")])
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and "SHARDED-EVAL-OK" in proc.stdout, proc.stderr[-4000:]
