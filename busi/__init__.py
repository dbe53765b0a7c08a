"""busi: a breast ultrasound (BUSI) classifier as a batch job.

The library, by area (each subpackage's docstring says what it owns)::

    busi/cli.py      busi-job: subcommands only (job/, slurm/ and containers/ call only this)
    busi/errors.py   named errors and their exit codes
    busi/config/     job files: schema, loading, layering, validation
    busi/data/       datasets: staging, scanning, duplicates, splits, folds, decoding, pipeline
    busi/model/      the network, weights, feature cache, engines, the model folder, export
    busi/train/      the training job in stages, the loop, checkpoints, TensorBoard, CV runs
    busi/predict/    prediction over folders: the job, its CSV, shards, merge, overlays
    busi/evaluate/   metrics, intervals, calibration, screening, explanations, the evaluation writer
    busi/report/     report.html, the model card, terminal text
    busi/distributed/  who a rank is, and what ranks do together (Horovod)
    busi/runtime/    cores and threads, starting TensorFlow, signals, walltime, locks, safe reads
    busi/files/      atomic writes, the text rules, the run directory and its manifest
    busi/perf/       busi-job bench and the walltime estimate

Imports go downward only (cli > train > evaluate > report, predict > model > data > config,
files, runtime > errors). Importing busi, or any of config, data, files, runtime and
distributed, never imports TensorFlow: modules that need it import it inside functions,
after ``busi.runtime.startup.start_tensorflow`` has set the thread pools.
"""

__version__ = "0.1.0"
