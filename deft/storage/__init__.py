"""Everything on disk: dataset import (folders, tables, Hugging Face, Label Studio, FiftyOne), the image
caches, run folders, training-run folders and logs, the review store, exports and atomic writes.

Builds on :mod:`deft.core`; imports no workflow of :mod:`deft` and no front end
(``tests/test_structure.py`` checks it).
"""
