"""OpenRLHF reward function that calls ``POST /get_reward`` through the tokencredit client.

OpenRLHF's HTTP reward client (``--reward.remote_url http://...``) sends no headers, so it cannot
reach a pool that has API keys. Pointed at this *file* instead, OpenRLHF 0.11.2 loads it with
``spec_from_file_location`` and calls ``reward_func(queries, prompts, labels)`` in its rollout
workers (``SingleTurnAgentExecutor``); this sends the same request with the bearer key, the
client's retries and failover::

    --reward.remote_url "$(python -c 'import trainer.openrlhf.reward_func as m; print(m.__file__)')"

Configuration: the launcher's variables (``TOKENCREDIT_URLS``, ``TOKENCREDIT_API_KEY``,
``TOKENCREDIT_TIMEOUT``, ``TOKENCREDIT_RETRIES``), which reach every Ray worker.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from client import RetryPolicy, TeacherClient, Timeout

_lock = threading.Lock()
_client: TeacherClient | None = None


def _get_client() -> TeacherClient:
    global _client
    with _lock:
        if _client is None:
            urls = os.environ.get("TOKENCREDIT_URLS") or os.environ.get("TOKENCREDIT_URL") or ""
            _client = TeacherClient(
                [u.strip() for u in urls.split(",") if u.strip()] or None,
                api_key=os.environ.get("TOKENCREDIT_API_KEY") or None,
                timeout=Timeout(float(os.environ.get("TOKENCREDIT_TIMEOUT") or 180), connect=5.0),
                retry=RetryPolicy(retries=int(os.environ.get("TOKENCREDIT_RETRIES") or 4)),
            )
        return _client


def reward_func(queries: list[str], prompts: list[str], labels: list[Any]) -> dict[str, Any]:
    """OpenRLHF's ``reward_func`` contract: ``{"rewards", "scores", "extra_logs"}``."""
    answer = _get_client().reward(list(queries), prompts=list(prompts), labels=list(labels))
    return answer.model_dump()
