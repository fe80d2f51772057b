"""negmerge_cli: unlearning by weight negation (NegMerge) and streaming checkpoint merging.

The library API lives in :mod:`negmerge_cli.stages`; the ``negmerge`` command line is a thin layer
over it (:mod:`negmerge_cli.cli`).
"""

__version__ = "0.1.0"
