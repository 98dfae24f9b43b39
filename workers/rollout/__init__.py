"""policyopt.workers.rollout: the rollout worker and its reward-endpoint client.

Public surface: ``RolloutWorker`` (``worker``), ``RewardClient`` and ``ScoreInput`` (``reward_client``),
``serve_rollout`` (``service``, what ``policyopt worker rollout`` and ``python -m`` run).
"""
