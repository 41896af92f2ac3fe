"""deft: find wrong labels with DEFT (dual prompts on CLIP), curate, train on the cleaned set.

Library first; the CLI (``python -m deft``) and the Gradio app are thin layers over it.
Names are imported lazily so that ``python -m deft --help`` does not pay for torch.
"""

from importlib import import_module

_EXPORTS = {
    "DEFAULT_MODEL": "schema", "ImageEncoder": "config", "InferenceConfig": "config", "OptimConfig": "config",
    "Phase1Config": "config", "Phase2Config": "config",
    "EXPORT_COLUMNS": "schema", "curated_labels": "curation", "export_table": "curation",
    "read_curated": "curation", "write_export": "curation",
    "Dataset": "data", "load_dataset": "load", "load_image_folder": "data", "load_table": "data",
    "DeftError": "errors", "DataError": "errors", "ModelLoadError": "errors", "RunError": "errors",
    "ReviewError": "errors",
    "DeftModel": "detector", "score": "detector",
    "auroc": "metrics", "detection_metrics": "metrics",
    "load_clip": "models", "make_noise": "noise",
    "CancelToken": "progress", "Cancelled": "progress", "ProgressEvent": "progress",
    "Run": "run", "ReviewStore": "store",
    "detect": "phase1", "rescore": "phase1", "train_classifier": "phase2", "TrainedClassifier": "phase2",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'deft' has no attribute {name!r}")
