"""Job files: the schema (``schema``: frozen dataclasses and the ``Literal`` aliases every other
module derives its allowed values from), loading (``load``: strict YAML, ``layers``,
``interpolate``), validation (``validate``) and the generated reference (``reference``).
Never imports TensorFlow."""
