"""Sweeps: many training jobs (trials) from one request, compared, with early stopping. One module per concept.

- ``spec``: the request, checked against the job parameters' declarations, and its trials;
- ``record``: the sweep's record, its status (derived from its trials') and the view the API answers;
- ``stopping``: the early-stopping rules (median, ASHA) as pure functions;
- ``summary``: per setting, the served models' accuracy across seeds; the best trial;
- ``store``: ``SweepStore``, the sweep and its trial jobs in Redis, created atomically;
- ``errors``: what the store raises.

Import from the modules (``from bnlenet.sweeps.store import SweepStore``): this package imports
nothing itself, so ``bnlenet.jobs`` and the worker can use any part without pulling in the rest.
"""
