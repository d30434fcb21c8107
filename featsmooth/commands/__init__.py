"""One module per ``featsmooth`` subcommand, each a plain function re-exported by
:mod:`featsmooth.api` (the public facade): :mod:`.certify` (``certify``, ``demo``,
``predict``), :mod:`.attack`, :mod:`.evaluate`, :mod:`.train` (``train_plugin``) and
:mod:`.results` (``report``, ``recompute``, ``models``). What they share (settings
resolution, the run result, image checks) is in :mod:`.common`."""
