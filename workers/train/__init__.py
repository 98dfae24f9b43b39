"""policyopt.workers.train: the trainer worker.

Public surface: ``TrainerWorker`` (``worker``), ``serve_trainer`` (``service``, what ``policyopt worker
train`` and ``python -m policyopt.workers.train`` run). A step's parts: ``collect`` (groups from the queue),
``session`` (a run's model, method and updater), ``update`` (``PolicyUpdater``), ``checkpoint``,
``recovery`` (finishing an interrupted commit), ``lease`` (run ownership).
"""
