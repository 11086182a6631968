"""detoxops.data — labelled image sets, their sources, validation and content-addressed storage.

API stable: ImageSet, load_source/load_splits, from_arrays, ingest, load_version, stratified_subset/split,
to_tensor/from_tensor (see docs/data.md).
"""

from detoxops.data.imageset import FORMAT_VERSION, ImageSet
from detoxops.data.ingest import ingest
from detoxops.data.sources import (
    BUILTIN_SOURCES,
    SourceUnavailableError,
    from_arrays,
    load_source,
    load_splits,
    source_name,
)
from detoxops.data.splits import (
    split_validation,
    stratified_split,
    stratified_split_indices,
    stratified_subset,
    stratified_subset_indices,
)
from detoxops.data.store import is_version_dir, load_version, save_version, version_hash, version_info
from detoxops.data.tensors import from_tensor, to_tensor
from detoxops.data.validate import ImagePolicy

__all__ = [
    "BUILTIN_SOURCES",
    "FORMAT_VERSION",
    "ImagePolicy",
    "ImageSet",
    "SourceUnavailableError",
    "from_arrays",
    "from_tensor",
    "ingest",
    "is_version_dir",
    "load_source",
    "load_splits",
    "load_version",
    "save_version",
    "source_name",
    "split_validation",
    "stratified_split",
    "stratified_split_indices",
    "stratified_subset",
    "stratified_subset_indices",
    "to_tensor",
    "version_hash",
    "version_info",
]
