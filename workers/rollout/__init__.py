"""policyopt.workers.rollout: the rollout worker and its reward-endpoint client.

Public surface: ``RolloutWorker`` (``worker``), ``RewardClient`` and ``ScoreInput`` (``reward_client``),
``serve_rollout`` (``__main__``, what ``policyopt worker rollout`` runs).
"""
