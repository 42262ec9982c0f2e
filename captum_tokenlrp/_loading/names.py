"""The names the commands and the app take: ``--dtype`` values, and the text model that ships in an extra."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: ``--model`` name of all-MiniLM-L6-v2 from the optional extra [text].
MINILM = "minilm"
