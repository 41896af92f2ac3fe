"""Model pieces: CLIP loading, CoOp prompt learner, deep VPT, classifier."""

from deft.core.models.clip import ClipBundle, ModelLoadError, load_clip
from deft.core.models.prompts import PromptLearner, encode_text_embeddings
from deft.core.models.vpt import DeepVPT, encode_image

__all__ = [
    "ClipBundle",
    "DeepVPT",
    "ModelLoadError",
    "PromptLearner",
    "encode_image",
    "encode_text_embeddings",
    "load_clip",
]
