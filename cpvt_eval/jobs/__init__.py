"""The application layer: jobs built from the library (models, data, engine, probes, results, reports).

``run`` is the one job of every probe (``run_probe``; ``run_resolution``, ``run_shift``, ``run_agreement``): it
measures models at sizes into a run directory (``rundir``), one row per cell (``rows``), from the dataset as every
probe opens it (``inputs``) and the models as they are assembled from their checkpoints (``assemble``). The
command line calls these and only renders.
"""
