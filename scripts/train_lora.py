"""Thin wrapper: ``accelerate launch scripts/train_lora.py --config configs/radial_length_x2.yaml``."""

import sys

from vidattn.training.train_lora import main

if __name__ == "__main__":
    sys.exit(main())
