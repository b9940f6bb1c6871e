"""The ``shelver`` command: thin click commands over the library, one module per stage.

```
common.py      the ``main`` group (ShelverGroup: a ShelverError is one line on stderr and exit 1,
               never a traceback) and the options several commands share
data.py        labeled data: label, labels export/audit/import, synthesize
model.py       the model: finetune, train, calibrate, evaluate, predict
production.py  serving it: export, serve, classify-batch
bootstrap.py   cold start: label, train, evaluate, export and review in one resumable run
```

Heavy imports happen inside each command so ``shelver --help`` is instant. Importing this package
registers every command on ``main`` (``shelver --help`` lists them sorted by name).
"""

from __future__ import annotations

from shelver.cli import bootstrap, data, model, production  # noqa: F401  (register the commands)
from shelver.cli.common import main

__all__ = ["main"]
