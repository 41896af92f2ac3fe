"""deft: find wrong labels with DEFT (dual prompts on CLIP), curate, train on the cleaned set.

Library first; the CLI (``python -m deft``) and the Gradio app are thin layers over it.
"""

from .config import DEFAULT_MODEL, OptimConfig, Phase1Config, Phase2Config
from .curation import EXPORT_COLUMNS, curated_labels, export_table, read_curated, write_export
from .data import DataError, Dataset, load_dataset, load_image_folder, load_table
from .metrics import auroc, detection_metrics
from .models import ModelLoadError, load_clip
from .noise import make_noise
from .progress import Cancelled, CancelToken, ProgressEvent
from .run import Run, RunError
from .store import ReviewError, ReviewStore

__all__ = [
    "DEFAULT_MODEL", "EXPORT_COLUMNS", "CancelToken", "Cancelled", "DataError", "Dataset", "ModelLoadError",
    "OptimConfig", "Phase1Config", "Phase2Config", "ProgressEvent", "ReviewError", "ReviewStore", "Run",
    "RunError", "auroc", "curated_labels", "detection_metrics", "export_table", "load_clip", "load_dataset",
    "load_image_folder", "load_table", "make_noise", "read_curated", "write_export",
]
