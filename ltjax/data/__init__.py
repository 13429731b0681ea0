"""Long-tailed datasets: containers, offline sources, a cache, and a grain pipeline.

`get_dataset(name, ...)` is the entry point (names in `DATASETS`). The grain input pipeline
lives in `ltjax.data.pipeline` and is not imported here, so `import ltjax.data` pulls in
neither grain nor TensorFlow.
"""

from ltjax.data._io import ChecksumError, DataError, default_cache_dir
from ltjax.data.dataset import ArrayDataset, FileListDataset, make_longtail
from ltjax.data.registry import DATASETS, DEFAULT_LONGTAIL, get_dataset

__all__ = ["ArrayDataset", "ChecksumError", "DATASETS", "DEFAULT_LONGTAIL", "DataError",
           "FileListDataset", "default_cache_dir", "get_dataset", "make_longtail"]
