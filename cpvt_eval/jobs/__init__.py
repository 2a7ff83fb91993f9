"""The application layer: jobs built from the library (models, data, engine, probes, results, reports).

``run`` is the one job of every probe and of several at once (``run_probe``, ``run_probes``, ``evaluate``): it
measures models at sizes into a run directory (``rundir``), one row per cell (``rows``), from the dataset as every
probe opens it (``inputs``, in the models' label space: ``label_spaces``) and the models as they are assembled from
their checkpoints (``assemble``, ``model_names``). The command line calls these and only renders.
"""
