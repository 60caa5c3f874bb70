"""Measured studies built on the engine and the app: the cross-rule table (:mod:`.compare`),
self-supervised probes (:mod:`.selfsup`, :mod:`.probe`), associative recall (:mod:`.recall`)
and perturbation scaling (:mod:`.perturbation_scaling`). Nothing outside this package imports it."""
