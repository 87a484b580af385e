"""Scoring backends behind one protocol (``base.TeacherEngine``)."""

from __future__ import annotations

from server.engines.base import TeacherEngine
from server.settings import Settings


async def create_engine(settings: Settings) -> TeacherEngine:
    """Load the backend ``TC_BACKEND`` names. vLLM is imported only when asked for."""
    if settings.backend == "vllm":
        from server.engines.vllm import VLLMEngine

        return await VLLMEngine.create(settings)
    from server.engines.hf import HFEngine

    return await HFEngine.create(settings)
