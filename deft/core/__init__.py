"""The method on arrays and tensors: the DEFT detector, CLIP pieces, losses, metrics, baselines, ranking.

Nothing here opens a dataset, a run folder or the review store (that is :mod:`deft.storage`), and
nothing here imports :mod:`deft.storage`, the workflows in :mod:`deft` or a front end
(``tests/test_structure.py`` checks it).
"""
