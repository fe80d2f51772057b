"""The ``negmerge`` command line: one thin module per command over :mod:`negmerge_cli.stages`."""
