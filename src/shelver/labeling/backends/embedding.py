"""Zero-shot labels from the encoder alone: the candidate whose description is nearest the query.

No LLM, no network, no tokens: the offline default, and a cheap second opinion next to an LLM.
Its ``score`` is a softmax over the candidates' cosine similarities, so a clear winner scores
near 1 and a toss-up near ``1/k``; below ``min_similarity`` it answers ``none``.
"""

from __future__ import annotations

import numpy as np

from shelver.errors import ConfigError
from shelver.labeling.backends.base import NONE_ANSWER, Reply, Request, answer_json
from shelver.labeling.shortlist import PathIndex


class EmbeddingBackend:
    name = "embedding"

    def __init__(self, index: PathIndex, min_similarity: float = 0.0, temperature: float = 0.05) -> None:
        self.index = index
        self.model = index.encoder.spec
        self.min_similarity = float(min_similarity)
        self.temperature = float(temperature)

    def generate(self, request: Request) -> Reply:
        if not request.choices:
            raise ConfigError(
                "the embedding backend can only choose among candidate paths; use the openai or "
                "llamacpp backend to generate free text"
            )
        sims = self.index.score_choices(request.query, request.choices)
        best = int(np.argmax(sims))
        weights = np.exp((sims - sims[best]) / self.temperature)
        score = float(weights[best] / weights.sum())
        if sims[best] < self.min_similarity:
            return Reply(answer_json(NONE_ANSWER), score=1.0 - score, extra={"similarity": float(sims[best])})
        return Reply(answer_json(request.choices[best]), score=score, extra={"similarity": float(sims[best])})

    def close(self) -> None:
        pass
