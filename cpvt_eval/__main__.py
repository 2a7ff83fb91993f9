"""``python -m cpvt_eval`` (also the entry torchrun starts)."""

from .cli import entry

if __name__ == "__main__":
    entry()
