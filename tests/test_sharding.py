"""Data parallelism on 4 simulated CPU devices (run in a subprocess, since the device
count must be set before JAX starts)."""

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
    from jax.sharding import PartitionSpec as P

    from ltjax import training
    from ltjax.training import loop, optim, sharding
    from test_training import (BATCH, SEED, TinyERM, TinyNet, augment_fn, device_dataset,
                               epoch_fn, init_state, normalize, tiny_data)

    assert jax.device_count() == 4
    mesh = sharding.make_mesh()
    data = device_dataset()
    images, labels = tiny_data(24, seed=1)

    def run(mesh):
      phase = training.Phase(TinyERM(), 2, optim.sgd(0.1, momentum=0.9, weight_decay=5e-4))
      return training.fit(TinyNet(), [phase], data, batch_size=BATCH, seed=SEED,
                          normalize_fn=normalize, augment_fn=augment_fn, mesh=mesh,
                          test_images=images, test_labels=labels, progress=False)

    # 1. A data-parallel run equals the one-device run up to float reduction order.
    single, parallel = run(None), run(mesh)
    flat_single = jax.tree.leaves(single.state)
    flat_parallel = jax.tree.leaves(parallel.state)
    for a, b in zip(flat_single, flat_parallel):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
      assert b.sharding.is_fully_replicated and len(b.sharding.device_set) == 4
    assert abs(single.final_metrics["top1"] - parallel.final_metrics["top1"]) < 1e-6

    # 2. The batch a recipe loads is split over the 4 devices.
    ddata = sharding.replicate(data, mesh)
    probe = jax.jit(lambda d, key, idx: loop.make_load(d, augment_fn, normalize, mesh)(key, idx))
    x, y = probe(ddata, jax.random.key(0), np.arange(BATCH, dtype=np.int32))
    for arr in (x, y):
      assert arr.sharding.spec == P("data"), arr.sharding
      assert len(arr.addressable_shards) == 4
      assert {s.data.shape[0] for s in arr.addressable_shards} == {BATCH // 4}

    # 3. The lowered epoch constrains the step's batch to the data axis.
    tx = optim.sgd(0.1)
    state = sharding.replicate(init_state(TinyERM(), tx, data), mesh)
    train_epoch = epoch_fn(TinyERM(), tx, ddata, mesh=mesh)
    text = train_epoch.jitted.lower(train_epoch.inputs, state, ddata, np.int32(0)).as_text()
    batch = f'[{{"data"}}, {{}}, {{}}, {{}}]> : tensor<{BATCH}x8x8x3xf32>'
    assert "sharding_constraint" in text and batch in text, "batch sharding missing"

    # 4. Host-local pieces assemble into a global batch-sharded array.
    local = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    glob = sharding.host_local_to_global(local, mesh)
    assert glob.sharding.spec == P("data")
    np.testing.assert_array_equal(np.asarray(glob), local)

    # 5. Errors.
    with pytest.raises(ValueError, match="num_devices"):
      sharding.make_mesh(5)
    with pytest.raises(ValueError, match="divisible"):
      training.make_train_epoch(TinyERM(), TinyNet().apply, tx, ddata, batch_size=18,
                                num_epochs=1, augment_fn=None, normalize_fn=normalize,
                                seed=0, mesh=mesh)
    print("SHARDING-OK")
""")


def test_data_parallel_epoch_on_four_devices():
  tests_dir = pathlib.Path(__file__).resolve().parent
  path = os.pathsep.join([str(tests_dir.parent), str(tests_dir),
                          os.environ.get("PYTHONPATH", "")])
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and "SHARDING-OK" in proc.stdout, proc.stderr[-4000:]
