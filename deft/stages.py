"""Names shared across modules and front ends, defined once (values are the strings stored on disk).

:class:`Stage` names progress events and log lines; :class:`RunStatus` is ``run.json``'s
``status``; :class:`JobName` names the app's background jobs. They are ``StrEnum`` members,
so they compare equal to (and serialise as) their plain string values: code that still
compares ``ev.stage == "score"`` keeps working.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A long loop, as reported in :class:`deft.progress.ProgressEvent` and ``RUN/log.jsonl``."""

    DECODE = "decode"  # images decoded into the run's cache
    FEATURES = "features"  # frozen image embeddings (quick preview, audit)
    PHASE1 = "phase1"  # detector training epochs
    SCORE = "score"  # the detector's scoring pass
    PHASE2 = "phase2"  # classifier fine-tuning epochs


class RunStatus(StrEnum):
    """``RUN/run.json``'s ``status``."""

    CREATED = "created"
    TRAINING = "training"
    SCORED = "scored"


class JobName(StrEnum):
    """The app's background jobs (:class:`deft.jobs.Job` names)."""

    DETECTION = "detection"
    AUDIT = "audit"
    TRAINING = "training"
