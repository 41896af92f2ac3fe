"""Save a tiny random CLIP (with tokenizer and preprocessor config) to a folder.

For trying the app and CLI with no internet: ``python scripts/make_tiny_clip.py runs/tiny-clip``
then ``python app.py --model runs/tiny-clip``. Its weights are random, so detections are noise;
use a real checkpoint folder (e.g. openai/clip-vit-base-patch16 saved with save_pretrained) for real work.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deft.testing import save_tiny_clip  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-clip")
    if not (out / "config.json").is_file():
        save_tiny_clip(out)
    print(f"tiny random CLIP in {out}")
