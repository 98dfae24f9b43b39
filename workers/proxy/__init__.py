"""``policyopt proxy``: an OpenAI-compatible chat-completions endpoint that records agent sessions.

An agent points its OpenAI client at ``Proxy.base_url`` with the tenant's API key and a session id
(``x-policyopt-session`` header or the ``user`` field). Each call is rendered with the model's chat template
(``prompts``: extending the session's conversation token for token), sampled with the run's newest
version (``completions``), tool calls parsed (``messages``) and recorded in Redis (``state.episodes``).
``FinishEpisode`` turns the session into trajectories (``server/episodes.py``).
"""

from policyopt.workers.proxy.service import Proxy, serve_proxy

__all__ = ["Proxy", "serve_proxy"]
