"""``python -m captum_tokenlrp.cli``, as torchrun launches the command (``torchrun ... -m captum_tokenlrp.cli``)."""

from ._main import main

raise SystemExit(main())
