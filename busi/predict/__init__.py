"""Headless prediction over folders: the job (``job``, ``busi-job predict``), its CSV (``output``:
columns, the streaming sink, done markers), shards (``shards``) and their merge (``merge``),
Grad-CAM overlays (``overlays``)."""
