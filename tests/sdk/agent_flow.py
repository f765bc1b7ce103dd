"""The agent flow: a template run locally, cloned with another parameter,
enqueued, then executed by a real `clearml-agent daemon` (started here as a
subprocess). Then a second clone that would run for minutes is enqueued,
and once the agent runs it (and reports it as its task), another client asks
it to stop, as the web UI's abort does: the agent must stop it. Prints
`RESULT {...}` with what the executed clones reported.

Arguments: <path of agent_train.py> <seconds to wait for each agent run>
"""
import json
import os
import subprocess
import sys
import time

from clearml import Task
from clearml.backend_api.session.client import APIClient

train, wait = sys.argv[1], float(sys.argv[2])
queue = "default"
worker = "test-agent:0"
APIClient().queues.create(name=queue, system_tags=["default"])

# The template: run the training script once, locally.
subprocess.run([sys.executable, train], check=True)
template = Task.get_task(project_name="agent", task_name="agent-src")

clone = Task.clone(source_task=template, name="agent-run")
clone.set_parameters({"General/lr": 0.5})
Task.enqueue(clone, queue_name=queue)

env = dict(os.environ)
env["CLEARML_AGENT_SKIP_PIP_VENV_INSTALL"] = sys.executable
env["CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL"] = "1"
env["CLEARML_WORKER_ID"] = worker
agent = subprocess.Popen(
    [sys.executable, "-m", "clearml_agent", "daemon", "--queue", queue, "--foreground"],
    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
)


def wait_for(task_id, done, limit):
    deadline = time.time() + limit
    task = Task.get_task(task_id=task_id)
    while time.time() < deadline:
        task = Task.get_task(task_id=task_id)
        if done(task):
            break
        time.sleep(1)
    return task


ended = ("completed", "failed", "stopped")
out = {}
try:
    ran = wait_for(clone.id, lambda t: t.get_status() in ended, wait)
    out["status"] = ran.get_status()
    if out["status"] == "completed":
        # The abort: a long run, stopped from here once the agent runs it.
        long_run = Task.clone(source_task=template, name="agent-abort")
        long_run.set_parameters({"General/steps": 600, "General/sleep": 0.5})
        Task.enqueue(long_run, queue_name=queue)
        running = wait_for(
            long_run.id,
            lambda t: t.get_status() in ended
            or (t.get_status() == "in_progress" and t.data.last_worker == worker
                and "STEP 2" in "\n".join(t.get_reported_console_output(number_of_reports=50))),
            wait)
        out["abort_status_before"] = running.get_status()
        out["abort_last_worker"] = running.data.last_worker
        asked = time.time()
        Task.get_task(task_id=long_run.id).mark_stop_request()
        requested = Task.get_task(task_id=long_run.id)
        out["abort_status_after_request"] = requested.get_status()
        out["abort_message_after_request"] = requested.data.status_message
        stopped = wait_for(long_run.id, lambda t: t.get_status() in ended, 60)
        out["abort_status"] = stopped.get_status()
        out["abort_seconds"] = round(time.time() - asked, 1)
        console = "\n".join(stopped.get_reported_console_output(number_of_reports=100))
        out["abort_trained"] = "TRAINED" in console
finally:
    agent.terminate()
    try:
        output, _ = agent.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
        output, _ = agent.communicate()

ran = Task.get_task(task_id=clone.id)
console = ran.get_reported_console_output(number_of_reports=50)
out.update({
    "scalars": ran.get_last_scalar_metrics(),
    "params": ran.get_parameters(),
    "console_has_trained": any("TRAINED lr=0.5" in chunk for chunk in console),
    "last_worker": ran.data.last_worker,
})
if out.get("status") != "completed" or out.get("abort_status") != "stopped":
    out["agent_output_tail"] = output[-3000:]
print("RESULT " + json.dumps(out, sort_keys=True, default=str))
