"""Save a tiny random CLIP (with tokenizer and preprocessor config) to a folder.

For trying the app and CLI with no internet: ``python scripts/make_tiny_clip.py runs/tiny-clip``
then ``python app.py --model runs/tiny-clip``. Its weights are random, so detections are noise;
use a real checkpoint folder (e.g. openai/clip-vit-base-patch16 saved with save_pretrained) for real work.

Needs the package installed (``pip install -e .``); from the repository root without installing,
``python -m deft.testing runs/tiny-clip`` does the same.
"""

import sys

from deft.testing import main

if __name__ == "__main__":
    main(sys.argv[1:])
