"""Training CLIs: ``python -m trainers.sft|cpt|msft --config configs/<profile>/<job>.yaml`` (see docs/ARCHITECTURE.md).

Public API for other modules: ``trainers.sft.run(tcfg, app, resume)``, ``trainers.cpt.run``, ``trainers.msft.run``
(each returns the final status dict). Run dirs are written through ``medadapt.jobs.rundir``; adapters published by
``trainers.publish``.
"""
