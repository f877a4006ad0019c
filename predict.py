"""Classify images: `python predict.py --ckpt RUN/checkpoints/best.ckpt PATH [PATH …] --output preds.csv`."""

import sys

from busi.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
