"""``python -m experiments.evaluate``: the evaluation's command line (:func:`main`)."""

from experiments.evaluate.driver import main

main()
