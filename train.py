"""Train busi: `python train.py [--config configs/scratch.yaml] [--data.root …] [--trainer.max_epochs …]`."""

import sys

from busi.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
