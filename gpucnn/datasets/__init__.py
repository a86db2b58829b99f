"""Data files shipped inside the package (see README.md here for attribution).

``digits.npz``: the UCI optical handwritten digits (1,797 8x8 images, CC BY 4.0),
read by :func:`gpucnn.data.load_digits`.
"""
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
DIGITS_FILE = DATA_DIR / "digits.npz"
