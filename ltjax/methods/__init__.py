"""Long-tailed training methods as recipes (`ltjax.recipe.Recipe`), one module per family.

`get_recipe(name, num_epochs=...)` builds any of `METHODS` with its paper defaults;
`get_protocol(name, kind)` is each method's CIFAR-LT training protocol as its paper states it
("paper") and as its authors' code trains it ("code"), the one home of those numbers (see
`ltjax.methods.protocols`); `check_compatible(recipe, model)` rejects invalid method/model
combinations.
"""

from ltjax.methods.bilateral import DBNMix, SBNMix
from ltjax.methods.cp_mix import CPMix, CPMixFinetune
from ltjax.methods.criteria import Criterion
from ltjax.methods.erm import ERM
from ltjax.methods.lobm import LOBM
from ltjax.methods.manifold import ManifoldMixup
from ltjax.methods.mixup import Mixup
from ltjax.methods.otmix import OTmix
from ltjax.methods.protocols import PROTOCOLS, get_protocol
from ltjax.methods.registry import METHODS, check_compatible, get_recipe, hyperparameters
from ltjax.methods.ride import RIDE, RIDERouting

__all__ = ["CPMix", "CPMixFinetune", "Criterion", "DBNMix", "ERM", "LOBM", "METHODS",
           "ManifoldMixup", "Mixup", "OTmix", "PROTOCOLS", "RIDE", "RIDERouting", "SBNMix",
           "check_compatible",
           "get_protocol", "get_recipe", "hyperparameters"]
