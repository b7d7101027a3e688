"""An embedder over any OpenAI-compatible ``POST {base}/embeddings`` endpoint (OpenAI,
Azure-style gateways, vLLM, Ollama, LiteLLM proxies...).

Configured from the environment: ``SYNTHHOST_SIMILARITY_EMBEDDER=openai``,
``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``), ``OPENAI_API_KEY``,
``SYNTHHOST_SIMILARITY_MODEL`` (default ``text-embedding-3-small``), optional
``SYNTHHOST_SIMILARITY_DIM`` (sent as ``dimensions``) and
``SYNTHHOST_SIMILARITY_EMBED_TIMEOUT`` (seconds, default 10). The API key is sent as a
bearer token and never appears in errors, events or logs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from synthhost_similarity.embedders import Vector, normalize_rows

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "text-embedding-3-small"


class EmbeddingError(RuntimeError):
    """The embedding endpoint failed or answered something unusable."""


class OpenAIEmbedder:
    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        dimensions: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.model = model
        self.name = f"openai:{model}" + (f"@{dimensions}" if dimensions else "")
        # Known up front only when requested; otherwise learnt from the first answer.
        self.dim = dimensions or 0
        self._dimensions = dimensions
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OpenAIEmbedder:
        dim = env.get("SYNTHHOST_SIMILARITY_DIM")
        return cls(
            model=env.get("SYNTHHOST_SIMILARITY_MODEL") or DEFAULT_MODEL,
            base_url=env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            api_key=env.get("OPENAI_API_KEY") or None,
            dimensions=int(dim) if dim else None,
            timeout=float(env.get("SYNTHHOST_SIMILARITY_EMBED_TIMEOUT") or 10.0),
        )

    def _body(self, texts: Sequence[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": list(texts)}
        if self._dimensions:
            body["dimensions"] = self._dimensions
        return body

    def _parse(self, response: httpx.Response, count: int) -> Vector:
        if response.status_code != 200:
            raise EmbeddingError(f"embedding endpoint {self._url} answered HTTP {response.status_code}")
        try:
            data = sorted(response.json()["data"], key=lambda d: d.get("index", 0))
            matrix = np.array([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"embedding endpoint {self._url}: malformed answer") from exc
        if matrix.ndim != 2 or len(matrix) != count:
            raise EmbeddingError(f"embedding endpoint {self._url}: expected {count} vectors")
        if self.dim and matrix.shape[1] != self.dim:
            raise EmbeddingError(f"embedding endpoint {self._url}: dimension {matrix.shape[1]}, expected {self.dim}")
        self.dim = int(matrix.shape[1])
        return normalize_rows(matrix)

    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout)
            client = self._client
        try:
            response = client.post(self._url, json=self._body(texts), headers=self._headers)
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"embedding endpoint {self._url}: {type(exc).__name__}") from exc
        return self._parse(response, len(texts))

    async def aembed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self._timeout)
        try:
            response = await self._aclient.post(self._url, json=self._body(texts), headers=self._headers)
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"embedding endpoint {self._url}: {type(exc).__name__}") from exc
        return self._parse(response, len(texts))

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
