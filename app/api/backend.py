"""The web backend's shapes (chatgpt.com/backend-api) that the originals' fronts answer with: go-chatgpt-api's
routes (app/api/linweiyuan.py), the original server's shape (app/api/compat.py) and revChatGPT's items
(app/api/gajosu.py) alike."""

from __future__ import annotations


def backend_finish(reason: str | None) -> str:
    """Our finish_reason as the web backend's finish_details type."""
    return "max_tokens" if reason == "length" else "stop"


def backend_message(
    message_id: str,
    reply: str,
    status: str,
    model: str | None,
    finish: str | None,
    created: float | None = None,
) -> dict:
    """An assistant message as the web backend sends it (in its stream and in a conversation)."""
    return {
        "id": message_id,
        "author": {"role": "assistant", "name": None, "metadata": {}},
        "create_time": created,
        "update_time": None,
        "content": {"content_type": "text", "parts": [reply]},
        "status": status,
        "end_turn": True if status == "finished_successfully" else None,
        "weight": 1.0,
        "metadata": {
            "model_slug": model,
            "finish_details": {"type": finish} if finish else None,
            "timestamp_": "absolute",
        },
        "recipient": "all",
    }
