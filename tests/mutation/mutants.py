"""Realistic one-line mutants of ltjax and experiments, each with the tests that should catch it.

A mutant replaces `old` (which must occur exactly once in `file`) by `new`. `tests` are the
pytest paths / node ids run against it (`run_mutants.py`). `why` says what the bug breaks.
`EQUIVALENT` keeps, per surviving mutant name, the argument that it cannot change
behaviour (such a mutant counts as covered).
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
  name: str
  file: str
  old: str
  new: str
  tests: tuple[str, ...]
  why: str


LOSSES = ("tests/test_losses.py", "tests/test_criteria.py")
PARITY_BASE = ("tests/parity/test_parity_baselines.py",)
SAMPLERS = ("tests/test_samplers.py",)
RULES = ("tests/test_label_rules.py",)
MIXING = ("tests/test_mixing.py",)
PAIRING = ("tests/test_pairing.py",)
METRICS = ("tests/test_metrics.py",)
METHODS = ("tests/test_methods.py",)
ENGINE = ("tests/test_engine.py", "tests/test_training.py")

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- losses / criteria
    Mutant("reduce_mean_as_normalized", "ltjax/losses.py",
           'if reduction == "mean":\n    return per_sample.mean()',
           'if reduction == "mean":\n    return per_sample.sum() / (soft_labels * w).sum()',
           LOSSES, "DRW mean reduction of imbalanced-DL becomes PyTorch's weighted mean"),
    Mutant("sample_weights_ignored", "ltjax/losses.py",
           "per_sample = per_sample * _float(sample_weights)",
           "per_sample = per_sample", LOSSES, "one side of a mixed batch gets weight 1"),
    Mutant("normalizer_without_weights", "ltjax/losses.py",
           "return per_sample.sum() / (soft_labels * w).sum()",
           "return per_sample.sum() / soft_labels.sum()", LOSSES + PARITY_BASE,
           "weighted mean divided by the unweighted label mass"),
    Mutant("drw_beta_power", "ltjax/losses.py",
           "inverse_effective = 1.0 / -jnp.expm1(n * _log(beta))",
           "inverse_effective = 1.0 / -jnp.expm1(_log(beta))", LOSSES,
           "DRW weights ignore the class counts"),
    Mutant("drw_switch_off_by_one", "ltjax/losses.py",
           "jnp.asarray(epoch) >= jnp.asarray(drw_epoch)",
           "jnp.asarray(epoch) > jnp.asarray(drw_epoch)", LOSSES + PARITY_BASE,
           "DRW starts one epoch late"),
    Mutant("ldam_margin_exponent", "ltjax/losses.py",
           "m = _float(counts) ** -0.25", "m = _float(counts) ** -0.5", LOSSES,
           "LDAM margins ~ n^-1/2 instead of n^-1/4"),
    Mutant("ldam_margin_not_scaled", "ltjax/losses.py",
           "adjusted = scale * (_float(logits) - y * _float(margins))",
           "adjusted = scale * _float(logits) - y * _float(margins)", LOSSES + PARITY_BASE,
           "the margin is not multiplied by s"),
    Mutant("balanced_softmax_sign", "ltjax/losses.py",
           "_float(logits) + tau * log_prior(counts)", "_float(logits) - tau * log_prior(counts)",
           LOSSES, "balanced softmax subtracts the log prior"),
    Mutant("temperature_code_form_without_k", "ltjax/losses.py",
           'slope = eps * n.shape[0] if form == "code" else eps', "slope = eps", LOSSES,
           "DBN-Mix code temperature loses its factor K"),
    Mutant("temperature_inverse", "ltjax/losses.py",
           "scaled = _float(logits) / _float(temperatures)",
           "scaled = _float(logits) * _float(temperatures)", LOSSES,
           "logits multiplied by T instead of divided"),
    Mutant("criterion_sides_swapped_lam", "ltjax/methods/criteria.py",
           "return side(labels.labels_a, lam) + side(labels.labels_b, 1.0 - lam)",
           "return side(labels.labels_a, 1.0 - lam) + side(labels.labels_b, lam)",
           ("tests/test_criteria.py",), "lambda weights the wrong side"),
    Mutant("criterion_drw_beta_ignored", "ltjax/methods/criteria.py",
           "return losses.deferred_weights(counts, epoch, self.drw_epoch, self.beta)",
           "return losses.deferred_weights(counts, epoch, self.drw_epoch)",
           ("tests/test_criteria.py", "tests/test_methods.py"),
           "a DRW beta override is silently ignored"),
    Mutant("criterion_ldam_soft_form", "ltjax/methods/criteria.py",
           'if self.label_form == "soft" or self.kind == "focal":',
           'if True:', ("tests/test_criteria.py",),
           "mixed labels go through the soft-label loss (LDAM margin split)"),
    # ---------------------------------------------------------------- samplers
    Mutant("class_balanced_is_instance", "ltjax/samplers.py",
           "present = (jnp.asarray(counts) > 0).astype(jnp.float32)",
           "present = jnp.asarray(counts, jnp.float32)", SAMPLERS,
           "class-balanced law becomes instance-balanced"),
    Mutant("reverse_exponent", "ltjax/samplers.py",
           "(c.max() / safe) ** (1.0 / gamma)", "(c.max() / safe) ** gamma", SAMPLERS,
           "reverse sampler uses gamma instead of 1/gamma"),
    Mutant("inverse_power_sign", "ltjax/samplers.py",
           "jnp.where(present, c, 1.0) ** (-r)", "jnp.where(present, c, 1.0) ** r", SAMPLERS,
           "foreground law favours the head"),
    Mutant("draw_same_key", "ltjax/samplers.py",
           "key_class, key_item = jax.random.split(key)", "key_class = key_item = key",
           SAMPLERS, "class and within-class draws share one key"),
    Mutant("draw_offset_off_by_one", "ltjax/samplers.py",
           "offset = jnp.minimum(jnp.floor(u * n).astype(jnp.int32), jnp.maximum(n - 1, 0))",
           "offset = jnp.minimum(jnp.floor(u * (n - 1)).astype(jnp.int32), jnp.maximum(n - 1, 0))",
           SAMPLERS, "the last image of a class is never drawn"),
    Mutant("class_index_unstable", "ltjax/samplers.py",
           "starts = (jnp.cumsum(counts) - counts).astype(jnp.int32)",
           "starts = jnp.cumsum(counts).astype(jnp.int32)", SAMPLERS,
           "class starts shifted by one class"),
    Mutant("epoch_permutation_sorted", "ltjax/samplers.py",
           "perm = jax.random.permutation(key, num_samples)[:steps * batch_size]",
           "perm = jnp.arange(num_samples)[:steps * batch_size]",
           SAMPLERS + ("tests/test_engine.py",), "epochs are not shuffled"),
    # ---------------------------------------------------------------- label rules / mixing
    Mutant("remix_threshold_direction", "ltjax/label_rules.py",
           "to_b = (n_a >= kappa * n_b) & (lam < tau)", "to_b = (n_a >= kappa * n_b) & (lam > tau)",
           RULES, "Remix moves the label for the wrong lambda"),
    Mutant("mamix_crossover_exponent", "ltjax/label_rules.py",
           "return 1.0 / (1.0 + (n_b / n_a) ** omega)", "return 1.0 / (1.0 + (n_a / n_b) ** omega)",
           RULES, "MAMix crossover favours the majority"),
    Mutant("cpmix_count_ratio", "ltjax/label_rules.py",
           "return t * lam + (1.0 - t) * n_b / (n_a + n_b)",
           "return t * lam + (1.0 - t) * n_a / (n_a + n_b)", RULES,
           "CP-Mix label favours the majority side"),
    Mutant("bilateral_swapped", "ltjax/label_rules.py",
           "return jnp.maximum(lam, 1.0 - lam), jnp.minimum(lam, 1.0 - lam)",
           "return jnp.minimum(lam, 1.0 - lam), jnp.maximum(lam, 1.0 - lam)", RULES + METHODS,
           "DBN-Mix branches get each other's dominance"),
    Mutant("mix_inputs_swapped", "ltjax/mixing.py",
           "return lam * a.astype(dtype) + (1 - lam) * b.astype(dtype)",
           "return (1 - lam) * a.astype(dtype) + lam * b.astype(dtype)", MIXING,
           "mixup weights swapped"),
    Mutant("cutmix_side_not_sqrt", "ltjax/mixing.py",
           "ratio = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))", "ratio = jnp.clip(1.0 - lam, 0.0, 1.0)",
           MIXING, "CutMix box area is (1-lam)^2"),
    Mutant("cutmix_lam_from_unclipped_box", "ltjax/mixing.py",
           "lam_back = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)",
           "lam_back = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * height)",
           MIXING, "box area normalised by the wrong side"),
    Mutant("paste_box_inverted", "ltjax/mixing.py",
           "return jnp.where(mask, x_fore, x_back), lam_back",
           "return jnp.where(mask, x_back, x_fore), lam_back", MIXING,
           "the background is pasted into the foreground"),
    # ---------------------------------------------------------------- pairing
    Mutant("fhat_renormalised", "ltjax/pairing.py",
           "return jnp.where(jnp.eye(num_classes, dtype=bool), 0, rows)",
           "rows = jnp.where(jnp.eye(num_classes, dtype=bool), 0, rows)\n"
           "  return rows / jnp.maximum(rows.sum(1, keepdims=True), 1e-12)", PAIRING,
           "F_hat rows renormalised after zeroing the diagonal (the old defect)"),
    Mutant("confusion_counts_correct_predictions", "ltjax/pairing.py",
           "wrong = (labels != predictions).astype(counts.dtype)",
           "wrong = jnp.ones_like(labels).astype(counts.dtype)", PAIRING,
           "CP-Mix confusion counts include correct predictions"),
    # ---------------------------------------------------------------- metrics
    Mutant("margin_rival_includes_own", "ltjax/metrics.py",
           "rival = jnp.where(true_class, -jnp.inf, logits).max(axis=1)",
           "rival = logits.max(axis=1)", METRICS, "margins never positive"),
    Mutant("margin_gap_majority_threshold", "ltjax/metrics.py",
           "majority = n > n.sum() / n.shape[0]", "majority = n >= n.max()", METRICS,
           "only the largest class counts as majority"),
    Mutant("group_accuracy_unweighted", "ltjax/metrics.py",
           "w = jnp.where(groups == g, t, 0.0)", "w = jnp.where(groups == g, 1.0, 0.0)",
           METRICS, "group accuracy ignores the test counts"),
    Mutant("confusion_transposed", "ltjax/metrics.py",
           "flat = jnp.asarray(labels) * num_classes + jnp.asarray(predictions)",
           "flat = jnp.asarray(predictions) * num_classes + jnp.asarray(labels)", METRICS,
           "confusion rows are predictions"),
    # ---------------------------------------------------------------- methods
    Mutant("cp_mix_stage2_off_by_one", "ltjax/methods/cp_mix.py",
           "stage2 = ctx.epoch >= self.stage2_epoch", "stage2 = ctx.epoch > self.stage2_epoch",
           METHODS, "CP-Mix stage 2 starts one epoch late"),
    Mutant("cp_mix_predictions_from_mixed", "ltjax/methods/cp_mix.py",
           "confusion = pairing.confusion_matrix_update(method_state[\"confusion\"], clean.labels,\n"
           "                                                predictions)",
           "confusion = method_state[\"confusion\"]", METHODS,
           "CP-Mix never collects confusion pairs"),
    Mutant("cp_mix_cp_batch_vanilla_labels", "ltjax/methods/cp_mix.py",
           'alpha=self.alpha, rule=label_rules.get_rule("cpmix", t=self.t))',
           "alpha=self.alpha, rule=label_rules.vanilla)", METHODS,
           "the CP batch uses vanilla labels"),
    Mutant("lobm_second_side_same_key", "ltjax/methods/lobm.py",
           "return ctx.draw(key_a, probs), ctx.draw(key_b, probs)",
           "return ctx.draw(key_a, probs), ctx.draw(key_a, probs)", METHODS,
           "LOBM's two samplers are the same draw"),
    Mutant("lobm_star_defer_off_by_one", "ltjax/methods/lobm.py",
           "return jax.lax.cond(ctx.epoch >= self.defer_epoch",
           "return jax.lax.cond(ctx.epoch > self.defer_epoch", METHODS,
           "LOBM* switches one epoch late"),
    Mutant("erm_soft_labels_wrong", "ltjax/methods/erm.py",
           "mixing.MixedLabels.hard(labels)", "mixing.MixedLabels.hard(labels[::-1])",
           METHODS + PARITY_BASE, "ERM trains on shuffled labels"),
    # ---------------------------------------------------------------- recipe contract
    Mutant("draw_ignores_probs", "ltjax/recipe.py",
           "idx = samplers.draw_indices(key_idx, self.data.index, probs, num or self.batch_size)",
           "idx = samplers.draw_instances(key_idx, self.num_classes and self.data.num_samples,"
           " num or self.batch_size)", METHODS,
           "every class-law draw becomes instance-balanced"),
    Mutant("step_keys_collide", "ltjax/recipe.py",
           "return {n: jax.random.fold_in(self.key, i) for i, n in enumerate(names)}",
           "return {n: self.key for n in names}", METHODS + ("tests/test_engine.py",),
           "every named sub-key of a step is the same key"),
)

EQUIVALENT: dict[str, str] = {}
