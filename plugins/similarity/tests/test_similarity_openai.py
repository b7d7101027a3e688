"""The OpenAI-compatible embedder, against a loopback ``/v1/embeddings`` server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

import synthhost_similarity
from synthhost import Denied
from synthhost_similarity import service_for
from synthhost_similarity.embedders import HashedNgramEmbedder, make_embedder
from synthhost_similarity.openai_embedder import EmbeddingError, OpenAIEmbedder
from synthhost_similarity.service import FLAG_CHECK

KEY = "sk-loopback-secret"


class Server:
    """Answers like OpenAI: un-normalised vectors (the hashed embedder's, scaled by 3),
    in reverse order with their ``index``, so the client must sort and normalise."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        inner = HashedNgramEmbedder(64)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if outer.status != 200:
                    self.send_response(outer.status)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "nope"}}')
                    return
                vectors = inner.embed(body["input"]) * 3.0
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)][
                    ::-1
                ]
                payload = json.dumps({"object": "list", "data": data, "model": body["model"]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def env(self) -> dict[str, str]:
        return {
            "SYNTHHOST_SIMILARITY_EMBEDDER": "openai",
            "OPENAI_BASE_URL": self.url,
            "OPENAI_API_KEY": KEY,
            "SYNTHHOST_SIMILARITY_MODEL": "test-embed-1",
            "SYNTHHOST_SIMILARITY_REFRESH_S": "0.1",
        }


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_similarity_openai_embedder_sync(server: Server) -> None:
    embedder = make_embedder(server.env())
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.name == "openai:test-embed-1" and embedder.dim == 0
    vectors = embedder.embed(["first prompt", "second prompt"])
    embedder.close()
    assert vectors.shape == (2, 64) and embedder.dim == 64
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = HashedNgramEmbedder(64).embed(["first prompt", "second prompt"])
    assert np.allclose(vectors, expected, atol=1e-5)  # sorted back by index
    (request,) = server.requests
    assert request["path"] == "/v1/embeddings"
    assert request["auth"] == f"Bearer {KEY}"
    assert request["body"] == {"model": "test-embed-1", "input": ["first prompt", "second prompt"]}


@pytest.mark.anyio
async def test_similarity_openai_embedder_async_and_dimensions(server: Server) -> None:
    embedder = make_embedder({**server.env(), "SYNTHHOST_SIMILARITY_DIM": "64"})
    assert embedder.name == "openai:test-embed-1@64" and embedder.dim == 64
    vectors = await embedder.aembed(["hello there"])
    await embedder.aclose()
    assert vectors.shape == (1, 64)
    assert server.requests[0]["body"]["dimensions"] == 64


def test_similarity_openai_embedder_errors_do_not_leak_the_key(server: Server) -> None:
    server.status = 401
    embedder = make_embedder(server.env())
    with pytest.raises(EmbeddingError) as info:
        embedder.embed(["x"])
    assert "401" in str(info.value) and KEY not in str(info.value)
    mismatch = OpenAIEmbedder(base_url=server.url, dimensions=32)
    server.status = 200
    with pytest.raises(EmbeddingError, match="dimension 64, expected 32"):
        mismatch.embed(["x"])
    mismatch.close()


@pytest.mark.anyio
async def test_similarity_openai_embedder_end_to_end(server: Server, make_host: Any) -> None:
    async with make_host(synthhost_similarity, env=server.env()) as host:
        host.flags.set(FLAG_CHECK, True, workspace="w1")
        await host.complete(model="echo/m", messages="Explain how a hash map works", workspace="w1")
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="Explain how a hashmap works.", workspace="w1")
        assert info.value.details["score"] >= 0.85
        assert service_for(host).method == "cosine:openai:test-embed-1"
        await host.writer.flush()
        with host.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT embedder, dim FROM prompt_references").all()
    assert {tuple(r) for r in stored} == {("openai:test-embed-1", 64)}
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)
