"""busi: a breast ultrasound (BUSI) classifier as a batch job.

Importing this package must stay cheap: it never imports TensorFlow. Modules that
need TensorFlow import it inside functions, after thread pools are configured.
"""

__version__ = "0.1.0"
