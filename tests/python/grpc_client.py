#!/usr/bin/env python3
"""Drives tasklab's public gRPC API the way a user in another language does.

The client is generated at run time with ``grpc_tools.protoc`` from the
repository's ``proto/`` (plus ``health.proto`` next to this file) into a
temporary directory, imported, and used for a realistic flow: health, nested
projects, tasks with hyperparameters and tags, filtered and paged lists, an
update, a start, a refused transition (checked through the
``tasklab-error-bin`` trailing metadata decoded as
``tasklab.common.v1.ErrorDetail``), clones and deletes.

Every call sends ``authorization: Basic base64(access:secret)``. The script
exits 0 when every check holds and 1 with a ``FAILED:`` line otherwise.

Usage: grpc_client.py HOST:PORT [--access-key KEY] [--secret-key SECRET]
(the keys default to TASKLAB_ACCESS_KEY / TASKLAB_SECRET_KEY).
"""

from __future__ import annotations

import argparse
import base64
import glob
import importlib
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import grpc_tools
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ERROR_METADATA_KEY = "tasklab-error-bin"
TIMEOUT_SECS = 10.0


class Failure(AssertionError):
    """A check of the flow did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def check_eq(actual, expected, what: str) -> None:
    if actual != expected:
        raise Failure(f"{what}: expected {expected!r}, got {actual!r}")


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------
# Stub generation


def generate_stubs(proto_dir: Path, out_dir: Path) -> None:
    """Runs protoc (grpcio-tools) on every tasklab contract and health.proto."""
    wkt_dir = Path(grpc_tools.__file__).resolve().parent / "_proto"
    check(wkt_dir.is_dir(), f"grpc_tools has no bundled well-known types at {wkt_dir}")
    contracts = sorted(
        os.path.relpath(path, proto_dir)
        for path in glob.glob(str(proto_dir / "tasklab" / "*" / "v1" / "*.proto"))
    )
    check(bool(contracts), f"no contracts found under {proto_dir}/tasklab/*/v1")
    for files, include in ((contracts, proto_dir), (["health.proto"], HERE)):
        args = [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{wkt_dir}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *files,
        ]
        rc = protoc.main(args)
        check(rc == 0, f"protoc failed ({rc}) on {files} (include {include})")
    say(f"generated Python stubs for {len(contracts)} contracts + health.proto into {out_dir}")


class Stubs:
    """The generated modules, imported from the temporary directory."""

    def __init__(self, out_dir: Path):
        sys.path.insert(0, str(out_dir))
        load = importlib.import_module
        self.common = load("tasklab.common.v1.common_pb2")
        self.projects = load("tasklab.projects.v1.projects_pb2")
        self.projects_grpc = load("tasklab.projects.v1.projects_pb2_grpc")
        self.tasks = load("tasklab.tasks.v1.tasks_pb2")
        self.tasks_grpc = load("tasklab.tasks.v1.tasks_pb2_grpc")
        self.health = load("health_pb2")
        self.health_grpc = load("health_pb2_grpc")
        self.field_mask = load("google.protobuf.field_mask_pb2")
        # Every package's stubs must at least import.
        for package in ("queues", "artifacts", "metrics"):
            load(f"tasklab.{package}.v1.{package}_pb2_grpc")

    def mask(self, *paths: str):
        return self.field_mask.FieldMask(paths=list(paths))


# ---------------------------------------------------------------------------
# Calls


def rpc_name(request) -> str:
    name = type(request).__name__
    return name[: -len("Request")] if name.endswith("Request") else name


def describe(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()!r}"


class Api:
    """Calls through the generated stubs with the caller's metadata."""

    def __init__(self, stubs: Stubs, channel: grpc.Channel, authorization: str):
        self.pb = stubs
        self.metadata = (("authorization", authorization),)
        self.projects = stubs.projects_grpc.ProjectsServiceStub(channel)
        self.tasks = stubs.tasks_grpc.TasksServiceStub(channel)
        self.health = stubs.health_grpc.HealthStub(channel)

    def call(self, method, request, metadata=None):
        """Returns the response; any error status is a failure of the flow."""
        metadata = self.metadata if metadata is None else metadata
        try:
            response, _call = method.with_call(request, metadata=metadata, timeout=TIMEOUT_SECS)
        except grpc.RpcError as err:
            detail = self.try_detail(err)
            extra = f" (tasklab-error-bin code {detail.code!r}, fields {dict(detail.fields)})" if detail else ""
            raise Failure(f"{rpc_name(request)} failed with {describe(err)}{extra}") from None
        return response

    def fail(self, method, request, code: grpc.StatusCode, error_code: str, metadata=None):
        """Expects the call to fail with `code` and the stable `error_code`;
        returns the decoded ErrorDetail."""
        metadata = self.metadata if metadata is None else metadata
        try:
            method.with_call(request, metadata=metadata, timeout=TIMEOUT_SECS)
        except grpc.RpcError as err:
            check(
                err.code() == code,
                f"{rpc_name(request)}: expected {code.name}/{error_code}, got {describe(err)}",
            )
            detail = self.detail(err, rpc_name(request))
            check_eq(detail.code, error_code, f"{rpc_name(request)} {ERROR_METADATA_KEY} code")
            return detail
        raise Failure(f"{rpc_name(request)}: expected {code.name}/{error_code}, but it succeeded")

    def try_detail(self, err: grpc.RpcError):
        for key, value in err.trailing_metadata() or ():
            if key == ERROR_METADATA_KEY:
                return self.pb.common.ErrorDetail.FromString(value)
        return None

    def detail(self, err: grpc.RpcError, what: str):
        keys = [key for key, _ in err.trailing_metadata() or ()]
        detail = self.try_detail(err)
        check(
            detail is not None,
            f"{what}: {describe(err)} carries no {ERROR_METADATA_KEY} trailing metadata (keys {keys})",
        )
        check_eq(detail.message, err.details(), f"{what}: ErrorDetail.message vs status message")
        return detail


# ---------------------------------------------------------------------------
# The flow


def status_name(pb, value: int) -> str:
    return pb.tasks.TaskStatus.Name(value)


def section(pb, **params):
    """A HyperParamSection from name=(value, type); names are left to the
    service, which sets them from the map keys."""
    return pb.tasks.HyperParamSection(
        params={name: pb.common.TypedValue(value=value, type=kind) for name, (value, kind) in params.items()}
    )


def check_health(api: Api) -> None:
    pb = api.pb.health
    for service in ("", "tasklab.projects.v1.ProjectsService", "tasklab.tasks.v1.TasksService"):
        reply = api.call(api.health.Check, pb.HealthCheckRequest(service=service))
        check_eq(
            pb.HealthCheckResponse.ServingStatus.Name(reply.status),
            "SERVING",
            f"health of {service or 'the server'}",
        )
    say("health: server, ProjectsService and TasksService are SERVING")


def check_authentication(api: Api) -> None:
    """Today the API port serves the domain services directly and ignores
    credentials; once the gateway authenticates, a call without credentials
    must be UNAUTHENTICATED / missing_credentials and a wrong secret
    UNAUTHENTICATED / invalid_credentials."""
    request = api.pb.projects.ListProjectsRequest(page=api.pb.common.PageRequest(page_size=1))
    try:
        api.projects.ListProjects.with_call(request, metadata=(), timeout=TIMEOUT_SECS)
    except grpc.RpcError as err:
        check(
            err.code() == grpc.StatusCode.UNAUTHENTICATED,
            f"ListProjects without credentials: expected OK or UNAUTHENTICATED, got {describe(err)}",
        )
        detail = api.detail(err, "ListProjects without credentials")
        check_eq(detail.code, "missing_credentials", "ListProjects without credentials: error code")
        access = base64.b64decode(api.metadata[0][1].split(" ", 1)[1]).decode().split(":", 1)[0]
        wrong = "Basic " + base64.b64encode(f"{access}:not-the-secret".encode()).decode()
        api.fail(
            api.projects.ListProjects,
            request,
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_credentials",
            metadata=(("authorization", wrong),),
        )
        say("auth: no credentials -> UNAUTHENTICATED missing_credentials; wrong secret -> invalid_credentials")
        return
    say("NOTE auth: the API port answered a call WITHOUT credentials (authentication not enforced yet)")


def project_flow(api: Api, root: str):
    pb = api.pb
    path = f"{root}/exp/sub"
    created = api.call(
        api.projects.CreateProject,
        pb.projects.CreateProjectRequest(path=path, description="nested from Python", tags=["py", "grpc", "py"]),
    )
    sub = created.project
    check(created.created, "CreateProject: created must be true for a new path")
    check(re.fullmatch(r"[0-9a-f]{32}", sub.id) is not None, f"project id {sub.id!r} is not 32 hex")
    check_eq(sub.path, path, "CreateProject path")
    check_eq(sub.name, "sub", "CreateProject leaf name")
    check_eq(list(sub.tags), ["grpc", "py"], "project tags (deduplicated, sorted)")
    check_eq(len(created.created_parent_ids), 2, "CreateProject created_parent_ids (root and exp)")
    check(sub.HasField("created"), "project.created is set")
    say(f"CreateProject {path}: id {sub.id}, created parents {list(created.created_parent_ids)}")

    again = api.call(api.projects.CreateProject, pb.projects.CreateProjectRequest(path=path, allow_existing=True))
    check(not again.created, "CreateProject allow_existing on an existing path: created must be false")
    check_eq(again.project.id, sub.id, "CreateProject allow_existing returns the existing project")
    api.fail(
        api.projects.CreateProject,
        pb.projects.CreateProjectRequest(path=path),
        grpc.StatusCode.ALREADY_EXISTS,
        "project_name_taken",
    )

    got = api.call(api.projects.GetProjectByPath, pb.projects.GetProjectByPathRequest(path=path)).project
    check_eq(got.id, sub.id, "GetProjectByPath id")
    check_eq(got.description, "nested from Python", "GetProjectByPath description")
    masked = api.call(
        api.projects.GetProjectByPath,
        pb.projects.GetProjectByPathRequest(path=path, read_mask=pb.mask("id", "path")),
    ).project
    check_eq((masked.id, masked.path, masked.description), (sub.id, path, ""), "GetProjectByPath with read_mask")
    top = api.call(api.projects.GetProjectByPath, pb.projects.GetProjectByPathRequest(path=root)).project
    check_eq(top.id, created.created_parent_ids[0], "the root project is the first created parent")
    check_eq(top.parent_id, "", "the root project has no parent")
    api.fail(
        api.projects.GetProjectByPath,
        pb.projects.GetProjectByPathRequest(path=f"{root}/nope"),
        grpc.StatusCode.NOT_FOUND,
        "project_not_found",
    )

    deep = api.call(api.projects.ListProjects, pb.projects.ListProjectsRequest(parent_id=top.id))
    check_eq([p.path for p in deep.projects], [f"{root}/exp", path], f"ListProjects under {root}, deep")
    check_eq(deep.projects[1].parent_id, deep.projects[0].id, "sub's parent is exp")
    shallow = api.call(api.projects.ListProjects, pb.projects.ListProjectsRequest(parent_id=top.id, shallow=True))
    check_eq([p.path for p in shallow.projects], [f"{root}/exp"], f"ListProjects under {root}, shallow")
    say(f"GetProjectByPath / ListProjects: {root} -> {[p.path for p in deep.projects]}")
    return top, sub


def create_tasks(api: Api, project_id: str) -> dict:
    pb = api.pb
    specs = [
        ("train-resnet-0", pb.tasks.TASK_TYPE_UNSPECIFIED, ["resnet", "baseline", "resnet"], "0.1"),
        ("train-resnet-1", pb.tasks.TASK_TYPE_UNSPECIFIED, ["resnet"], "0.05"),
        ("train-resnet-2", pb.tasks.TASK_TYPE_UNSPECIFIED, ["resnet"], "0.01"),
        ("train-vit-0", pb.tasks.TASK_TYPE_UNSPECIFIED, ["vit"], "0.001"),
        ("eval-resnet", pb.tasks.TASK_TYPE_TESTING, ["resnet"], "0"),
    ]
    tasks = {}
    for name, kind, tags, lr in specs:
        request = pb.tasks.CreateTaskRequest(
            name=name,
            project_id=project_id,
            type=kind,
            comment=f"{name} from the Python client",
            tags=tags,
            script=pb.tasks.Script(
                repository="https://example.invalid/repo.git",
                entry_point="train.py",
                working_dir=".",
                binary="python3",
                requirements=pb.tasks.Requirements(pip="torch==2.4\n"),
            ),
            hyperparams={
                "Args": section(pb, lr=(lr, "float"), batch_size=("64", "int")),
                "General": section(pb, optimizer=("adam", "str")),
            },
            configuration={"General": pb.common.TypedValue(value='{"layers": 50}', type="dictionary")},
        )
        task = api.call(api.tasks.CreateTask, request).task
        check(re.fullmatch(r"[0-9a-f]{32}", task.id) is not None, f"task id {task.id!r} is not 32 hex")
        check_eq(status_name(pb, task.status), "TASK_STATUS_CREATED", f"{name} status")
        expected_type = pb.tasks.TASK_TYPE_TRAINING if kind == pb.tasks.TASK_TYPE_UNSPECIFIED else kind
        check_eq(pb.tasks.TaskType.Name(task.type), pb.tasks.TaskType.Name(expected_type), f"{name} type")
        check_eq(list(task.tags), sorted(set(tags)), f"{name} tags (deduplicated, sorted)")
        check_eq(task.project_id, project_id, f"{name} project_id")
        lr_value = task.hyperparams["Args"].params["lr"]
        check_eq((lr_value.name, lr_value.value, lr_value.type), ("lr", lr, "float"), f"{name} Args/lr")
        tasks[name] = task
    say(f"CreateTask x{len(tasks)} in the sub project: {sorted(tasks)}")

    first = tasks["train-resnet-0"]
    got = api.call(api.tasks.GetTask, pb.tasks.GetTaskRequest(id=first.id)).task
    check_eq(got.hyperparams["General"].params["optimizer"].value, "adam", "GetTask General/optimizer")
    check_eq(got.script.requirements.pip, "torch==2.4\n", "GetTask script.requirements.pip")
    check_eq(got.configuration["General"].value, '{"layers": 50}', "GetTask configuration General")
    masked = api.call(
        api.tasks.GetTask,
        pb.tasks.GetTaskRequest(id=first.id, read_mask=pb.mask("name", "hyperparams")),
    ).task
    check_eq(masked.name, first.name, "GetTask with read_mask: name")
    check_eq((masked.comment, len(masked.tags)), ("", 0), "GetTask with read_mask leaves out comment and tags")
    check_eq(masked.hyperparams["Args"].params["lr"].value, "0.1", "GetTask with read_mask: hyperparams")
    by_name = api.call(
        api.tasks.GetTaskByName, pb.tasks.GetTaskByNameRequest(project_id=project_id, name="train-vit-0")
    ).task
    check_eq(by_name.id, tasks["train-vit-0"].id, "GetTaskByName")
    api.fail(api.tasks.GetTask, pb.tasks.GetTaskRequest(id=uuid.uuid4().hex), grpc.StatusCode.NOT_FOUND, "task_not_found")
    api.fail(
        api.tasks.ListTasks,
        pb.tasks.ListTasksRequest(project_ids=[project_id], name_regex="train-(("),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_regex",
    )
    say("GetTask (full and masked), GetTaskByName, task_not_found, invalid_regex: ok")
    return tasks


def update_and_start(api: Api, tasks: dict) -> None:
    pb = api.pb
    first = tasks["train-resnet-0"]
    updated = api.call(
        api.tasks.UpdateTask,
        pb.tasks.UpdateTaskRequest(
            id=first.id,
            name="ignored: not in the mask",
            comment="tuned learning rate",
            tags=["resnet", "baseline", "tuned"],
            update_mask=pb.mask("comment", "tags"),
        ),
    )
    check_eq(updated.updated, 1, "UpdateTask updated")
    check_eq(updated.task.comment, "tuned learning rate", "UpdateTask comment")
    check_eq(list(updated.task.tags), ["baseline", "resnet", "tuned"], "UpdateTask tags")
    check_eq(updated.task.name, "train-resnet-0", "UpdateTask leaves the name (not in the mask)")
    api.fail(
        api.tasks.UpdateTask,
        pb.tasks.UpdateTaskRequest(id=first.id, name="x", update_mask=pb.mask("name")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_task_name",
    )
    say("UpdateTask comment+tags: ok (and a 1-char name is invalid_task_name)")

    started = api.call(
        api.tasks.StartTask,
        pb.tasks.StartTaskRequest(
            id=first.id,
            options=pb.tasks.StatusChangeOptions(status_reason="started from Python"),
        ),
    )
    check_eq(started.updated, 1, "StartTask updated")
    check_eq(status_name(pb, started.task.status), "TASK_STATUS_IN_PROGRESS", "StartTask status")
    check_eq(status_name(pb, started.previous_status), "TASK_STATUS_CREATED", "StartTask previous_status")
    check(started.task.HasField("started"), "StartTask sets `started`")
    check_eq(started.task.status_reason, "started from Python", "StartTask status_reason")
    tasks["train-resnet-0"] = started.task
    say("StartTask train-resnet-0: created -> in_progress")


def list_flow(api: Api, project_id: str, tasks: dict) -> None:
    pb = api.pb
    request = pb.tasks.ListTasksRequest(
        project_ids=[project_id],
        name_regex="^train-",
        statuses=[pb.tasks.TASK_STATUS_CREATED],
        tags=pb.common.TagFilter(any_of=["resnet"], none_of=["vit"]),
        order_by=[pb.common.OrderBy(field="name")],
        read_mask=pb.mask("id", "name", "status", "tags"),
    )
    listed = api.call(api.tasks.ListTasks, request)
    names = [t.name for t in listed.tasks]
    check_eq(names, ["train-resnet-1", "train-resnet-2"], "ListTasks tag+status+regex filter")
    for t in listed.tasks:
        check_eq(t.id, tasks[t.name].id, f"ListTasks id of {t.name}")
        check_eq(status_name(pb, t.status), "TASK_STATUS_CREATED", f"ListTasks status of {t.name}")
        check_eq(list(t.tags), ["resnet"], f"ListTasks tags of {t.name}")
        check_eq(
            (t.project_id, t.comment, len(t.hyperparams), t.HasField("created"), t.HasField("script")),
            ("", "", 0, False, False),
            f"ListTasks read_mask leaves out the other fields of {t.name}",
        )
    check_eq(listed.page.next_page_token, "", "ListTasks single page: no next token")
    say(f"ListTasks any_of=resnet none_of=vit status=created name=~^train- mask=id,name,status,tags: {names}")

    running = api.call(
        api.tasks.ListTasks,
        pb.tasks.ListTasksRequest(project_ids=[project_id], statuses=[pb.tasks.TASK_STATUS_IN_PROGRESS]),
    )
    check_eq([t.name for t in running.tasks], ["train-resnet-0"], "ListTasks status=in_progress")
    tuned = api.call(
        api.tasks.ListTasks,
        pb.tasks.ListTasksRequest(project_ids=[project_id], tags=pb.common.TagFilter(all_of=["resnet", "tuned"])),
    )
    check_eq([t.name for t in tuned.tasks], ["train-resnet-0"], "ListTasks all_of=[resnet, tuned]")

    # Paging: two at a time, by name, with the total.
    expected = sorted(tasks)
    seen, token, pages = [], "", 0
    while True:
        page = api.call(
            api.tasks.ListTasks,
            pb.tasks.ListTasksRequest(
                project_ids=[project_id],
                order_by=[pb.common.OrderBy(field="name")],
                page=pb.common.PageRequest(page_size=2, page_token=token, include_total=True),
                read_mask=pb.mask("id", "name"),
            ),
        )
        pages += 1
        check(pages <= len(expected), f"ListTasks paging does not end after {pages} pages (seen {seen})")
        check(len(page.tasks) <= 2, f"ListTasks page {pages} has {len(page.tasks)} tasks, page_size is 2")
        check(page.page.HasField("total_size"), f"ListTasks page {pages}: total_size asked for but not set")
        check_eq(page.page.total_size, len(expected), f"ListTasks page {pages} total_size")
        seen += [t.name for t in page.tasks]
        token = page.page.next_page_token
        if not token:
            break
    check_eq(seen, expected, "ListTasks pages, concatenated")
    check_eq(pages, 3, "ListTasks pages of 2 for 5 tasks")
    api.fail(
        api.tasks.ListTasks,
        pb.tasks.ListTasksRequest(project_ids=[project_id], page=pb.common.PageRequest(page_token="not-a-token")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_page_token",
    )
    say(f"ListTasks paging (2 per page, total {len(expected)}): {pages} pages {seen}")


def subprojects_flow(api: Api, top, sub) -> None:
    """`include_subprojects` is resolved by the gateway; the tasks service
    itself must refuse it rather than answer a silently smaller list."""
    pb = api.pb
    request = pb.tasks.ListTasksRequest(project_ids=[top.id], include_subprojects=True, read_mask=pb.mask("id"))
    try:
        reply, _ = api.tasks.ListTasks.with_call(request, metadata=api.metadata, timeout=TIMEOUT_SECS)
    except grpc.RpcError as err:
        check(
            err.code() == grpc.StatusCode.INVALID_ARGUMENT,
            f"ListTasks include_subprojects: expected OK or INVALID_ARGUMENT, got {describe(err)}",
        )
        check_eq(api.detail(err, "ListTasks include_subprojects").code, "invalid_argument", "error code")
        say("NOTE ListTasks include_subprojects: INVALID_ARGUMENT (answered by the tasks service, not the gateway)")
        return
    check_eq(len(reply.tasks), 5, f"ListTasks include_subprojects under {top.path}")
    say(f"ListTasks include_subprojects under {top.path}: {len(reply.tasks)} tasks")


def refused_transitions(api: Api, tasks: dict) -> None:
    pb = api.pb
    draft = tasks["train-resnet-1"]
    detail = api.fail(
        api.tasks.PublishTask,
        pb.tasks.PublishTaskRequest(id=draft.id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "invalid_task_status",
    )
    fields = dict(detail.fields)
    if "current_status" in fields:
        check_eq(fields["current_status"], "created", "invalid_task_status field current_status")
    say(f"PublishTask on a draft: FAILED_PRECONDITION, ErrorDetail code={detail.code!r} "
        f"message={detail.message!r} fields={fields}")
    after = api.call(api.tasks.GetTask, pb.tasks.GetTaskRequest(id=draft.id, read_mask=pb.mask("status"))).task
    check_eq(status_name(pb, after.status), "TASK_STATUS_CREATED", "a refused PublishTask changes nothing")

    detail = api.fail(
        api.tasks.StartTask,
        pb.tasks.StartTaskRequest(
            id=draft.id, options=pb.tasks.StatusChangeOptions(expected_status=pb.tasks.TASK_STATUS_QUEUED)
        ),
        grpc.StatusCode.ABORTED,
        "task_status_changed",
    )
    say(f"StartTask expecting queued on a draft: ABORTED {detail.code!r}")


def clone_flow(api: Api, tasks: dict):
    pb = api.pb
    source = tasks["train-resnet-0"]
    clone = api.call(api.tasks.CloneTask, pb.tasks.CloneTaskRequest(source_id=source.id)).task
    check(clone.id != source.id, "a clone has its own id")
    check_eq(clone.name, f"Clone Of {source.name}", "clone default name")
    check_eq(clone.parent_id, source.id, "clone parent_id")
    check_eq(clone.project_id, source.project_id, "clone project_id")
    check_eq(status_name(pb, clone.status), "TASK_STATUS_CREATED", "clone status")
    check(not clone.HasField("started"), "a clone never ran")
    check_eq(list(clone.tags), list(source.tags), "clone tags")
    check_eq(clone.hyperparams["Args"].params["lr"].value, "0.1", "clone hyperparams")

    sweep = api.call(
        api.tasks.CloneTask,
        pb.tasks.CloneTaskRequest(
            source_id=source.id,
            name="resnet-sweep-1",
            tags=pb.tasks.TagList(tags=["sweep"]),
            hyperparams=pb.tasks.HyperParams(sections={"Args": section(pb, lr=("0.2", "float"))}),
        ),
    ).task
    check_eq(sweep.name, "resnet-sweep-1", "clone name override")
    check_eq(list(sweep.tags), ["sweep"], "clone tags override")
    check_eq(sorted(sweep.hyperparams), ["Args"], "clone hyperparams override replaces every section")
    check_eq(
        (sweep.hyperparams["Args"].params["lr"].value, "batch_size" in sweep.hyperparams["Args"].params),
        ("0.2", False),
        "clone hyperparams override",
    )
    say(f"CloneTask: {clone.name!r} (parent {clone.parent_id[:8]}...), {sweep.name!r} with overrides")
    return [clone, sweep]


def delete_flow(api: Api, top, sub, tasks: dict, clones: list) -> None:
    pb = api.pb
    clone = clones[0]
    deleted = api.call(api.tasks.DeleteTask, pb.tasks.DeleteTaskRequest(id=clone.id))
    check_eq(deleted.deleted, 1, "DeleteTask deleted")
    check_eq(status_name(pb, deleted.previous_status), "TASK_STATUS_CREATED", "DeleteTask previous_status")
    api.fail(api.tasks.GetTask, pb.tasks.GetTaskRequest(id=clone.id), grpc.StatusCode.NOT_FOUND, "task_not_found")
    api.fail(api.tasks.DeleteTask, pb.tasks.DeleteTaskRequest(id=clone.id), grpc.StatusCode.NOT_FOUND, "task_not_found")

    running = tasks["train-resnet-0"]
    api.fail(
        api.tasks.DeleteTask,
        pb.tasks.DeleteTaskRequest(id=running.id),
        grpc.StatusCode.FAILED_PRECONDITION,
        "invalid_task_status",
    )
    forced = api.call(api.tasks.DeleteTask, pb.tasks.DeleteTaskRequest(id=running.id, force=True))
    check_eq(status_name(pb, forced.previous_status), "TASK_STATUS_IN_PROGRESS", "forced DeleteTask previous_status")
    say("DeleteTask: a draft clone; a running task only with force (invalid_task_status without)")

    # Empty the projects, then delete the whole tree from its root.
    remaining = [t for name, t in tasks.items() if name != "train-resnet-0"] + clones[1:]
    for task in remaining:
        check_eq(api.call(api.tasks.DeleteTask, pb.tasks.DeleteTaskRequest(id=task.id)).deleted, 1, "DeleteTask")
    left = api.call(api.tasks.ListTasks, pb.tasks.ListTasksRequest(project_ids=[sub.id]))
    check_eq([t.name for t in left.tasks], [], "tasks left in the sub project")
    gone = api.call(api.projects.DeleteProject, pb.projects.DeleteProjectRequest(id=top.id))
    check_eq(gone.deleted, 3, "DeleteProject deleted (root, exp, sub)")
    check_eq(gone.deleted_project_ids[0], top.id, "DeleteProject lists the requested project first")
    check(sub.id in gone.deleted_project_ids, "DeleteProject deleted the sub project")
    api.fail(
        api.projects.GetProject,
        pb.projects.GetProjectRequest(id=sub.id),
        grpc.StatusCode.NOT_FOUND,
        "project_not_found",
    )
    say(f"DeleteTask x{len(remaining)}, DeleteProject {top.path}: {gone.deleted} projects deleted")


def run(address: str, authorization: str, root: str, proto_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tasklab-pystubs-") as out:
        generate_stubs(proto_dir, Path(out))
        stubs = Stubs(Path(out))
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=TIMEOUT_SECS)
            except grpc.FutureTimeoutError:
                raise Failure(f"cannot connect to {address} within {TIMEOUT_SECS} s") from None
            api = Api(stubs, channel, authorization)
            check_health(api)
            check_authentication(api)
            top, sub = project_flow(api, root)
            tasks = create_tasks(api, sub.id)
            update_and_start(api, tasks)
            list_flow(api, sub.id, tasks)
            subprojects_flow(api, top, sub)
            refused_transitions(api, tasks)
            clones = clone_flow(api, tasks)
            delete_flow(api, top, sub, tasks, clones)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="the API port, HOST:PORT")
    parser.add_argument("--access-key", default=os.environ.get("TASKLAB_ACCESS_KEY"))
    parser.add_argument("--secret-key", default=os.environ.get("TASKLAB_SECRET_KEY"))
    parser.add_argument("--root", default="team", help="top-level project to create (default: team)")
    parser.add_argument("--proto-dir", type=Path, default=REPO / "proto")
    args = parser.parse_args()
    if not args.access_key or not args.secret_key:
        parser.error("credentials required: --access-key/--secret-key or TASKLAB_ACCESS_KEY/TASKLAB_SECRET_KEY")
    basic = base64.b64encode(f"{args.access_key}:{args.secret_key}".encode()).decode()
    started = time.monotonic()
    try:
        run(args.address, f"Basic {basic}", args.root, args.proto_dir)
    except Failure as failure:
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
        return 1
    say(f"OK: the Python gRPC client flow passed in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
