"""External validity (issue 23): training runs the factory never made, written as users write them.

One idea per module:

* :mod:`.data` — offline data sets (scikit-learn, procedural, standard-library text);
* :mod:`.models` — the model zoo (torchvision, timm, plain ``torch.nn``; never the factory's);
* :mod:`.recipes` — optimizers and learning-rate schedules as users set them;
* :mod:`.scenarios` — healthy runs and the injected faults;
* :mod:`.suite` — the two pre-registered halves, ``external-dev`` and ``external-test``;
* :mod:`.record` — each run trained under the public ``TrialMonitor``, recorded and cached;
* :mod:`.corpus` — the factory corpus the trained baselines learn from;
* :mod:`.truth` — ground truth from what actually happened;
* :mod:`.rules` — the stopping rules users already rely on;
* :mod:`.methods` — every method scored on the recordings;
* :mod:`.report` — tables and figure; :mod:`.pipeline` — all of it, ``python -m experiments.external``.

Example:
    >>> from experiments.external.suite import DEV, TEST
    >>> {s.half for s in DEV}, {s.half for s in TEST}
    ({'external-dev'}, {'external-test'})
"""
