"""``python -m experiments.hpo_benchmark``: the benchmark's command line (:func:`main`)."""

from experiments.hpo_benchmark.driver import main

main()
