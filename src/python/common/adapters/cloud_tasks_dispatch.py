"""Production dispatch: one Cloud Tasks HTTP task per creation, targeting the Cloud Run Admin API.

The task POSTs ``{run_api_url}/v2/projects/P/locations/L/jobs/JOB:run`` with the creation id as a
container env override, authenticated with an OAuth token for the queue's service account
(Google APIs on *.googleapis.com take OAuth access tokens, not OIDC identity tokens). Cloud Tasks
retries until ``:run`` answers 2xx, i.e. until an execution exists; whether the job then
succeeds is Cloud Run's ``maxRetries`` and the creation record's business, not the queue's.

Task names are derived from the creation id, so a repeated create (the API retrying after a lost
response) is refused with ALREADY_EXISTS and treated as success: no second execution. The name
is hash-prefixed because Cloud Tasks shards by name and sequential or common-prefix names
concentrate load (CreateTask docs). Cloud Tasks reserves a name for ~1 h (up to 24 h) after the
task ran, so the name also carries the dispatch number: a sweeper re-dispatch gets a new name
and is not swallowed as ALREADY_EXISTS (``task_id_for``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from typing import Any

import grpc
import structlog
from google.api_core import exceptions as gexc
from google.api_core.exceptions import RetryError
from google.api_core.retry import Retry, if_exception_type
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

from common import observability
from common.adapters.process_wide import process_wide
from common.config import ConfigError, Settings
from common.domain.creation import Creation, Kind
from common.domain.errors import DispatchError
from common.domain.kinds import KINDS, KindRegistry
from common.domain.payload import TaskPayload
from common.ports import Dispatcher

log = structlog.get_logger(__name__)

QUEUE_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/queues/([A-Za-z0-9-]{1,100})$")
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# create_task is a single small RPC; anything slower means the API is unhealthy and the request
# thread must give up (the API answers 503, the record stays pending, the sweeper retries).
CREATE_TIMEOUT_S = 5.0
# One quick retry of UNAVAILABLE: a reset pooled connection, not an outage. Other errors are not
# retried: DEADLINE_EXCEEDED already waited the full timeout, the rest are refusals.
CREATE_ATTEMPTS = 2
# :run answers in about a second; waiting Cloud Tasks' default 10 min for a hung call would only
# delay the retry.
DISPATCH_DEADLINE_S = 60
LISTING_TTL_S = 2.0  # emulator only: how long one ListTasks answer stands in for GetTask
# Cancel is best effort and runs in the user's request: bounded like create_task.
CANCEL_TIMEOUT_S = 5.0
# What a job records as its execution at claim (``jobs/JOB/executions/EXECUTION``).
EXECUTION_RE = re.compile(r"^jobs/[A-Za-z0-9-]{1,63}/executions/[A-Za-z0-9-]{1,63}$")


@process_wide
def tasks_client(endpoint: str = "") -> tasks_v2.CloudTasksClient:
    """One client per process and endpoint (``process_wide``)."""
    observability.instrument_grpc()  # before the channel exists: its calls become spans
    if endpoint:
        # Local emulator: plaintext gRPC, no credentials.
        transport = CloudTasksGrpcTransport(channel=grpc.insecure_channel(endpoint))
        return tasks_v2.CloudTasksClient(transport=transport)
    return tasks_v2.CloudTasksClient()


def parse_queue(queue: str) -> tuple[str, str]:
    """(project, location) of a full queue path; the job runs in the queue's project/region."""
    match = QUEUE_RE.match(queue or "")
    if not match:
        raise ConfigError(
            f"PHOENIX_TASKS_QUEUE={queue!r} must look like "
            "projects/PROJECT/locations/LOCATION/queues/QUEUE"
        )
    return match.group(1), match.group(2)


def task_id_for(creation_id: str, dispatch: int = 0) -> str:
    """Deterministic, hash-prefixed task id: the same dispatch of a creation -> the same id, so
    a retried create_task cannot enqueue twice; the hash prefix spreads names evenly.

    The dispatch number is part of the id because Cloud Tasks reserves a name for about an hour
    (up to a day) after its task ran: a sweeper re-dispatch under the first name would be
    swallowed as ALREADY_EXISTS and no job would run."""
    digest = hashlib.sha256(creation_id.encode()).hexdigest()[:8]
    suffix = f"-d{dispatch}" if dispatch else ""
    return f"{digest}-{creation_id}{suffix}"


class CloudTasksDispatcher(Dispatcher):
    name = "cloud-tasks"

    def __init__(
        self,
        client: Any,
        *,
        queue: str,
        run_api_url: str,
        jobs: dict[Kind, str],
        service_account: str = "",
        timeout_s: float = CREATE_TIMEOUT_S,
    ) -> None:
        self._project, self._location = parse_queue(queue)
        self._queue = queue
        self._run_api_url = run_api_url.rstrip("/")
        if not service_account and self._run_api_url.endswith(".googleapis.com"):
            # Without a token the Admin API answers 401, which Cloud Tasks retries forever.
            raise ConfigError(
                "PHOENIX_TASKS_SERVICE_ACCOUNT is required when PHOENIX_RUN_API_URL is a "
                "Google API (Cloud Tasks must mint an OAuth token to call jobs:run)"
            )
        self._service_account = service_account
        self._jobs = dict(jobs)
        self._client = client
        self._timeout_s = timeout_s
        self._listing: tuple[float, set[str]] | None = None
        self._listing_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, kinds: KindRegistry = KINDS
    ) -> "CloudTasksDispatcher":
        parse_queue(settings.tasks_queue)  # a bad queue is a ConfigError before any client
        return cls(
            tasks_client(settings.cloud_tasks_endpoint),
            queue=settings.tasks_queue,
            run_api_url=settings.run_api_url,
            jobs=kinds.job_names(dict(settings.jobs)),
            service_account=settings.tasks_service_account,
        )

    @property
    def queue(self) -> str:
        return self._queue

    def run_url(self, kind: Kind) -> str:
        job = self._jobs[kind]
        return (
            f"{self._run_api_url}/v2/projects/{self._project}/locations/{self._location}"
            f"/jobs/{job}:run"
        )

    def task_name(self, creation_id: str, dispatch: int = 0) -> str:
        return f"{self._queue}/tasks/{task_id_for(creation_id, dispatch)}"

    @staticmethod
    def run_body(payload: TaskPayload) -> dict[str, Any]:
        """The ``jobs:run`` request: the creation reaches the container as env overrides (Cloud
        Tasks headers do not reach a job execution), TRACEPARENT joins the API's trace."""
        env = [{"name": "CREATION_ID", "value": payload.creation_id}]
        if payload.traceparent:
            env.append({"name": "TRACEPARENT", "value": payload.traceparent})
        return {"overrides": {"containerOverrides": [{"env": env}], "taskCount": 1}}

    def build_task(self, payload: TaskPayload) -> dict[str, Any]:
        http_request: dict[str, Any] = {
            "http_method": tasks_v2.HttpMethod.POST,
            "url": self.run_url(payload.kind),
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(self.run_body(payload), separators=(",", ":")).encode(),
        }
        if self._service_account:
            http_request["oauth_token"] = {
                "service_account_email": self._service_account,
                "scope": CLOUD_PLATFORM_SCOPE,
            }
        return {
            "name": self.task_name(payload.creation_id, payload.dispatch),
            "http_request": http_request,
            "dispatch_deadline": duration_pb2.Duration(seconds=DISPATCH_DEADLINE_S),
        }

    def dispatch(self, payload: TaskPayload) -> None:
        # The Retry wraps the call (the client's own retry is off), so the same policy applies
        # whatever client is plugged in.
        create_task = _create_retry(self._timeout_s)(self._client.create_task)
        try:
            create_task(
                request={"parent": self._queue, "task": self.build_task(payload)},
                retry=None,
                timeout=self._timeout_s,
            )
        except gexc.AlreadyExists:
            return  # this creation's task exists (or ran recently): already dispatched
        except gexc.ServiceUnavailable as exc:
            raise DispatchError(f"cloud tasks unavailable: {_describe(exc)}") from exc
        except (gexc.DeadlineExceeded, RetryError) as exc:
            raise DispatchError(f"cloud tasks timed out: {_describe(exc)}") from exc
        except gexc.GoogleAPICallError as exc:
            raise DispatchError(f"cloud tasks refused the task: {_describe(exc)}") from exc
        except Exception as exc:  # transport/auth errors outside GoogleAPICallError
            raise DispatchError(f"cloud tasks unavailable: {_describe(exc)}") from exc

    def task_exists(self, payload: TaskPayload) -> bool | None:
        """``GetTask`` on the deterministic name: a task exists until ``:run`` answered 2xx
        (Cloud Tasks deletes it then), so "exists" means "queued or being retried", however
        long the backlog. NotFound means it ran or never was. The local emulator does not
        implement GetTask; only there (UNIMPLEMENTED) the queue is listed instead."""
        name = self.task_name(payload.creation_id, payload.dispatch)
        try:
            self._client.get_task(request={"name": name}, retry=None, timeout=self._timeout_s)
            return True
        except gexc.NotFound:
            return False
        except gexc.MethodNotImplemented:
            return self._listed(name)
        except gexc.GoogleAPICallError as exc:
            raise DispatchError(f"cloud tasks could not be asked: {_describe(exc)}") from exc
        except Exception as exc:
            raise DispatchError(f"cloud tasks unavailable: {_describe(exc)}") from exc

    def _listed(self, name: str) -> bool:
        # One listing serves a whole sweeper pass (it asks about hundreds of creations).
        with self._listing_lock:
            now = time.monotonic()
            if self._listing is None or now - self._listing[0] > LISTING_TTL_S:
                try:
                    names = {
                        t.name
                        for t in self._client.list_tasks(
                            request={"parent": self._queue}, retry=None, timeout=self._timeout_s
                        )
                    }
                except Exception as exc:
                    raise DispatchError(
                        f"cloud tasks could not be listed: {_describe(exc)}"
                    ) from exc
                self._listing = (now, names)
            return name in self._listing[1]

    def cancel_url(self, execution: str) -> str:
        """Admin API v2 ``executions.cancel`` for an execution recorded at claim."""
        return (
            f"{self._run_api_url}/v2/projects/{self._project}/locations/{self._location}"
            f"/{execution}:cancel"
        )

    def cancel(self, creation: Creation) -> list[str]:
        """Delete the creation's tasks still in the queue (every dispatch number it used)."""
        done: list[str] = []
        for n in range(creation.dispatches + 1):
            name = self.task_name(creation.id, n)
            try:
                self._client.delete_task(name=name, retry=None, timeout=CANCEL_TIMEOUT_S)
                done.append(f"deleted task {name}")
            except gexc.NotFound:
                continue  # delivered already, or never created
            except Exception as exc:  # e.g. the emulator has no DeleteTask: the claim covers it
                log.warning("cancel_delete_task_failed", task=name, error=_describe(exc))
        return done

    def stop_execution(self, creation: Creation) -> bool:
        """``executions:cancel`` on the Cloud Run execution recorded at claim: Cloud Run sends
        the task SIGTERM, then SIGKILL after its grace period, and runs no retry."""
        if not creation.execution or not EXECUTION_RE.match(creation.execution):
            return False
        url = self.cancel_url(creation.execution)
        try:
            status = self._post(url)
        except Exception as exc:
            log.warning("cancel_execution_failed", url=url, error=_describe(exc))
            return False
        if status >= 300 and status != 404:  # 404: it ended already
            log.warning("cancel_execution_refused", url=url, status=status)
        return status < 300

    def _post(self, url: str) -> int:
        """POST with the API's own credentials (ADC: the Cloud Run service account, which
        needs ``run.executions.cancel``) to Google; unauthenticated to a local stand-in."""
        if self._run_api_url.endswith(".googleapis.com"):
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            creds, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            response = AuthorizedSession(creds).post(url, json={}, timeout=CANCEL_TIMEOUT_S)
        else:
            import requests

            response = requests.post(url, json={}, timeout=CANCEL_TIMEOUT_S)
        return int(response.status_code)

    def close(self) -> None:
        # The client (and its channel) is shared process-wide; nothing per-dispatcher to free.
        return None


def _create_retry(deadline_s: float) -> Retry:
    """api_core's Retry for one ``create_task``: UNAVAILABLE only, at most ``CREATE_ATTEMPTS``
    calls (Retry bounds time; its ``on_error`` hook, which may raise, bounds the count), all
    within one request timeout so a retry never stretches the request thread's wait much."""
    calls = itertools.count(1)

    def give_up_after_last_attempt(exc: BaseException) -> None:
        if next(calls) >= CREATE_ATTEMPTS:
            raise exc

    return Retry(
        predicate=if_exception_type(gexc.ServiceUnavailable),
        initial=0.05,
        maximum=0.05,
        timeout=deadline_s,
        on_error=give_up_after_last_attempt,
    )


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
