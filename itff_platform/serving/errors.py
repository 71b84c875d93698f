"""Client errors are answered with a 4xx that names the field and the rule, and logged as one INFO line.

A client's mistake is not the server's error: BentoML logs every refused request at ERROR with a ~1 KB
traceback, which buries real failures. Refusals the service makes itself are returned as responses (no
exception, so nothing for BentoML to log); for those BentoML makes (pydantic validation of the body, a bad
media type), a filter on its logger turns the ERROR record into one INFO line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

    from itff_platform.serving.online import RequestError

log = logging.getLogger("itff_platform.serving")
BENTOML_ERROR_LOGGER = "bentoml._internal.server.http_app"  # where BentoML's log_exception writes


def refusal(error: RequestError, endpoint: str, status: int = 400) -> JSONResponse:
    """The JSON answer to a RequestError: {"error": "field: rule", "field": field, **its details}."""
    from starlette.responses import JSONResponse

    log.info("client error %d on %s: %s", status, endpoint, str(error)[:300])
    return JSONResponse({"error": str(error), "field": error.field, **error.details}, status_code=status)


def client_status(exc: BaseException | None) -> int | None:
    """The 4xx status BentoML answers for this exception, or None when it is a server error."""
    if exc is None:
        return None
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    for attribute in ("error_code", "status_code"):  # BentoMLException, starlette's HTTPException
        status = getattr(exc, attribute, None)
        status = getattr(status, "value", status)
        if isinstance(status, int) and 400 <= status < 500:
            return status
    return None


def summary(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(part) for part in first["loc"]) or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return " ".join(str(getattr(exc, "detail", None) or exc).split())[:300]


class ClientErrorsAsInfo(logging.Filter):
    """On BentoML's error logger: a record about a client error becomes one INFO line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = client_status(exc)
        if status is None:
            return True
        path, method = (record.args or ("?", "?"))[:2] if isinstance(record.args, tuple) else ("?", "?")
        assert exc is not None  # client_status gives a status only for an exception
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "client error %d on %s [%s]: %s", (status, path, method, summary(exc))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def quiet_client_errors() -> None:
    """Install the filter once (each worker calls it as its service starts), and let the platform's own INFO
    lines (client errors, champion changes) through: BentoML sets the root logger to WARNING."""
    logging.getLogger("itff_platform").setLevel(logging.INFO)
    logger = logging.getLogger(BENTOML_ERROR_LOGGER)
    if not any(isinstance(f, ClientErrorsAsInfo) for f in logger.filters):
        logger.addFilter(ClientErrorsAsInfo())
