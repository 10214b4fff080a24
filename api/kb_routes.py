"""Knowledge-base management: KBs, files (upload = background ingest job), rebuild, search, jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.errors import APIError
from api.schemas import KBCreate, KBUpdate, SearchRequest, hit_dict
from api.uploads import receive_uploads
from kb.embeddings import PACKAGED
from services import Job, Services

router = APIRouter(prefix="/api", tags=["knowledge bases"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["files"],
            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        }}},
    }
}
_WAIT = Query(False, description="Block until the job finishes and return its per-file results")


def _services(request: Request) -> Services:
    return request.app.state.services


async def _job_response(job: Job, wait: bool) -> JSONResponse:
    if not wait:
        return JSONResponse({"job": job.to_dict()}, status_code=202, headers={"Location": f"/api/jobs/{job.id}"})
    while job.status == "running":  # polled on the loop: waiting holds no worker thread
        await asyncio.sleep(0.1)
    if job.status == "failed":
        internal = (job.error or "").startswith("internal error")
        raise APIError(500 if internal else 400, f"{job.kind} failed: {job.error}", "job_failed")
    return JSONResponse({"job": job.to_dict(), "results": job.result})


def _results(items: list[Any]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in items]


# --- knowledge bases -------------------------------------------------------------------------
@router.get("/kb", summary="List knowledge bases")
def list_kbs(request: Request) -> dict[str, Any]:
    return {"knowledge_bases": _services(request).kbs.list()}


@router.post("/kb", status_code=201, summary="Create a knowledge base")
def create_kb(body: KBCreate, request: Request) -> dict[str, Any]:
    services = _services(request)
    allowed = [*PACKAGED, services.settings.embedding_model]
    # API clients pick among packaged models and the configured one; arbitrary server paths stay admin-only.
    if body.embedding_model is not None and body.embedding_model not in allowed:
        raise APIError(400, f"unknown embedding model '{body.embedding_model}': use one of {', '.join(allowed)}",
                       "invalid_embedding_model")
    kb = services.kbs.create(body.name, embedding_model=body.embedding_model, search_mode=body.search_mode)
    return kb.info()


@router.get("/kb/{name}", summary="One knowledge base")
def get_kb(name: str, request: Request) -> dict[str, Any]:
    return _services(request).kbs.get(name).info()


@router.patch("/kb/{name}", summary="Change a knowledge base's default search mode")
def update_kb(name: str, body: KBUpdate, request: Request) -> dict[str, Any]:
    kb = _services(request).kbs.get(name)
    kb.set_search_mode(body.search_mode)
    return kb.info()


@router.delete("/kb/{name}", summary="Delete a knowledge base and everything in it")
def delete_kb(name: str, request: Request) -> dict[str, Any]:
    _services(request).kbs.delete(name)
    return {"deleted": name}


# --- files -----------------------------------------------------------------------------------
@router.get("/kb/{name}/files", summary="Files with status (indexed/failed), chunk counts and errors")
def list_files(name: str, request: Request) -> dict[str, Any]:
    return {"files": _services(request).kbs.get(name).files()}


@router.post("/kb/{name}/files", status_code=202, openapi_extra=_UPLOAD_BODY, response_model=None,
             summary="Upload files (multipart field 'files', many at once); indexing runs as a background job")
async def upload_files(name: str, request: Request, wait: bool = _WAIT) -> JSONResponse:
    services = _services(request)
    kb = await run_in_threadpool(services.kbs.get, name)  # 404 before reading a possibly large body
    uploads = await receive_uploads(request, services.settings.tmp_dir)
    paths, names = [u.path for u in uploads], [u.name for u in uploads]

    def work(progress: Callable[[float, str], None]) -> list[dict[str, Any]]:
        try:
            return _results(kb.ingest(paths, names, progress))
        finally:
            for p in paths:
                p.unlink(missing_ok=True)

    return await _job_response(services.jobs.start("ingest", kb.name, work), wait)


@router.delete("/kb/{name}/files/{file}", summary="Remove a file (by name or file id) and its chunks")
def delete_file(name: str, file: str, request: Request) -> dict[str, Any]:
    return _services(request).kbs.get(name).delete_file(file)


@router.post("/kb/{name}/rebuild", status_code=202, response_model=None,
             summary="Re-index every stored file (background job)")
async def rebuild_kb(name: str, request: Request, wait: bool = _WAIT) -> JSONResponse:
    services = _services(request)
    kb = await run_in_threadpool(services.kbs.get, name)
    job = services.jobs.start("rebuild", kb.name, lambda progress: _results(kb.rebuild(progress)))
    return await _job_response(job, wait)


@router.post("/kb/{name}/search", summary="Retrieve chunks (score in [0, 1], higher is more similar)")
def search_kb(name: str, body: SearchRequest, request: Request) -> dict[str, Any]:
    kb = _services(request).kbs.get(name)
    hits = kb.search(body.query, top_k=body.top_k, threshold=body.threshold, mode=body.mode)
    return {"query": body.query, "mode": body.mode or kb.search_mode, "hits": [hit_dict(h) for h in hits]}


# --- jobs ------------------------------------------------------------------------------------
@router.get("/jobs/{job_id}", summary="Progress and results of an ingest/rebuild job")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    job = _services(request).jobs.get(job_id)
    if job is None:
        raise APIError(404, f"no job '{job_id}' (jobs are kept in memory until the server restarts)", "not_found")
    return job.to_dict()
