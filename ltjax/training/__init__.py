"""The training engine: state, schedules, optimiser, compiled epoch, evaluation,
checkpoints, data parallelism and the `fit` loop."""

from ltjax.training.checkpoint import Checkpointer
from ltjax.training.evaluation import evaluate, make_eval_fn
from ltjax.training.loop import TrainEpoch, make_load, make_train_epoch
from ltjax.training.optim import current_lr, path_mask, sgd
from ltjax.training.schedules import get_schedule, warmup_cosine, warmup_multistep
from ltjax.training.sharding import make_mesh, replicate
from ltjax.training.state import TrainState, create_state, run_keys, start_phase
from ltjax.training.trainer import FitResult, Phase, fit

__all__ = [
    "Checkpointer", "FitResult", "Phase", "TrainEpoch", "TrainState", "create_state",
    "current_lr", "evaluate", "fit", "get_schedule", "make_eval_fn", "make_load",
    "make_mesh", "make_train_epoch", "path_mask", "replicate", "run_keys", "sgd",
    "start_phase", "warmup_cosine", "warmup_multistep",
]
