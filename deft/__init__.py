"""deft: find wrong labels with DEFT (dual prompts on CLIP), curate, train on the cleaned set.

Library first; the CLI (``python -m deft``) and the Gradio app are thin layers over it.
Names are imported lazily so that ``python -m deft --help`` does not pay for torch.
"""

from importlib import import_module

_EXPORTS = {
    "DEFAULT_MODEL": "core.schema", "EXPORT_COLUMNS": "core.schema",
    "ImageEncoder": "core.config", "InferenceConfig": "core.config", "OptimConfig": "core.config",
    "Phase1Config": "core.config", "Phase2Config": "core.config",
    "DeftError": "core.errors", "DataError": "core.errors", "ModelLoadError": "core.errors", "RunError": "core.errors",
    "ReviewError": "core.errors",
    "DeftModel": "core.detector", "score": "core.detector",
    "auroc": "core.metrics", "detection_metrics": "core.metrics",
    "load_clip": "core.models", "make_noise": "core.noise",
    "CancelToken": "core.progress", "Cancelled": "core.progress", "ProgressEvent": "core.progress",
    "Dataset": "storage.data", "load_image_folder": "storage.data", "load_table": "storage.data",
    "load_dataset": "storage.load",
    "curated_labels": "storage.export", "export_table": "storage.export", "read_curated": "storage.export",
    "write_export": "storage.export",
    "Run": "storage.run", "ReviewStore": "storage.store",
    "detect": "detection", "rescore": "detection", "train_classifier": "training", "TrainedClassifier": "training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'deft' has no attribute {name!r}")
