"""Performance on this node: ``busi-job bench`` (``bench``, each configuration measured by a
``worker`` process) and the walltime a job needs (``estimate``)."""
