"""Ranks of a data-parallel job. ``launchers``: who this process is (the launcher table,
standard library only); ``group``: what ranks do together (``Dist``, one process);
``horovod``: the same over Horovod's collectives (the only module importing Horovod's
TensorFlow side, lazily, through ``setup.init_dist``); ``rendezvous``: where ranks that srun
started meet (Horovod's launcher-side server, no TensorFlow). Importing the package imports
neither TensorFlow nor Horovod."""
