"""Measured studies built on the engine and the app: the cross-rule table (:mod:`.compare`),
self-supervised probes (:mod:`.selfsup`, :mod:`.probe`), associative recall (:mod:`.recall`),
perturbation scaling (:mod:`.perturbation_scaling`) and the dendritic microcircuit (:mod:`.dendritic`). Nothing outside this package imports it."""
