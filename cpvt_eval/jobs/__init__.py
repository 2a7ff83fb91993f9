"""The application layer: jobs built from the library (models, data, engine, results, reports).

``resolution`` evaluates models at sizes and writes a run directory; ``shift`` measures their consistency under
translation into the same kind of directory; ``throughput`` times models alone;
``catalog`` describes the registered models. The command line calls these and only renders.
"""
