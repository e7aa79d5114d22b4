"""``brio.api.routing.json_response``: pydantic's encoder for models, and json.dumps where
pydantic cannot encode (a lone surrogate), so every body is JSON text either way."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from brio.api.routing import json_response


class Out(BaseModel):
    text: str
    value: Any


async def test_a_model_and_its_dict_answer_the_same_json() -> None:
    model = Out(text="é ✓", value={"n": [1, 2.5, None, True], "big": 10**30})
    response = json_response(model, 202)
    assert response.status_code == 202 and response.mimetype == "application/json"
    assert json.loads(await response.get_data(as_text=True)) == model.model_dump(mode="json")


async def test_a_lone_surrogate_falls_back_to_an_escape() -> None:
    response = json_response(Out(text="a\ud800b", value=None), 200)
    text = await response.get_data(as_text=True)
    assert "\\ud800" in text and json.loads(text)["text"] == "a\ud800b"
