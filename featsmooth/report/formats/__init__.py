"""Report formats, one module each; every module registers itself with
:func:`featsmooth.report.registry.register` and is found by
:func:`featsmooth.report.registry.formats`. Keep imports here light (no numpy or
matplotlib at module level): the command line's ``--help`` lists these formats."""
