"""Private implementation of hyperjax. Public names are re-exported from `hyperjax/*.py`."""
