"""Knowledge-base management: KBs, files (upload = background ingest job), rebuild, search, jobs, and the
files behind citations (download, preview)."""

from __future__ import annotations

import asyncio
import html
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as FastPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.errors import APIError
from api.schemas import ROW_ID_MAX, SHARING, KBCreate, KBUpdate, SearchRequest, hit_dict
from api.security import request_user
from api.uploads import receive_uploads
from kb import preview
from kb.embeddings import PACKAGED
from kb.jobs import TERMINAL
from kb.service import KnowledgeBase
from kb.types import KBNotFound
from services import Services

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
_REPLACE = Query(False, description="A file whose name is already in the KB (with other content) replaces it; "
                 "otherwise both are kept and the new one is numbered, e.g. 'report (2).pdf'")


def _services(request: Request) -> Services:
    return request.app.state.services


async def _job_response(services: Services, job: dict[str, Any], wait: bool) -> JSONResponse:
    if not wait:
        return JSONResponse({"job": job}, status_code=202, headers={"Location": f"/api/jobs/{job['id']}"})
    while job["status"] not in TERMINAL:  # polled from the loop: waiting holds no worker thread
        await asyncio.sleep(0.2)
        job = await run_in_threadpool(services.jobs.get, job["id"]) or job | {"status": "failed",
                                                                               "error": "the job vanished"}
    if job["status"] == "failed":
        internal = (job["error"] or "").startswith("internal error")
        raise APIError(500 if internal else 400, f"{job['kind']} failed: {job['error']}", "job_failed")
    if job["status"] == "cancelled":
        raise APIError(409, f"{job['kind']} was cancelled", "job_cancelled")
    return JSONResponse({"job": job, "results": job["result"]})


# --- knowledge bases -------------------------------------------------------------------------
@router.get("/kb", summary="List knowledge bases")
def list_kbs(request: Request) -> dict[str, Any]:
    services = _services(request)
    readable = set(services.kb_names(request_user(request)))
    return {"knowledge_bases": [i for i in services.kbs.list() if i["name"] in readable]}


@router.post("/kb", status_code=201, summary="Create a knowledge base")
def create_kb(body: KBCreate, request: Request) -> dict[str, Any]:
    services = _services(request)
    allowed = [*PACKAGED, services.settings.embedding_model]
    # API clients pick among packaged models and the configured one; arbitrary server paths stay admin-only.
    if body.embedding_model is not None and body.embedding_model not in allowed:
        raise APIError(400, f"unknown embedding model '{body.embedding_model}': use one of {', '.join(allowed)}",
                       "invalid_embedding_model")
    who = request_user(request)
    kb = services.kbs.create(body.name, embedding_model=body.embedding_model, owner_id=who.id,
                             visibility=body.visibility or "private",
                             **body.model_dump(exclude={"name", "embedding_model", *SHARING}, exclude_none=True))
    if body.shared_with is not None:
        services.users.share(who, kb, users=body.shared_with)
    return kb.info() | services.users.sharing(kb)


@router.get("/kb/{name}", summary="One knowledge base")
def get_kb(name: str, request: Request) -> dict[str, Any]:
    services = _services(request)
    kb = services.kb(request_user(request), name)
    return kb.info() | services.users.sharing(kb)


@router.patch("/kb/{name}", summary="Change a knowledge base's own settings (search mode, alpha, threshold, "
             "top_k, prompt); null = follow the server's setting (no prompt)")
def update_kb(name: str, body: KBUpdate, request: Request) -> dict[str, Any]:
    services, who = _services(request), request_user(request)
    kb = services.kb(who, name, write=True)
    sharing = body.model_dump(include=SHARING, exclude_unset=True)
    if sharing:
        services.users.share(who, kb, sharing.get("visibility"), sharing.get("shared_with"))
    settings = body.model_dump(exclude=SHARING, exclude_unset=True)
    return (kb.update(**settings) if settings else kb.info()) | services.users.sharing(kb)


@router.delete("/kb/{name}", summary="Delete a knowledge base and everything in it")
def delete_kb(name: str, request: Request) -> dict[str, Any]:
    services = _services(request)
    services.kbs.delete(services.kb(request_user(request), name, write=True).name)
    return {"deleted": name}


# --- files -----------------------------------------------------------------------------------
@router.get("/kb/{name}/files", summary="Files with status (indexed/failed), chunk counts and errors")
def list_files(name: str, request: Request) -> dict[str, Any]:
    return {"files": _services(request).kb(request_user(request), name).files()}


@router.post("/kb/{name}/files", status_code=202, openapi_extra=_UPLOAD_BODY, response_model=None,
             summary="Upload files (multipart field 'files', many at once); indexing runs as a background job")
async def upload_files(name: str, request: Request, wait: bool = _WAIT,
                       replace: bool = _REPLACE) -> JSONResponse:
    services = _services(request)
    # 404/403 before reading a possibly large body
    kb = await run_in_threadpool(services.kb, request_user(request), name, True)
    uploads = await receive_uploads(request, services.settings.tmp_dir)

    def submit() -> dict[str, Any]:
        try:  # the bytes go into the database with the job, so the job survives a restart
            return kb.submit_ingest([u.path for u in uploads], [u.name for u in uploads], replace=replace)
        finally:
            for u in uploads:
                u.path.unlink(missing_ok=True)

    return await _job_response(services, await run_in_threadpool(submit), wait)


@router.delete("/kb/{name}/files/{file}", summary="Remove a file (by name or file id) and its chunks")
def delete_file(name: str, file: str, request: Request) -> dict[str, Any]:
    return _services(request).kb(request_user(request), name, write=True).delete_file(file)


@router.post("/kb/{name}/rebuild", status_code=202, response_model=None,
             summary="Re-index every stored file into a new index beside the live one (background job)")
async def rebuild_kb(name: str, request: Request, wait: bool = _WAIT,
                     chunk_size: int | None = Query(None, ge=50, le=4000, description="New chunk size, recorded "
                                                    "with the KB when the rebuild completes"),
                     chunk_overlap: int | None = Query(None, ge=0, le=1000)) -> JSONResponse:
    services = _services(request)
    kb: KnowledgeBase = await run_in_threadpool(services.kb, request_user(request), name, True)
    job = await run_in_threadpool(lambda: kb.submit_rebuild(chunk_size=chunk_size, chunk_overlap=chunk_overlap))
    return await _job_response(services, job, wait)


@router.post("/kb/{name}/search", summary="Retrieve chunks (score in [0, 1], higher is more similar)")
def search_kb(name: str, body: SearchRequest, request: Request) -> dict[str, Any]:
    kb = _services(request).kb(request_user(request), name)
    hits = kb.search(body.query, top_k=body.top_k, threshold=body.threshold, mode=body.mode)
    return {"query": body.query, "mode": body.mode or kb.search_mode, "hits": [hit_dict(h) for h in hits]}


# --- jobs ------------------------------------------------------------------------------------
@router.get("/jobs", summary="Recent ingest/rebuild jobs, newest first (optionally of one KB)")
def list_jobs(request: Request, kb: str | None = None,
              limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    services, who = _services(request), request_user(request)
    kb_id = services.kb(who, kb).id if kb else None
    readable = set(services.kb_names(who))
    return {"jobs": [j for j in services.jobs.list(kb_id, limit) if j["kb"] in readable]}


@router.get("/jobs/{job_id}", summary="Progress (files, chunks embedded) and results of an ingest/rebuild job")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _job(request, job_id)


def _job(request: Request, job_id: str, write: bool = False) -> dict[str, Any]:
    """A job of a KB the caller may see (``write``: change); others do not exist for them."""
    services = _services(request)
    job = services.jobs.get(job_id)
    try:
        if job is not None:
            services.kb(request_user(request), job["kb"], write)
    except KBNotFound:
        job = None
    if job is None:
        raise APIError(404, f"no job '{job_id}'", "not_found")
    return job


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job (files already indexed stay)")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    return _services(request).jobs.cancel(_job(request, job_id, write=True)["id"])


# --- citations: the original file and a preview of the cited place ---------------------------------------------
@router.get("/files/{kb}/{file_id}", summary="Download a file of a knowledge base as it was uploaded "
            "(file_id: a source's file_id, i.e. its sha256)", response_class=Response)
def download_file(kb: str, file_id: str, request: Request) -> Response:
    name, data, media = preview.original(_services(request).kb(request_user(request), kb), file_id)
    # Always an attachment: an uploaded HTML or SVG file must never run as a page of this origin.
    quoted = urllib.parse.quote(Path(name).name)
    return Response(data, media_type=media, headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{quoted}", "Cache-Control": "private, no-cache"})


@router.get("/files/{kb}/{file_id}/preview", summary="Where a source points: for a PDF the page image to show, "
            "otherwise the cited chunk among its neighbours")
def preview_file(kb: str, file_id: str, request: Request,
                 chunk: int | None = Query(None, ge=1, le=ROW_ID_MAX, description="The source's chunk_id")
                 ) -> dict[str, Any]:
    return preview.preview(_services(request).kb(request_user(request), kb), file_id, chunk)


@router.get("/files/{kb}/{file_id}/pages/{page}.png", summary="One PDF page as PNG, the cited chunk highlighted",
            response_class=Response)
def page_image(kb: str, file_id: str, request: Request, page: int = FastPath(..., ge=1, le=1_000_000),
               chunk: int | None = Query(None, ge=1, le=ROW_ID_MAX)) -> Response:
    png = preview.page_png(_services(request).kb(request_user(request), kb), file_id, page, chunk)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


# The same files for the web UI: a browser session (cookie) may use these paths, never /api (see AccessGuard).
ui_router = APIRouter(prefix="/ui", include_in_schema=False)
ui_router.get("/files/{kb}/{file_id}", response_class=Response)(download_file)
ui_router.get("/pages/{kb}/{file_id}/{page}.png", response_class=Response)(page_image)


@ui_router.get("/preview/{kb}/{file_id}", response_class=HTMLResponse)
def preview_page(kb: str, file_id: str, request: Request,
                 chunk: int | None = Query(None, ge=1, le=ROW_ID_MAX)) -> HTMLResponse:
    """A cited place as a page: the PDF page with the chunk highlighted, or the chunk among its neighbours."""
    view = preview.preview(_services(request).kb(request_user(request), kb), file_id, chunk)
    esc = html.escape
    base = f"/ui/files/{urllib.parse.quote(kb)}/{urllib.parse.quote(file_id)}"
    where = esc(view["file"]) + (f" · p.{view['page']}" if view["page"] else "")
    if view["kind"] == "pdf":
        query = f"?chunk={chunk}" if chunk else ""
        src = f"/ui/pages/{urllib.parse.quote(kb)}/{urllib.parse.quote(file_id)}/{view['page'] or 1}.png{query}"
        body = f'<img id="preview-page" src="{esc(src)}" alt="{where}">'
    else:
        body = "".join(f'<p{" id=cited" if c["cited"] else ""}>{"<mark>" if c["cited"] else ""}'
                       f'{esc(c["text"]).replace(chr(10), "<br>")}{"</mark>" if c["cited"] else ""}</p>'
                       for c in view["context"])
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{where}</title>'
            '<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}'
            'img{max-width:100%;border:1px solid #ccc}mark{background:#fff3a0}</style></head><body>'
            f'<h3 id="preview-title">{where}</h3><p><a id="preview-download" href="{esc(base)}">'
            f'download the original</a></p>{body}</body></html>')
    return HTMLResponse(page)
