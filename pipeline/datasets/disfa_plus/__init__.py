"""DISFA+ (Mavadati et al., CVPRW 2016): its facts and the readers of its release
(see ``../shared/datasets/DISFAPLUS_FACTS.md`` for the sources of every fact)."""
