"""The process and its node: cores and threads (``cores``), CPU features (``cpu``), starting
TensorFlow (``startup``, the one place that first imports it), signals and the walltime budget
(``stopper``, ``walltime``), locks, safe reads of uncurated folders (``safeio``), the clock,
and the tests' failure-injection hook (``faults``). Importing this package never imports
TensorFlow."""
