"""A stand-in for a W&B server on the loopback address: the GraphQL and file requests of W&B's own client
(``wandb.Api``: the viewer, an artifact version by name, a run and the artifacts it logged, the artifact's manifest
and files) answered from one local prompt artifact folder. Tests start it, point ``WANDB_BASE_URL`` at it and stop
it; nothing leaves the machine. It answers only what reading an artifact needs (no run can log to it), as the
client of the pinned ``wandb`` asks for it; a query it does not know is answered with a GraphQL error naming it."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENTITY, PROJECT = "me", "skill-neurons"
NOW = "2026-01-01T00:00:00"


class StubServer:
    """``with StubServer(folder, name, run_id, aliases) as server:`` — ``server.url`` serves one ``model``
    artifact version (``v0``) holding the files of ``folder``, logged by run ``run_id`` (state ``finished``,
    ``config``, ``summary``, ``job_type``), and records every request (``server.requests``: operation names and file paths)."""

    def __init__(self, folder: Path, name: str, run_id: str, aliases: list[str], config: dict | None = None,
                 summary: dict | None = None, job_type: str = "fit"):
        self.folder, self.name, self.run_id, self.aliases = Path(folder), name, run_id, aliases
        self.config, self.summary, self.job_type = config or {}, summary or {}, job_type
        self.requests: list[str] = []
        self.files = {str(p.relative_to(self.folder)): p.read_bytes()
                      for p in sorted(self.folder.rglob("*")) if p.is_file()}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the data
    def manifest(self) -> dict[str, Any]:
        contents = {name: {"digest": base64.b64encode(hashlib.md5(data).digest()).decode(), "size": len(data)}
                    for name, data in self.files.items()}
        return {"version": 1, "storagePolicy": "wandb-storage-policy-v1",
                "storagePolicyConfig": {"storageLayout": "V2"}, "contents": contents}

    def project(self) -> dict[str, Any]:
        return {"id": "UHJvamVjdDox", "internalId": "1", "name": PROJECT, "entity": {"name": ENTITY}}

    def artifact(self) -> dict[str, Any]:
        collection = {"__typename": "ArtifactPortfolio", "name": self.name, "project": self.project()}
        return {
            "__typename": "Artifact", "id": "QXJ0aWZhY3Q6MQ==", "artifactSequence": {**collection,
                                                                                    "__typename": "ArtifactSequence"},
            "versionIndex": 0, "artifactType": {"name": "model"}, "description": None, "metadata": "{}",
            "ttlDurationSeconds": -1, "ttlIsInherited": True, "tags": [], "historyStep": None, "state": "COMMITTED",
            "size": sum(len(d) for d in self.files.values()), "digest": "0" * 32, "commitHash": "abc",
            "fileCount": len(self.files), "createdAt": NOW, "updatedAt": NOW,
            "aliases": [{"__typename": "ArtifactAlias", "id": f"al{i}", "alias": a,
                         "artifactCollection": collection} for i, a in enumerate(self.aliases)],
            "currentManifest": {"id": "bWFuaWZlc3Q=", "file": {"id": "ZmlsZQ==", "directUrl": f"{self.url}/manifest"}},
        }

    def membership(self) -> dict[str, Any]:
        collection = {"__typename": "ArtifactPortfolio", "name": self.name, "project": self.project()}
        return {"__typename": "ArtifactCollectionMembership", "id": "bWVtYmVy", "versionIndex": 0, "createdAt": NOW,
                "aliases": [{"__typename": "ArtifactAlias", "id": f"al{i}", "alias": a}
                            for i, a in enumerate(self.aliases)],
                "artifactCollection": collection, "artifact": self.artifact()}

    def answer(self, operation: str | None, variables: dict[str, Any]) -> dict[str, Any] | None:
        """The ``data`` of a GraphQL answer; None for an operation the stub does not know."""
        viewer = {"id": "VXNlcjox", "entity": ENTITY, "username": ENTITY, "email": "me@example.invalid",
                  "flags": "{}", "teams": {"edges": []}}
        if operation in ("Viewer", "GetDefaultEntity"):
            return {"viewer": viewer}
        if operation == "ServerFeaturesQuery":
            return {"serverInfo": {"features": []}}
        if operation == "ArtifactMembershipByName":
            wanted, _, alias = str(variables.get("name")).partition(":")
            found = wanted == self.name and alias in (*self.aliases, "v0", "latest")
            return {"project": {**self.project(), "artifactCollectionMembership": self.membership() if found else None}}
        if operation == "FetchArtifactManifest":
            return {"artifact": {"currentManifest": self.artifact()["currentManifest"]}}
        if operation == "Run":
            if variables.get("name") != self.run_id:
                return {"project": {**self.project(), "run": None}}
            config = {key: {"value": value} for key, value in self.config.items()}
            run = {"projectId": "1", "id": "UnVuOjE=", "tags": [], "name": self.run_id, "displayName": self.run_id,
                   "sweepName": None, "state": "finished", "config": json.dumps(config), "group": None,
                   "jobType": self.job_type, "commit": None, "readOnly": False, "createdAt": NOW, "heartbeatAt": NOW,
                   "description": None, "notes": None, "systemMetrics": "{}", "summaryMetrics": json.dumps(self.summary),
                   "historyLineCount": 0, "user": {"name": ENTITY, "username": ENTITY}, "historyKeys": None}
            return {"project": {**self.project(), "run": run}}
        if operation == "RunOutputArtifacts":
            page = {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False}
            run = {"artifacts": {"totalCount": 1, "pageInfo": page, "edges": [{"node": self.artifact()}]}}
            return {"project": {"run": run if variables.get("run") == self.run_id else None}}
        if operation == "GetArtifactMembershipFileUrls":
            edges = [{"node": {"__typename": "File", "name": name, "directUrl": f"{self.url}/files/{name}"}}
                     for name in self.files]
            files = {"pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False}, "edges": edges}
            return {"project": {"artifactCollection": {"__typename": "ArtifactPortfolio",
                                                       "artifactMembership": {"files": files}}}}
        return None

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                query = body.get("query", "")
                named = re.search(r"(?:query|mutation)\s+(\w+)", query)
                operation = body.get("operationName") or (named.group(1) if named else None)
                server.requests.append(f"graphql {operation}")
                data = server.answer(operation, body.get("variables") or {})
                if data is None:
                    server.requests.append(f"unknown {query[:2000]}")
                    answer = {"data": None, "errors": [{"message": f"the stub does not answer {operation}"}]}
                else:
                    answer = {"data": data}
                self._send(200, json.dumps(answer).encode())

            def do_GET(self) -> None:
                server.requests.append(f"GET {self.path}")
                if self.path.startswith("/manifest"):
                    return self._send(200, json.dumps(server.manifest()).encode())
                name = next((n for n in server.files if self.path.endswith("/" + n)), None)
                if name is None:
                    return self._send(404, b"{}")
                self._send(200, server.files[name], "application/octet-stream")

        return Handler
