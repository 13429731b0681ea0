"""The recipe / engine contract: requirements, extra phases, epoch context, phase states.

- CP-Mix trains its main phase and its classifier fine-tuning in one `fit`, whose
  `FitResult.phase_states` holds the main phase's confusion counts (those of a run of the
  main phase alone), also when the run was resumed inside the fine-tuning phase;
- the runner builds a recipe's extra phases from its requirements (any recipe, not only
  CP-Mix) with config.finetune's optimiser on the parameters the follow-up recipe trains;
- each recipe's `Requirements` match what its loss uses: tracing the loss with a model that
  lacks "features", "feature_map" or the second branch fails exactly when the recipe says
  it needs them, and the class laws it draws are those it declares;
- the analysis views are found per recipe class by a registry that covers every method.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import analysis, compare, runner
from ltjax import methods, pairing, samplers, training
from ltjax import recipe as recipe_lib
from ltjax.models import get_model
from ltjax.training import optim

K, N, B, SEED = 4, 40, 8, 3
LABELS = (np.arange(N) % K).astype(np.int32)
IMAGES = np.random.default_rng(1).integers(0, 256, (N, 8, 8, 1), np.uint8)
DIGITS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", "configs", "digits_lt.py")


def normalize(images):
  return images.astype(jnp.float32) / 255.0 - 0.5


def data():
  return recipe_lib.DeviceDataset.from_arrays(IMAGES, LABELS, K)


# ------------------------------------------------------------ CP-Mix in one fit call

MAIN_EPOCHS, FT_EPOCHS = 2, 2


def cp_phases(with_finetune=True):
  cp = methods.get_recipe("cp_mix", num_epochs=MAIN_EPOCHS, stage2_epoch=1)
  main = training.Phase(cp, MAIN_EPOCHS, optim.sgd(0.05))
  if not with_finetune:
    return [main]
  (finetune,) = cp.requirements().extra_phases
  return [main, training.Phase(finetune, FT_EPOCHS,
                               optim.sgd(0.05, trainable=optim.path_mask(("head",))),
                               train_batch_stats=False)]


def cp_fit(phases, workdir=None, stop_after=None):
  return training.fit(get_model("small_cnn", K, widths=(4,)), phases, data(), batch_size=B,
                      seed=SEED, normalize_fn=normalize, workdir=workdir, progress=False,
                      stop_after=stop_after, loop="steps")


@pytest.fixture(scope="module")
def main_only_confusion():
  """CP-Mix's confusion counts of a run of its main phase alone (the reference)."""
  return np.asarray(cp_fit(cp_phases(with_finetune=False)).state.method_state["confusion"])


def test_cp_mix_one_fit_keeps_the_main_phase_confusion_counts(main_only_confusion):
  result = cp_fit(cp_phases())
  assert result.epochs_done == MAIN_EPOCHS + FT_EPOCHS
  main_state, finetune_state = result.phase_states
  assert main_only_confusion.sum() > 0  # the counts are not trivially zero
  np.testing.assert_array_equal(np.asarray(main_state["confusion"]), main_only_confusion)
  np.testing.assert_array_equal(np.asarray(result.state.phase_states[0]["confusion"]),
                                main_only_confusion)
  assert finetune_state == () and result.state.method_state == ()


def test_a_resume_inside_the_finetuning_phase_still_returns_the_counts(
    tmp_path, main_only_confusion):
  stopped = cp_fit(cp_phases(), tmp_path, stop_after=MAIN_EPOCHS + 1)
  assert stopped.epochs_done == MAIN_EPOCHS + 1 and len(stopped.phase_states) == 2
  resumed = cp_fit(cp_phases(), tmp_path)
  assert resumed.epochs_done == MAIN_EPOCHS + FT_EPOCHS
  np.testing.assert_array_equal(np.asarray(resumed.phase_states[0]["confusion"]),
                                main_only_confusion)
  # A rerun of the finished run trains nothing and restores them from its checkpoint.
  rerun = cp_fit(cp_phases(), tmp_path)
  np.testing.assert_array_equal(np.asarray(rerun.phase_states[0]["confusion"]),
                                main_only_confusion)


def test_a_run_stopped_in_its_first_phase_has_one_phase_state():
  result = cp_fit(cp_phases(), stop_after=1)
  assert len(result.phase_states) == 1
  assert result.phase_states[0] is result.state.method_state


# ---------------------------------------------------------------- runner phases

def digits_config(arg):
  return compare.load_config_module(DIGITS).get_config(arg)


def updated_modules(phase, model):
  """Names of the top-level modules whose parameters `phase.tx` moves on unit gradients."""
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)["params"]
  updates, _ = phase.tx.update(jax.tree.map(jnp.ones_like, params), phase.tx.init(params),
                               params)
  return {name for name, tree in updates.items()
          if any(np.abs(np.asarray(u)).max() > 0 for u in jax.tree.leaves(tree))}


def test_build_phases_adds_cp_mix_finetuning_from_its_requirements():
  cfg = digits_config("method=cp_mix,quick")
  rcp = runner.build_recipe(cfg)
  main, finetune = runner.build_phases(cfg, rcp, 450)
  assert main.recipe is rcp and main.epochs == cfg.num_epochs and main.train_batch_stats
  assert isinstance(finetune.recipe, methods.CPMixFinetune)
  assert finetune.recipe.logit_scale == rcp.logit_scale
  assert finetune.epochs == cfg.finetune.num_epochs >= 1
  assert not finetune.train_batch_stats
  model = get_model("small_cnn", 10, widths=(4,))
  assert updated_modules(finetune, model) == {"head"}
  assert updated_modules(main, model) == set(model.init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)["params"])
  with cfg.unlocked():
    cfg.finetune.num_epochs = 0
  assert len(runner.build_phases(cfg, rcp, 450)) == 1


def test_build_phases_of_erm_is_the_main_phase_only():
  cfg = digits_config("method=erm,quick")
  (main,) = runner.build_phases(cfg, runner.build_recipe(cfg), 450)
  assert main.recipe.name == "erm" and main.epochs == cfg.num_epochs


@dataclasses.dataclass(frozen=True)
class ERMThenBalanced(methods.ERM):
  """A recipe that is not CP-Mix but declares a follow-up phase (LOBM, all parameters)."""
  name: str = "erm_then_lobm"

  def requirements(self):
    return dataclasses.replace(super().requirements(), extra_phases=(methods.LOBM(),))


def test_build_phases_follows_any_recipe_s_extra_phases():
  cfg = digits_config("method=erm,quick")
  with cfg.unlocked():
    cfg.finetune.num_epochs = 2
  main, follow = runner.build_phases(cfg, ERMThenBalanced(), 450)
  assert isinstance(follow.recipe, methods.LOBM) and follow.epochs == 2
  assert follow.train_batch_stats
  model = get_model("small_cnn", 10, widths=(4,))
  assert updated_modules(follow, model) == updated_modules(main, model)


# ------------------------------------------------- requirements against the losses

# One recipe per structurally different loss (every registry entry maps onto one of these).
CASES = {
    **{name: methods.get_recipe(name, num_epochs=4)
       for name in ("erm", "ldam_drw", "cmo", "mixup", "remix_drw", "smote_mix",
                    "neighbor_mix", "lobm", "lobm_star", "cp_mix", "otmix", "otmix_ldam")},
    "neighbor_mix_pixels": methods.get_recipe("neighbor_mix", num_epochs=4,
                                              pairing_space="pixels"),
    "sbn_mix": methods.get_recipe("sbn_mix", num_epochs=4, gamma=2.0),
    "dbn_mix": methods.get_recipe("dbn_mix", num_epochs=4, gamma=2.0),
    "otmix_train": methods.get_recipe("otmix", num_epochs=4, ot_features="train"),
    "otmix_unpooled": methods.get_recipe("otmix", num_epochs=4,
                                         ot_features="train_unpooled"),
    "cp_mix_finetune": methods.CPMixFinetune(),
}
LAW_FUNCTIONS = {"instance": "instance_balanced_probs",
                 "class_balanced": "class_balanced_probs", "reverse": "reverse_probs",
                 "inverse_power": "inverse_power_probs"}


def model_for(rcp, branches):
  if branches == 2:
    return get_model("dual_small_cnn", K, head=rcp.head, widths=(4, 8))
  return get_model("small_cnn", K, head=rcp.head, widths=(4, 8))


def dropping(apply_fn, key):
  """`apply_fn` whose outputs lack `key`."""
  def apply(variables, x, **kwargs):
    out = apply_fn(variables, x, **kwargs)
    drop = lambda o: {k: v for k, v in o.items() if k != key}
    return (drop(out[0]), out[1]) if isinstance(out, tuple) else drop(out)
  return apply


def trace_loss(rcp, apply_fn, variables):
  """Traces `rcp.loss` abstractly on one step (every lax.cond branch is traced)."""
  d = data()
  ctx = recipe_lib.StepContext(
      key=jax.random.key(0), step=jnp.int32(0), epoch=jnp.int32(0), num_epochs=4,
      batch_size=B, clean_indices=jnp.arange(B, dtype=jnp.int32), data=d,
      load=training.make_load(d, None, normalize))
  state = rcp.init_state(d.class_counts)
  forward = recipe_lib.Forward(apply_fn, variables["params"], variables.get("batch_stats", {}))
  return jax.eval_shape(lambda: rcp.loss(forward, ctx, state)[0])


def traces(rcp, branches, drop=None):
  """Whether the loss traces with a model of `branches` branches without output `drop`."""
  model = model_for(rcp, branches)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  apply_fn = model.apply if drop is None else dropping(model.apply, drop)
  try:
    trace_loss(rcp, apply_fn, variables)
  except (KeyError, TypeError, ValueError):
    return False
  return True


@pytest.mark.parametrize("name", sorted(CASES))
def test_requirements_match_what_the_loss_uses(name):
  rcp = CASES[name]
  needs = rcp.requirements()
  assert traces(rcp, needs.branches)
  assert traces(rcp, 1) == (needs.branches == 1)
  assert traces(rcp, needs.branches, drop="features") == (not needs.needs_features)
  assert traces(rcp, needs.branches, drop="feature_map") == (not needs.needs_feature_map)


@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_draws_are_the_class_laws_the_loss_draws(name, monkeypatch):
  used = set()

  def recording(law, fn):
    def wrapped(*args, **kwargs):
      used.add(law)
      return fn(*args, **kwargs)
    return wrapped

  for law, fn_name in LAW_FUNCTIONS.items():
    monkeypatch.setattr(samplers, fn_name, recording(law, getattr(samplers, fn_name)))
  monkeypatch.setattr(pairing, "confusion_partners",
                      recording("confusion", pairing.confusion_partners))
  rcp = CASES[name]
  assert traces(rcp, rcp.requirements().branches)
  assert used == {law.name for law in rcp.requirements().draws}


class LogitsOnly(nn.Module):
  """A model without "features" (nor "feature_map")."""
  head: str = "linear"

  @nn.compact
  def __call__(self, x, train=False):
    return {"logits": nn.Dense(K)(x.reshape(x.shape[0], -1))}


def test_check_compatible_reads_the_requirements():
  single = get_model("small_cnn", K, widths=(4,))
  mlp = get_model("mlp", K, hidden=(8,))
  x = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match="dual-branch model"):
    methods.check_compatible(CASES["dbn_mix"], single, x)
  with pytest.raises(ValueError, match="'feature_map'"):
    methods.check_compatible(CASES["otmix_unpooled"], mlp, x)
  methods.check_compatible(CASES["otmix_unpooled"], single, x)
  methods.check_compatible(CASES["otmix"], mlp, x)

  @dataclasses.dataclass(frozen=True)
  class NeedsFeatures(methods.ERM):
    def requirements(self):
      return dataclasses.replace(super().requirements(), needs_features=True)

  methods.check_compatible(methods.ERM(), LogitsOnly(), x)
  with pytest.raises(ValueError, match="'features'"):
    methods.check_compatible(NeedsFeatures(), LogitsOnly(), x)


def test_requirements_reject_unknown_class_laws():
  with pytest.raises(ValueError, match="valid: instance, class_balanced"):
    recipe_lib.Requirements(draws=(samplers.Law("balanced"),))


# ---------------------------------------------------------------- epoch context

@dataclasses.dataclass(frozen=True)
class EpochProbe(methods.ERM):
  def on_epoch(self, method_state, ctx):
    return {"epoch": ctx.epoch, "u": jax.random.uniform(ctx.key),
            "label_sum": ctx.data.labels.sum(), "num_epochs": ctx.num_epochs,
            "first": ctx.evaluate(ctx.data.images[:1])["logits"]}


def test_begin_epoch_hands_the_recipe_an_epoch_context():
  d = data()
  evaluate = lambda x: {"logits": jnp.full((x.shape[0], K), 2.0)}
  key = jax.random.key(11)
  got = EpochProbe().begin_epoch((), jnp.int32(5), d, evaluate, key, num_epochs=9)
  assert int(got["epoch"]) == 5 and got["num_epochs"] == 9
  assert float(got["u"]) == float(jax.random.uniform(key))
  assert int(got["label_sum"]) == int(LABELS.sum())
  np.testing.assert_array_equal(got["first"], np.full((1, K), 2.0))
  # The engine's call without num_epochs (loop.py) still works; the base hook is identity.
  assert EpochProbe().begin_epoch((), jnp.int32(0), d, evaluate, key)["num_epochs"] is None
  assert methods.ERM().begin_epoch("kept", jnp.int32(0), d, evaluate, key) == "kept"


# ---------------------------------------------------------------- analysis registry

EXPECTED_VIEWS = {
    **{name: ("label_occurrence_view",)
       for name in ("mixup", "mixup_drw", "remix", "remix_drw", "mamix", "mamix_drw",
                    "smote_mix", "smote_mix_drw", "neighbor_mix", "neighbor_mix_drw",
                    "lobm", "lobm_star")},
    **{name: ("label_occurrence_view", "temperature_view") for name in ("sbn_mix", "dbn_mix")},
    **{name: ("confusion_pair_view",) for name in ("cp_mix", "cp_mix_ride")},
    **{name: ("ot_pair_view",)
       for name in ("cmo", "otmix", "otmix_drw", "otmix_balms", "otmix_ldam", "otmix_saliency",
                    "ride_cmo", "otmix_ride")},
}


@pytest.mark.parametrize("name", methods.METHODS)
def test_analysis_registry_covers_every_method_with_a_view(name):
  views = analysis.lookup(analysis.VIEWS, methods.get_recipe(name, num_epochs=10)) or ()
  assert tuple(v.__name__ for v in views) == EXPECTED_VIEWS.get(name, ())


@pytest.mark.parametrize("name,expected", [
    ("erm", set()), ("smote_mix", set()), ("mixup", {"label_occurrence"}),
    ("dbn_mix", {"label_occurrence", "temperatures"}), ("cp_mix", {"cp_confusion_counts"}),
    ("cmo", {"pair_counts"})])
def test_method_views_write_their_figures(tmp_path, name, expected):
  rcp = methods.get_recipe(name, num_epochs=10)
  model = get_model("small_cnn", K, widths=(4,))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  confusion = np.arange(K * K, dtype=np.int32).reshape(K, K)
  run = analysis.RunData(
      workdir=str(tmp_path), counts=np.bincount(LABELS), class_names=list("abcd"), seed=0,
      num_draws=2, method_state={"confusion": confusion} if name == "cp_mix" else (),
      model=(model.apply, variables["params"], variables.get("batch_stats", {})), data=data(),
      normalize_fn=normalize, batch_size=B)
  out = analysis.method_views(rcp, run)
  assert set(out) == expected
  files = {"label_occurrence": "label_occurrence.png", "temperatures": "temperatures.png",
           "cp_confusion_counts": "cp_confusion_pairs.png",
           "pair_counts": "pair_statistics.png"}
  assert sorted(os.listdir(tmp_path)) == sorted(files[k] for k in expected)
  if name == "cp_mix":
    np.testing.assert_array_equal(out["cp_confusion_counts"], confusion)
  if name == "cmo":  # every foreground of every draw is pasted on one background
    assert out["pair_counts"].sum() == 2 * B


def test_a_recipe_subclass_inherits_its_parent_s_views():
  @dataclasses.dataclass(frozen=True)
  class MyMixup(methods.Mixup):
    name: str = "my_mixup"

  assert analysis.lookup(analysis.VIEWS, MyMixup()) == analysis.VIEWS[methods.Mixup]
