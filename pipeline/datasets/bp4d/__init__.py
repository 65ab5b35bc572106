"""BP4D-Spontaneous (Zhang et al., 2013/2014): its facts and the readers of its release
(see ``../shared/datasets/BP4D_FACTS.md`` for the sources of every fact)."""
