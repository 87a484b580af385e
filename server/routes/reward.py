"""POST /get_reward: OpenRLHF's remote reward protocol (``--reward.remote_url``).

Auth as on every other route (``Authorization: Bearer`` when ``TC_API_KEYS`` is set). OpenRLHF's
own HTTP reward client sends no headers, so a keyed pool is reached through the plugin's reward
function instead (``--reward.remote_url trainer/openrlhf/reward_func.py``, docs/openrlhf.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from proto.reward import RewardRequest, RewardResponse
from server import reward
from server.auth import require_api_key
from server.routes import ERRORS, JSONBody

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/get_reward", response_model=RewardResponse, response_class=JSONBody, responses=ERRORS
)
async def get_reward(body: RewardRequest) -> JSONBody:
    return JSONBody(await reward.rewards(body))
